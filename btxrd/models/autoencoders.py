"""Residual autoencoder (``ae_residual``) and the same with CBAM in every block (``ae_attention``).

256 x 256 x 1 -> latent 16 x 16 x 16 (16x compression) -> 256 x 256 x 1 in [0, 1].
Encoder: stem Conv7x7/1-BN-ReLU, four stages of two blocks (the first of each stride 2):
base -> 2base -> 4base -> 8base, then BN-ReLU and a 1x1 conv to the latent channels. Decoder
mirrors it: each stage starts with bilinear x2 upsampling + 1x1 conv, then two blocks; BN-ReLU,
a final Conv7x7 to one channel and a sigmoid. ``ae_attention`` puts CBAM in every block: 8 + 8 = 16 modules,
after the block (``model.cbam_placement=after``) or on its residual branch (``residual``, as the CBAM
paper's own ResNets; ``ae_attention_residual``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from btxrd.errors import ConfigError
from btxrd.models.blocks import CBAM, PreActResidualBlock, ResidualBlockWithCBAM
from btxrd.models.registry import register_model
from btxrd.settings import AttentionAutoencoderConfig, AutoencoderConfig

Block = Callable[[int, int, int], nn.Module]  # (in channels, out channels, stride) -> block


def _stage(block: Block, in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(block(in_channels, out_channels, stride), block(out_channels, out_channels, 1))


class ResidualAutoencoder(nn.Module):
    """Variant B (sizes from the model config: conf/model/ae_residual.yaml)."""

    def __init__(
        self,
        *,
        in_channels: int,
        base_channels: int,
        latent_channels: int,
        image_size: int,
        block: Block = PreActResidualBlock,
    ) -> None:
        super().__init__()
        widths = [base_channels * m for m in (1, 2, 4, 8)]
        self.in_channels, self.latent_channels, self.image_size = in_channels, latent_channels, image_size
        stages: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, base_channels, 7, padding=3, bias=False),
                nn.BatchNorm2d(base_channels),
                nn.ReLU(inplace=False),
            )
        ]
        previous = base_channels
        for width in widths:
            stages.append(_stage(block, previous, width, stride=2))
            previous = width
        # Pre-activation blocks leave their sum un-normalised (its variance grows block by block):
        # BN-ReLU before each projection, as pre-activation ResNets end with, keeps the latent and
        # the output in range (without it the sigmoid starts 99% saturated and ``ae_residual`` barely learns).
        stages += [nn.BatchNorm2d(previous), nn.ReLU(inplace=False), nn.Conv2d(previous, latent_channels, 1)]
        self.encoder = nn.Sequential(*stages)
        decoder: list[nn.Module] = []
        previous = latent_channels
        for width in reversed(widths):
            decoder.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    nn.Conv2d(previous, width, 1),
                    block(width, width, 1),
                    block(width, width, 1),
                )
            )
            previous = width
        decoder += [
            nn.BatchNorm2d(previous),
            nn.ReLU(inplace=False),
            nn.Conv2d(previous, in_channels, 7, padding=3),
            nn.Sigmoid(),
        ]
        self.decoder = nn.Sequential(*decoder)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # The output conv feeds a sigmoid, not a ReLU: unit-gain fan-in init keeps it unsaturated.
        nn.init.kaiming_normal_(self.decoder[-2].weight, mode="fan_in", nonlinearity="linear")
        for module in self.modules():  # attention gates likewise start away from 0 and 1
            if isinstance(module, CBAM):
                module.reset_parameters()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z

    def get_latent_size(self) -> tuple[int, int, int]:
        """(channels, height, width) of the latent for this model's image size."""
        side = self.image_size // 16
        return (self.latent_channels, side, side)

    def get_compression_ratio(self) -> float:
        c, h, w = self.get_latent_size()
        return self.in_channels * self.image_size**2 / (c * h * w)

    def count_parameters(self) -> dict[str, int]:
        encoder = sum(p.numel() for p in self.encoder.parameters())
        decoder = sum(p.numel() for p in self.decoder.parameters())
        return {"total": encoder + decoder, "encoder": encoder, "decoder": decoder}


class AttentionAutoencoder(ResidualAutoencoder):
    """Variant C: CBAM in every residual block (16 modules), after the block or on its residual branch."""

    def __init__(
        self,
        *,
        in_channels: int,
        base_channels: int,
        latent_channels: int,
        image_size: int,
        placement: str,
        reduction: int,
        kernel_size: int,
        gate_bias: float | None = None,
    ) -> None:
        self.placement = placement
        block = partial(
            ResidualBlockWithCBAM,
            reduction=reduction,
            kernel_size=kernel_size,
            placement=placement,
            gate_bias=gate_bias,
        )
        super().__init__(
            in_channels=in_channels,
            base_channels=base_channels,
            latent_channels=latent_channels,
            image_size=image_size,
            block=block,
        )


def _no_pretrained(pretrained: bool) -> None:
    if pretrained:
        raise ConfigError(
            "model.pretrained=true: there are no ImageNet weights for the autoencoders; "
            "they train from scratch (model.pretrained=false)"
        )


@register_model("ae_residual", task="reconstruct", config=AutoencoderConfig)
def ae_residual(
    *, image_size: int, in_chans: int, base_channels: int, latent_channels: int, pretrained: bool
) -> nn.Module:
    _no_pretrained(pretrained)
    return ResidualAutoencoder(
        in_channels=in_chans, base_channels=base_channels, latent_channels=latent_channels, image_size=image_size
    )


@register_model("ae_attention", task="reconstruct", config=AttentionAutoencoderConfig)
def ae_attention(
    *,
    image_size: int,
    in_chans: int,
    base_channels: int,
    latent_channels: int,
    pretrained: bool,
    cbam_placement: str,
    cbam_reduction: int,
    cbam_kernel_size: int,
    cbam_gate_bias: float | None,
) -> nn.Module:
    _no_pretrained(pretrained)
    return AttentionAutoencoder(
        in_channels=in_chans,
        base_channels=base_channels,
        latent_channels=latent_channels,
        image_size=image_size,
        placement=cbam_placement,
        reduction=cbam_reduction,
        kernel_size=cbam_kernel_size,
        gate_bias=cbam_gate_bias,
    )
