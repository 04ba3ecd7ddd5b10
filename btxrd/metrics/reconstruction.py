"""Reconstruction quality: PSNR and SSIM on [0, 1] images, batched torch tensors.

SSIM is Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
the settings of scikit-image's ``structural_similarity(gaussian_weights=True)``. It is written
here because training needs it differentiable and batched on the device (as a loss term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image mean SSIM (B,) of single-channel images in [0, 1] (valid region, no padding)."""
    x, y = x.float(), y.float()
    w = _gaussian_window(window, sigma, x.device, x.dtype).expand(x.shape[1], 1, window, window)
    groups = x.shape[1]
    mu_x, mu_y = F.conv2d(x, w, groups=groups), F.conv2d(y, w, groups=groups)
    sxx = F.conv2d(x * x, w, groups=groups) - mu_x**2
    syy = F.conv2d(y * y, w, groups=groups) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=groups) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ratio = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ratio.flatten(1).mean(dim=1)


def psnr(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Per-image PSNR in dB (B,) for images in [0, 1]."""
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / (mse + eps))
