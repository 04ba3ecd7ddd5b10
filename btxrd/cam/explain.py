"""Grad-CAM over a whole evaluation loader, with localisation scores against the lesions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from btxrd.cam.gradcam import grad_cam, upsample
from btxrd.cam.overlay import save_cam_grid
from btxrd.data.annotations import Box
from btxrd.data.dataset import lesions_in_input
from btxrd.data.schema import CLASS_NAMES
from btxrd.engine.training import InputPipeline, TrainSettings, autocast
from btxrd.metrics.localization import localization_scores
from btxrd.models import cam_target


@dataclass
class Explanation:
    images: np.ndarray  # (N, S, S) uint8, as the model saw them
    cams: np.ndarray  # (N, S, S) float32, Grad-CAM of the predicted class, upsampled
    probs: np.ndarray  # (N, K)
    labels: np.ndarray  # (N,)
    index: np.ndarray  # (N,) dataset row of each item

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def explain_loader(
    model: nn.Module, loader: DataLoader, device: torch.device, settings: TrainSettings, target_layer: nn.Module
) -> Explanation:
    inputs = InputPipeline(device, settings)
    images, cams, probs, labels, index = [], [], [], [], []
    for batch_images, y, _mask, _has_mask, batch_index in loader:
        with autocast(device, settings.amp):
            maps, logits = grad_cam(model, inputs(batch_images), target_layer)
        size = batch_images.shape[-1]
        cams.append(upsample(maps.float(), size).cpu())
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        images.append(batch_images[:, 0])
        labels.append(y)
        index.append(batch_index)
    return Explanation(
        images=torch.cat(images).numpy(),
        cams=torch.cat(cams).numpy().astype(np.float32),
        probs=torch.cat(probs).numpy(),
        labels=torch.cat(labels).numpy(),
        index=torch.cat(index).numpy(),
    )


def score_and_draw(
    explanation: Explanation,
    boxes: list[tuple[Box, ...]],
    masks: np.ndarray,
    class_names: tuple[str, ...],
    image_size: int,
    out_dir: Path,
    title: str,
    prefix: str = "test_",
) -> tuple[dict[str, float], list[Path]]:
    """Localisation scores on tumour images (boxes/masks in input pixels, per dataset row) and CAM grids."""
    ordered_boxes = [boxes[i] for i in explanation.index]
    ordered_masks = masks[explanation.index]
    tumour = explanation.labels > 0
    scores = localization_scores(
        explanation.cams[tumour],
        [b for b, t in zip(ordered_boxes, tumour, strict=True) if t],
        ordered_masks[tumour],
        image_size,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(class_names):
        path = save_cam_grid(
            explanation.images, explanation.cams, ordered_boxes, explanation.labels, explanation.preds,
            explanation.probs, class_names, k, out_dir / f"gradcam_{name}.png", title=f"{title}: true {name}",
        )  # fmt: skip
        if path is not None:
            paths.append(path)
    return {f"{prefix}{k}": v for k, v in scores.items()}, paths


def explain_rows(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    settings: TrainSettings,
    rows,
    cache,
    out_dir: Path,
    title: str,
    prefix: str,
) -> tuple[dict[str, float], list[Path]]:
    """Grad-CAM over ``loader`` (built on ``rows``, which carry their lesion shapes), localisation
    scores against those lesions in the input frame, and the per-class overlay grids."""
    image_size = loader.dataset.image_size
    boxes, masks = lesions_in_input(rows, cache, image_size)
    explanation = explain_loader(model, loader, device, settings, cam_target(model))
    return score_and_draw(explanation, boxes, masks, CLASS_NAMES, image_size, out_dir / "gradcam", title, prefix)
