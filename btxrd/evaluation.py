"""Re-score a checkpoint: the run's own split part, or all images of another dataset root.

The checkpoint carries its resolved training config, so the model, input size,
canvas and split are rebuilt exactly as in training, and the run's own test
part gives the run's test metrics back. Checkpoints load with weights_only=True.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from btxrd.cam.explain import explain_rows
from btxrd.data.cache import cache_for
from btxrd.data.dataset import BTXRDImages
from btxrd.data.reader import load_dataset
from btxrd.data.schema import CLASS_NAMES
from btxrd.data.splits import make_split
from btxrd.engine.checkpoint import load_checkpoint
from btxrd.engine.reconstruction import reconstruct, save_reconstruction_grid, use_raw_inputs
from btxrd.engine.training import TrainSettings, predict
from btxrd.errors import ConfigError, DataError
from btxrd.metrics import classification_metrics, plot_confusion_matrix
from btxrd.metrics.calibration import expected_calibration_error, plot_reliability, plot_roc_curves
from btxrd.models import build_model

log = logging.getLogger(__name__)
PARTS = ("train", "val", "test", "all")


@dataclass
class EvaluationResult:
    metrics: dict[str, float]
    artifacts: list[Path]
    part: str
    data_root: str
    n_images: int


def eval_settings(config: dict[str, Any]) -> TrainSettings:
    data = config["data"]
    return TrainSettings(mean=float(data["mean"]), std=float(data["std"]), amp=bool(config["train"]["amp"]),
                         channels_last=bool(config["train"]["channels_last"]), class_names=CLASS_NAMES)  # fmt: skip


def score_classifier(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    settings: TrainSettings,
    rows: pd.DataFrame,
    out_dir: Path,
    part: str,
) -> tuple[dict[str, float], np.ndarray, np.ndarray, np.ndarray]:
    """Metrics on one part, a per-image predictions CSV in ``out_dir``; also the confusion matrix,
    the probabilities and the true labels (in loader order)."""
    probs, labels, index = predict(model, loader, device, settings)
    metrics, matrix = classification_metrics(labels, probs, CLASS_NAMES, prefix=f"{part}_")
    metrics[f"{part}_malignant_recall"] = metrics[f"{part}_recall_malignant"]
    predictions = pd.DataFrame(
        {
            "image_id": rows["image_id"].to_numpy()[index],
            "center": rows["center"].to_numpy()[index],
            "label": labels,
            "predicted": probs.argmax(axis=1),
            **{f"p_{name}": probs[:, i] for i, name in enumerate(CLASS_NAMES)},
        }
    )
    predictions.to_csv(out_dir / f"predictions_{part}.csv", index=False)
    return metrics, matrix, probs, labels


def evaluate_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    device: torch.device,
    part: str = "test",
    data_root: str | None = None,
    cache_dir: str | None = None,
    expected_split: pd.DataFrame | None = None,
    threads: int = 1,
) -> EvaluationResult:
    """Metrics, ROC curves, reliability diagram, ECE and Grad-CAM scores of ``checkpoint``.

    ``data_root`` None: the training dataset and the run's split (``part``). A path:
    external validation on that dataset (``part='all'`` unless another part is asked).
    ``expected_split``: the run's logged split CSV; a mismatch means the dataset changed.
    """
    if part not in PARTS:
        raise ConfigError(f"part={part!r}: choose one of {', '.join(PARTS)}")
    state = load_checkpoint(checkpoint)
    config = state.get("config")
    if not isinstance(config, dict) or "model" not in config:
        raise DataError(f"{checkpoint}: no training config inside; not a btxrd checkpoint")
    external = data_root is not None and str(Path(data_root).expanduser().resolve()) != str(
        Path(config["data"]["root"]).resolve()
    )
    root = str(data_root) if data_root else config["data"]["root"]
    table = load_dataset(root, on_bad_image=config["data"]["on_bad_image"], read_annotations=True)
    if part == "all" or external and part == "test":
        part = "all" if external else part
        rows = table.reset_index(drop=True)
    else:
        parts = make_split(table, config["split"], required_classes=())
        if expected_split is not None:
            same = (
                expected_split["image_id"].tolist() == table["image_id"].tolist()
                and (expected_split["part"].to_numpy() == parts.to_numpy()).all()
            )
            if not same:
                raise DataError(f"the dataset at {root} changed since training: its split differs from the run's")
        rows = table[parts == part].reset_index(drop=True)
    if len(rows) == 0:
        raise DataError(f"no image in part '{part}' of {root}")

    model = build_model({**config["model"], "pretrained": False, "weights": None})
    model.load_state_dict(state["model"])
    model.to(device)
    settings = eval_settings(config)
    image_size = int(config["model"]["image_size"])
    cache = cache_for(table, image_size, config["data"], cache_dir, workers=threads)
    dataset = BTXRDImages(rows, cache, image_size, train=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(config["train"]["eval_batch_size"]), shuffle=False)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{part}_"
    title = f"{Path(checkpoint).name} on {part}"
    if config.get("task") == "reconstruct":  # an autoencoder: PSNR / SSIM / MSE and a picture
        scores = reconstruct(model, loader, device, use_raw_inputs(settings), keep=8)
        metrics = {f"{prefix}{k}": float(scores[k]) for k in ("psnr", "ssim", "mse")}
        artifacts = [save_reconstruction_grid(scores["originals"], scores["reconstructions"],
                                              out_dir / f"reconstructions_{part}.png", title)]  # fmt: skip
    else:
        metrics, matrix, probs, labels = score_classifier(model, loader, device, settings, rows, out_dir, part)
        metrics[f"{prefix}ece"] = expected_calibration_error(labels, probs)
        cam_metrics, grids = explain_rows(model, loader, device, settings, rows, cache, out_dir, title, prefix)
        metrics.update(cam_metrics)
        artifacts = [
            plot_confusion_matrix(matrix, CLASS_NAMES, out_dir / f"confusion_matrix_{part}.png", f"confusion ({part})"),
            plot_roc_curves(labels, probs, CLASS_NAMES, out_dir / f"roc_{part}.png"),
            plot_reliability(labels, probs, out_dir / f"reliability_{part}.png"),
            out_dir / f"predictions_{part}.csv",
            *grids,
        ]
    (out_dir / f"metrics_{part}.json").write_text(json.dumps(metrics, indent=2))
    artifacts.append(out_dir / f"metrics_{part}.json")
    return EvaluationResult(metrics, artifacts, part, root, len(rows))
