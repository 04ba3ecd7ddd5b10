"""Building blocks of the autoencoders: pre-activation residual block and CBAM."""

from __future__ import annotations

import torch
from torch import nn


class PreActResidualBlock(nn.Module):
    """BN-ReLU-Conv3x3 twice (He et al., 2016, identity mappings); 1x1 projection when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + self.shortcut(x)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., 2018): channel, then spatial attention.

    Channel: a shared MLP over the average- and max-pooled descriptors, summed, sigmoid.
    Spatial: a kernel_size x kernel_size conv over the channel-wise mean and max, sigmoid.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        # At least 4 hidden units (the default models' narrowest, 64 / 16): a 1-unit bottleneck in
        # narrow models is one dead ReLU away from freezing the module's channel attention.
        hidden = max(4, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=False),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def reset_parameters(self) -> None:
        """PyTorch's fan-in default for the gate convs. The He fan-out init of the networks around
        them gives the squeeze conv (one or a few outputs) weights of std ~1.4: most channel gates
        then start pinned at 0 or 1, switching whole channels off."""
        for conv in (*self.mlp[::2], self.spatial):
            conv.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = torch.mean(x, dim=(2, 3), keepdim=True)
        mx = torch.amax(x, dim=(2, 3), keepdim=True)
        x = x * torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(descriptor))


class ResidualBlockWithCBAM(nn.Module):
    """A pre-activation residual block followed by CBAM (after the block, not inside it)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, reduction: int = 16) -> None:
        super().__init__()
        self.block = PreActResidualBlock(in_channels, out_channels, stride)
        self.cbam = CBAM(out_channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbam(self.block(x))
