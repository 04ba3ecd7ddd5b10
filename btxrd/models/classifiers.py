"""Registered classifiers: timm EfficientNet-B0/B3 and ResNet-50 with CBAM in every bottleneck."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
from torch import nn

from btxrd.errors import ConfigError
from btxrd.models.registry import ModelBuilder, register_model

log = logging.getLogger(__name__)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers; without this, timm retries for ~45 s before failing."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _pretrained_args(pretrained: bool, weights: str | None, timm_name: str) -> dict[str, Any]:
    """timm arguments for ImageNet weights: from model.weights (a local file) or the hub."""
    if weights:
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.weights={weights}: file not found")
        return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
    if not pretrained:
        return {"pretrained": False}
    if not _hub_reachable():
        raise ConfigError(
            f"model.pretrained=true: cannot download ImageNet weights for {timm_name} (Hugging Face hub "
            "unreachable); use model.pretrained=false, or model.weights=PATH to a local weights file"
        )
    return {"pretrained": True}


def _create(timm_name: str, in_chans: int, num_classes: int, dropout: float, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(timm_name, num_classes=num_classes, in_chans=in_chans, drop_rate=dropout, **kwargs)
    except (RuntimeError, OSError) as exc:
        if kwargs.get("pretrained"):
            raise ConfigError(f"model {timm_name}: loading pretrained weights failed: {exc}") from None
        raise


def _zero_head(model: nn.Module) -> nn.Module:
    """Start the new 3-class head at zero: timm's EfficientNet init gives logits with std ~4 on
    these inputs (initial loss ~6 instead of ln 3), which costs a from-scratch run several epochs."""
    head = model.get_classifier()
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return model


def _efficientnet(timm_name: str) -> ModelBuilder:
    def build(
        *,
        in_chans: int,
        num_classes: int,
        dropout: float,
        pretrained: bool,
        weights: str | None,
        kwargs: dict[str, Any],
    ) -> nn.Module:
        extra = {**kwargs, **_pretrained_args(pretrained, weights, timm_name)}
        model = _create(timm_name, in_chans, num_classes, dropout, extra)
        model.cam_target_name = "bn2"  # last BN (+ activation) before global pooling
        return _zero_head(model)

    return build


register_model("b0", task="classify")(_efficientnet("efficientnet_b0"))
register_model("b3", task="classify")(_efficientnet("efficientnet_b3"))


@register_model("resnet50_cbam", task="classify")
def resnet50_cbam(
    *, in_chans: int, num_classes: int, dropout: float, pretrained: bool, weights: str | None, kwargs: dict[str, Any]
) -> nn.Module:
    """ResNet-50 with CBAM in all 16 bottlenecks; ImageNet weights go into everything else."""
    model = _create("resnet50", in_chans, num_classes, dropout, {**kwargs, "block_args": {"attn_layer": "cbam"}})
    source_weights = _pretrained_args(pretrained, weights, "resnet50")
    if source_weights["pretrained"]:
        source = _create("resnet50", in_chans, num_classes, dropout, {**kwargs, **source_weights})
        result = model.load_state_dict(source.state_dict(), strict=False)
        cbam_missing = [k for k in result.missing_keys if ".se." in k]
        other = [k for k in result.missing_keys if ".se." not in k]
        if other or result.unexpected_keys:
            raise ConfigError(
                f"model resnet50_cbam: weights do not fit ResNet-50 (missing {other[:3]}, "
                f"unexpected {result.unexpected_keys[:3]})"
            )
        log.warning(
            "resnet50_cbam: loaded ResNet-50 ImageNet weights into all layers except the 16 CBAM modules "
            "(%d CBAM tensors keep their random initialisation)",
            len(cbam_missing),
        )
    model.cam_target_name = f"layer4.{len(model.layer4) - 1}"
    return _zero_head(model)
