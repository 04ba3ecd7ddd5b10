"""Reconstruction objective for the autoencoders: MSE (+ SSIM), validated by PSNR and SSIM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from btxrd.engine.training import InputPipeline, TrainSettings, autocast
from btxrd.metrics.reconstruction import psnr, ssim


def use_raw_inputs(settings: TrainSettings) -> TrainSettings:
    """Autoencoders see the images in [0, 1] and must give them back: no normalisation, no jitter."""
    settings.mean, settings.std, settings.brightness, settings.contrast = 0.0, 1.0, 0.0, 0.0
    return settings


class ReconstructionObjective:
    """Loss: MSE + ssim_weight x (1 - SSIM); inputs are the images in [0, 1] (no normalisation)."""

    def __init__(self, settings: TrainSettings, ssim_weight: float = 0.0) -> None:
        self.settings = settings
        self.ssim_weight = ssim_weight

    def setup(self, model: nn.Module, device: torch.device, train_labels: np.ndarray) -> None:
        self.device = device

    def loss(self, model, x, y, masks, has_mask) -> tuple[torch.Tensor, dict[str, tuple[float, int]]]:
        x_hat, _ = model(x)
        x_hat = x_hat.float()
        mse = F.mse_loss(x_hat, x.float())
        if self.ssim_weight <= 0:
            return mse, {}
        structural = 1 - ssim(x_hat, x).mean()
        n = len(x)
        return mse + self.ssim_weight * structural, {"train_mse": (mse.item() * n, n)}

    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        scores = reconstruct(model, loader, device, self.settings)
        return {"val_loss": scores["mse"], "val_psnr": scores["psnr"], "val_ssim": scores["ssim"]}


@torch.no_grad()
def reconstruct(
    model: nn.Module, loader: DataLoader, device: torch.device, settings: TrainSettings, keep: int = 0
) -> dict:
    """Mean MSE, PSNR (dB) and SSIM over ``loader``, and the same per label under ``"by_label"``;
    with ``keep`` > 0 also the first images as numpy arrays (originals, reconstructions) for pictures."""
    was_training = model.training
    model.eval()
    inputs = InputPipeline(device, settings)
    scores = []  # per image: label, MSE, PSNR, SSIM
    originals, outputs = [], []
    for images, labels, *_ in loader:
        x = inputs(images)
        with autocast(device, settings.amp):
            x_hat, _ = model(x)
        x_hat = x_hat.float()
        mse = F.mse_loss(x_hat, x, reduction="none").flatten(1).mean(1)
        scores.append(torch.stack([torch.as_tensor(labels, dtype=torch.float64), mse.double().cpu(),
                                   psnr(x_hat, x).double().cpu(), ssim(x_hat, x).double().cpu()], 1))  # fmt: skip
        if len(originals) * loader.batch_size < keep:
            originals.append(x.cpu()[:, 0])
            outputs.append(x_hat.cpu()[:, 0])
    model.train(was_training)
    table = torch.cat(scores)

    def means(rows: torch.Tensor) -> dict[str, float]:
        return {"mse": rows[:, 1].mean().item(), "psnr": rows[:, 2].mean().item(), "ssim": rows[:, 3].mean().item()}

    out: dict = means(table)
    out["by_label"] = {int(label): means(table[table[:, 0] == label]) for label in table[:, 0].unique()}
    if keep:
        out["originals"] = torch.cat(originals)[:keep].numpy()
        out["reconstructions"] = torch.cat(outputs)[:keep].numpy()
    return out


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
        axes[row, 0].text(-0.08, 0.5, label, rotation=90, transform=axes[row, 0].transAxes, ha="right", va="center",
                          fontsize=8)  # fmt: skip
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
