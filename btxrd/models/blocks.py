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

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch (what the block adds to its shortcut)."""
        return self.conv2(self.relu(self.bn2(self.conv1(self.relu(self.bn1(x))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.shortcut(x)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., 2018): channel, then spatial attention.

    Channel: a shared MLP over the average- and max-pooled descriptors, summed, sigmoid.
    Spatial: a kernel_size x kernel_size conv over the channel-wise mean and max, sigmoid.
    """

    def __init__(self, channels: int, reduction: int, kernel_size: int, gate_bias: float | None = None) -> None:
        """``gate_bias``: None, the reference design (no gate biases; gates start near 0.5); a number
        adds a learnable bias to both gates' logits, initialised to it: 3 starts every gate at
        sigmoid(3) = 0.95, open, so the module starts close to the identity."""
        super().__init__()
        # At least 4 hidden units (the default models' narrowest, 64 / 16): a 1-unit bottleneck in
        # narrow models is one dead ReLU away from freezing the module's channel attention.
        hidden = max(4, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=False),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.gate_bias = gate_bias
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=gate_bias is not None)
        self.channel_bias = None if gate_bias is None else nn.Parameter(torch.full((1, channels, 1, 1), gate_bias))
        # The gates pass through these (no parameters): a forward hook reads them (gate_statistics).
        self.channel_gates, self.spatial_gates = nn.Identity(), nn.Identity()

    def reset_parameters(self) -> None:
        """PyTorch's fan-in default for the gate convs. The He fan-out init of the networks around
        them gives the squeeze conv (one or a few outputs) weights of std ~1.4: most channel gates
        then start pinned at 0 or 1, switching whole channels off."""
        for conv in (*self.mlp[::2], self.spatial):
            conv.reset_parameters()
        if self.gate_bias is not None:
            nn.init.constant_(self.spatial.bias, self.gate_bias)
            nn.init.constant_(self.channel_bias, self.gate_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = torch.mean(x, dim=(2, 3), keepdim=True)
        mx = torch.amax(x, dim=(2, 3), keepdim=True)
        logits = self.mlp(avg) + self.mlp(mx)
        if self.channel_bias is not None:
            logits = logits + self.channel_bias
        x = x * self.channel_gates(torch.sigmoid(logits))
        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.spatial_gates(torch.sigmoid(self.spatial(descriptor)))


PLACEMENTS = ("after", "residual")


class ResidualBlockWithCBAM(nn.Module):
    """A pre-activation residual block with CBAM, in one of two places:

    - ``after``: CBAM on the block's output, identity included (``ae_attention``'s default):
      ``cbam(branch(x) + shortcut(x))``; 16 blocks multiply the whole signal by 16 gates in sequence;
    - ``residual``: CBAM on the residual branch before the addition, as the CBAM paper's reference
      code (``out = self.cbam(out); out += residual``) and timm's ResNet do:
      ``cbam(branch(x)) + shortcut(x)``; the shortcut passes untouched.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        *,
        reduction: int,
        kernel_size: int,
        placement: str,
        gate_bias: float | None = None,
    ) -> None:
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"CBAM placement {placement!r}: choose one of {', '.join(PLACEMENTS)}")
        self.placement = placement
        self.block = PreActResidualBlock(in_channels, out_channels, stride)
        self.cbam = CBAM(out_channels, reduction, kernel_size, gate_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.placement == "after":
            return self.cbam(self.block(x))
        return self.cbam(self.block.branch(x)) + self.block.shortcut(x)
