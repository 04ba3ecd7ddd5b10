"""Reconstruction by the autoencoders: MSE (+ SSIM) loss, scored by PSNR and SSIM, overall and per class.

Autoencoders see the images in [0, 1] and must give them back: no normalisation, no jitter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from btxrd.data.loaders import Batch
from btxrd.data.schema import CLASS_NAMES
from btxrd.engine import InputPipeline, InputSpec, autocast
from btxrd.metrics.reconstruction import psnr, save_reconstruction_grid, ssim
from btxrd.metrics.uncertainty import mean_replicates
from btxrd.models.hooks import gate_statistics
from btxrd.models.memory import autoencoder_params
from btxrd.setting_fields import setting
from btxrd.settings import EvalConfig
from btxrd.tasks.base import Calibration, PartToScore, Scores, Task, register_task

RAW = InputSpec()  # the images as they are, in [0, 1]
SCORES = ("mse", "psnr", "ssim")


@dataclass
class ReconstructSettings:
    normal_only: bool = setting()  # train and validate on normal images only (the test part keeps all)
    ssim_weight: float = setting(ge=0)  # loss = MSE + ssim_weight x (1 - SSIM)


@torch.no_grad()
def reconstruct(
    model: nn.Module, loader: DataLoader, inputs: InputPipeline, amp: bool, keep: int = 0
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Per image (in loader order): dataset row, label, MSE, PSNR (dB), SSIM; and the first ``keep``
    originals and reconstructions as arrays, for pictures."""
    was_training = model.training
    model.eval()
    rows, originals, outputs = [], [], []
    for batch in loader:
        x = inputs(batch.images)
        with autocast(inputs.device, amp):
            x_hat, _ = model(x)
        x_hat = x_hat.float()
        mse = F.mse_loss(x_hat, x, reduction="none").flatten(1).mean(1)
        rows.append(
            pd.DataFrame(
                {
                    "index": batch.index.numpy(),
                    "label": batch.labels.numpy(),
                    "mse": mse.double().cpu().numpy(),
                    "psnr": psnr(x_hat, x).double().cpu().numpy(),
                    "ssim": ssim(x_hat, x).double().cpu().numpy(),
                }
            )
        )
        if sum(len(o) for o in originals) < keep:
            originals.append(x.cpu()[:, 0].numpy())
            outputs.append(x_hat.cpu()[:, 0].numpy())
    model.train(was_training)
    table = pd.concat(rows, ignore_index=True)
    if not keep:
        return table, np.empty(0), np.empty(0)
    return table, np.concatenate(originals)[:keep], np.concatenate(outputs)[:keep]


class ReconstructionObjective:
    """Loss: MSE + ssim_weight x (1 - SSIM); validated by mean MSE, PSNR and SSIM."""

    inputs = RAW

    def __init__(self, amp: bool, ssim_weight: float) -> None:
        self.amp, self.ssim_weight = amp, ssim_weight

    def setup(self, model: nn.Module, device: torch.device, train_labels: np.ndarray) -> None:
        self.pipeline = InputPipeline(device, RAW)

    def loss(self, model: nn.Module, x: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict]:
        x_hat, _ = model(x)
        x_hat = x_hat.float()
        mse = F.mse_loss(x_hat, x.float())
        if self.ssim_weight <= 0:
            return mse, {}
        n = torch.tensor(float(len(x)), device=x.device)
        return mse + self.ssim_weight * (1 - ssim(x_hat, x).mean()), {"train_mse": (mse * n, n)}

    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """Mean MSE (the loss), PSNR and SSIM; for attention models also how their gates sit
        (``val_channel_gates_closed`` / ``_open`` / ``_mean``, the same for spatial) epoch by epoch."""
        with gate_statistics(model) as gates:
            table, _, _ = reconstruct(model, loader, self.pipeline, self.amp)
        return {
            "val_loss": table["mse"].mean(),
            "val_psnr": table["psnr"].mean(),
            "val_ssim": table["ssim"].mean(),
            **gates.metrics("val_"),
        }


@register_task
class ReconstructTask(Task):
    name = "reconstruct"
    settings_type = ReconstructSettings
    monitors = ("val_psnr", "val_ssim")
    headline = ("test_psnr", "test_ssim")
    # per class, and where the CBAM gates sit at the last validation (attention models only)
    report_columns = {
        "test_psnr": "PSNR (dB)",
        "test_ssim": "SSIM",
        "test_psnr_normal": "PSNR normal",
        "test_psnr_benign": "PSNR benign",
        "test_psnr_malignant": "PSNR malignant",
        "val_channel_gates_mean": "channel gates",
        "val_spatial_gates_mean": "spatial gates",
    }
    compared = {"psnr": "PSNR (dB)", "ssim": "SSIM"}
    per_image_file = "reconstruction_{part}.csv"
    chart_metrics = ("test_psnr",)
    chart_unit = "dB"

    def training_rows(self, part: str, rows: pd.DataFrame) -> pd.DataFrame:
        if self.task_settings.normal_only:
            return rows[rows["label"] == 0].reset_index(drop=True)
        return rows

    def describe_model(self, model: nn.Module) -> dict[str, str]:
        return autoencoder_params(model, self.settings.model.image_size)

    def objective(self, model: nn.Module) -> ReconstructionObjective:
        return ReconstructionObjective(self.settings.train.amp, self.task_settings.ssim_weight)

    def score(
        self,
        model: nn.Module,
        part: PartToScore,
        device: torch.device,
        out_dir: Path,
        title: str,
        evaluation: EvalConfig,
        calibration: Calibration,
    ) -> Scores:
        """PSNR / SSIM / MSE overall and per class (one pass), and a picture of reconstructions."""
        prefix = f"{part.name}_"
        inputs = InputPipeline(device, RAW, self.settings.train.channels_last)
        table, originals, outputs = reconstruct(model, part.loader, inputs, amp=False, keep=8)  # float32
        point = {f"{prefix}{name}": float(table[name].mean()) for name in SCORES}
        for label, by_class in table.groupby("label"):
            point.update({f"{prefix}{name}_{CLASS_NAMES[int(label)]}": float(by_class[name].mean()) for name in SCORES})
        rows = part.rows.iloc[table["index"].to_numpy()]
        per_image = pd.DataFrame(
            {
                "image_id": rows["image_id"].to_numpy(),
                "center": rows["center"].to_numpy(),
                "group": rows["group"].to_numpy(),
                "label": table["label"].to_numpy(),
                **{name: table[name].to_numpy() for name in SCORES},
            }
        )
        metrics = self.with_intervals(per_image, point, evaluation, prefix)
        scores_csv = out_dir / f"reconstruction_{part.name}.csv"
        per_image.to_csv(scores_csv, index=False)
        grid = save_reconstruction_grid(originals, outputs, out_dir / f"reconstructions_{part.name}.png", title)
        return Scores(metrics, [grid, scores_csv], per_image)

    @classmethod
    def replicates(cls, per_image: pd.DataFrame, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Mean MSE / PSNR / SSIM overall and per class, per resample."""
        out = {name: mean_replicates(per_image[name].to_numpy(), weights) for name in SCORES}
        labels = per_image["label"].to_numpy()
        for label in np.unique(labels):
            of_class = np.where(labels == label, 1.0, 0.0).astype(np.float32)
            for name in SCORES:
                out[f"{name}_{CLASS_NAMES[int(label)]}"] = mean_replicates(
                    per_image[name].to_numpy(), weights * of_class
                )
        return out
