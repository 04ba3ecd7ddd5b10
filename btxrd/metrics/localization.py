"""How well a saliency map finds the annotated lesion: pointing game, energy in box, IoU.

Maps and boxes are in the same pixel frame (the model input). References:
pointing game (Zhang et al., 2016: hit if the map's maximum lies within 15 px of
the object at 224 px input); energy-based pointing game (Wang et al., Score-CAM,
2020: share of the map's non-negative mass inside the boxes; a uniform map
scores the boxes' area fraction, reported beside it as the baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from btxrd.data.annotations import Box, fill_box

POINTING_TOLERANCE_AT_224 = 15.0


def pointing_tolerance(image_size: int) -> float:
    """The usual 15 px tolerance at 224 px, scaled to this input size."""
    return POINTING_TOLERANCE_AT_224 * image_size / 224.0


def pointing_hit(cam: np.ndarray, boxes: Sequence[Box], tolerance: float) -> bool:
    """Whether the map's maximum lies inside a box grown by ``tolerance`` pixels (flat map: miss)."""
    if not boxes or not np.isfinite(cam).all() or cam.max() <= cam.min():
        return False
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    px, py = x + 0.5, y + 0.5  # pixel centre
    return any(
        x0 - tolerance <= px <= x1 + tolerance and y0 - tolerance <= py <= y1 + tolerance for x0, y0, x1, y1 in boxes
    )


def box_mask(boxes: Sequence[Box], shape: tuple[int, int]) -> np.ndarray:
    """Union of the boxes as a boolean mask: pixels whose centres lie inside a box."""
    mask = np.zeros(shape, dtype=np.uint8)
    for box in boxes:
        fill_box(mask, box)
    return mask.astype(bool)


def energy_in_boxes(cam: np.ndarray, boxes: Sequence[Box]) -> tuple[float, float]:
    """(share of the non-negative map mass inside the union of boxes, the boxes' area fraction)."""
    inside = box_mask(boxes, cam.shape)
    positive = np.clip(cam, 0, None)
    total = float(positive.sum())
    energy = float(positive[inside].sum() / total) if total > 0 else 0.0
    return energy, float(inside.mean())


def cam_iou(cam: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of {map >= threshold x max} with the lesion mask."""
    if cam.max() <= 0:
        return 0.0
    region = cam >= threshold * cam.max()
    lesion = mask.astype(bool)
    union = np.logical_or(region, lesion).sum()
    return float(np.logical_and(region, lesion).sum() / union) if union else 0.0


LOCALIZATION_COLUMNS = ("cam_pointing", "cam_energy", "cam_energy_baseline", "cam_iou")


def localization_per_image(
    cams: np.ndarray, boxes: Sequence[Sequence[Box]], masks: np.ndarray, image_size: int, threshold: float = 0.5
) -> pd.DataFrame:
    """Per image: pointing hit (0/1), energy in box, its uniform-map baseline, IoU; NaN without a lesion box."""
    tolerance = pointing_tolerance(image_size)
    rows = []
    for cam, image_boxes, mask in zip(cams, boxes, masks, strict=True):
        if not image_boxes:
            rows.append((np.nan,) * len(LOCALIZATION_COLUMNS))
            continue
        energy, baseline = energy_in_boxes(cam, image_boxes)
        rows.append((float(pointing_hit(cam, image_boxes, tolerance)), energy, baseline, cam_iou(cam, mask, threshold)))
    return pd.DataFrame(rows, columns=list(LOCALIZATION_COLUMNS), dtype=float)


def localization_scores(per_image: pd.DataFrame) -> dict[str, float]:
    """Means over the images that have a lesion box, and how many there are (``cam_n``)."""
    scored = per_image.dropna()
    means = {name: float(scored[name].mean()) if len(scored) else float("nan") for name in LOCALIZATION_COLUMNS}
    return {**means, "cam_n": len(scored)}
