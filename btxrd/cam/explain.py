"""Grad-CAM over a whole evaluation loader, with localisation scores against the lesions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from btxrd.cam.gradcam import grad_cam, upsample
from btxrd.cam.overlay import save_cam_grid
from btxrd.data.cache import ImageCache, lesions_in_input
from btxrd.data.schema import CLASS_NAMES
from btxrd.engine import InputPipeline, autocast
from btxrd.metrics.localization import localization_per_image
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


def explain_loader(model: nn.Module, loader: DataLoader, inputs: InputPipeline, amp: bool) -> Explanation:
    """Grad-CAM maps of the predicted class for every image of ``loader``, at input resolution."""
    target_layer = cam_target(model)
    images, cams, probs, labels, index = [], [], [], [], []
    for batch in loader:
        with autocast(inputs.device, amp):
            maps, logits = grad_cam(model, inputs(batch.images), target_layer)
        size = batch.images.shape[-1]
        cams.append(upsample(maps.float(), size).cpu())
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        images.append(batch.images[:, 0])
        labels.append(batch.labels)
        index.append(batch.index)
    return Explanation(
        images=torch.cat(images).numpy(),
        cams=torch.cat(cams).numpy().astype(np.float32),
        probs=torch.cat(probs).numpy(),
        labels=torch.cat(labels).numpy(),
        index=torch.cat(index).numpy(),
    )


def explain_rows(
    model: nn.Module,
    loader: DataLoader,
    inputs: InputPipeline,
    amp: bool,
    rows: pd.DataFrame,
    cache: ImageCache,
    out_dir: Path,
    title: str,
) -> tuple[pd.DataFrame, list[Path]]:
    """Grad-CAM over ``loader`` (built on ``rows``, which carry their lesion shapes): per dataset row,
    the localisation scores against its lesions in the input frame (NaN for images without a
    lesion box, and for normal images), and the per-class overlay grids (in ``out_dir``)."""
    image_size = loader.dataset.image_size
    boxes, masks = lesions_in_input(rows, cache, image_size)
    explanation = explain_loader(model, loader, inputs, amp)
    ordered_boxes = [boxes[i] for i in explanation.index]
    per_image = localization_per_image(explanation.cams, ordered_boxes, masks[explanation.index], image_size)
    per_image[explanation.labels == 0] = np.nan  # scored on tumour images only
    per_image.index = explanation.index
    out_dir.mkdir(parents=True, exist_ok=True)
    grids = []
    for k, name in enumerate(CLASS_NAMES):
        path = save_cam_grid(
            explanation.images,
            explanation.cams,
            ordered_boxes,
            explanation.labels,
            explanation.preds,
            explanation.probs,
            CLASS_NAMES,
            k,
            out_dir / f"gradcam_{name}.png",
            title=f"{title}: true {name}",
        )
        if path is not None:
            grids.append(path)
    return per_image.sort_index(), grids
