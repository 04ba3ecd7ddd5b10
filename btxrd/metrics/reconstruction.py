"""Reconstruction quality: PSNR and SSIM on [0, 1] images, batched torch tensors; a picture of reconstructions.

SSIM is Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
the settings of scikit-image's ``structural_similarity(gaussian_weights=True)``. It is written
here because training needs it differentiable and batched on the device (as a loss term).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def save_reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray, path: str | Path, title: str) -> Path:
    """Rows: originals, reconstructions, absolute error maps (colour map, own scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(originals)
    fig, axes = plt.subplots(3, n, figsize=(1.9 * n, 6.2), dpi=110, squeeze=False)
    error = np.abs(originals - reconstructions)
    for i in range(n):
        for row, (image, cmap, vmax) in enumerate(
            ((originals[i], "gray", 1), (reconstructions[i], "gray", 1), (error[i], "magma", max(error.max(), 1e-6)))
        ):
            axes[row, i].imshow(image, cmap=cmap, vmin=0, vmax=vmax)
            axes[row, i].axis("off")
        axes[1, i].set_title(f"PSNR {float(10 * np.log10(1 / max(np.mean(error[i] ** 2), 1e-10))):.1f} dB", fontsize=7)
    for row, label in enumerate(("original", "reconstruction", "|error|")):
        axes[row, 0].text(
            -0.08, 0.5, label, rotation=90, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=8
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
