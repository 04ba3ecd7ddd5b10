"""From uint8 batches to the model's input on the device, and mixed precision."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class InputSpec:
    """How a task feeds its images to the model. The defaults are the identity: images in [0, 1]."""

    mean: float = 0.0
    std: float = 1.0
    brightness: float = 0.0  # training-time jitter: +- this much added brightness
    contrast: float = 0.0  # training-time jitter: contrast x (1 +- this much)


class InputPipeline:
    """uint8 batches -> normalised float on the device (+ intensity jitter for training), in the
    memory format the model runs in (channels_last on CUDA when asked)."""

    def __init__(self, device: torch.device, spec: InputSpec, channels_last: bool = False) -> None:
        self.device = device
        self.spec = spec
        self.memory_format = torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``generator``: the training jitter's draws, made where it lives (on the input's device: no copy
        from the host, so no synchronisation per step on a GPU)."""
        s = self.spec
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        if generator is not None and (s.brightness > 0 or s.contrast > 0):
            n, on = x.shape[0], generator.device
            contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator, device=on) * 2 - 1) * s.contrast
            brightness = (torch.rand(n, 1, 1, 1, generator=generator, device=on) * 2 - 1) * s.brightness
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * contrast.to(x.device) + mean + brightness.to(x.device)).clamp_(0, 1)  # no-ops there
        x = (x - s.mean) / s.std
        return x.contiguous(memory_format=self.memory_format)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The half precision of mixed-precision training on ``device``: bfloat16 where the GPU computes it
    natively (Ampere and later; no loss scaling needed), else float16 with a loss scaler (a V100 or T4 only
    emulates bfloat16, slowly, and ``is_bf16_supported()`` counts emulation unless told not to); None on the
    CPU, where training runs in float32."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """Mixed precision in ``amp_dtype`` on a GPU when ``enabled``; off on the CPU."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def place_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """The model on ``device``, in the memory format ``InputPipeline`` feeds it (channels_last on CUDA when asked)."""
    model.to(device)
    if channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model
