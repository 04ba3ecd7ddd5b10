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


def localization_scores(
    cams: np.ndarray, boxes: Sequence[Sequence[Box]], masks: np.ndarray, image_size: int, threshold: float = 0.5
) -> dict[str, float]:
    """Mean scores over images (those with at least one box): pointing, energy, its baseline, IoU."""
    tolerance = pointing_tolerance(image_size)
    hits, energies, baselines, ious = [], [], [], []
    for cam, image_boxes, mask in zip(cams, boxes, masks, strict=True):
        if not image_boxes:
            continue
        hits.append(pointing_hit(cam, image_boxes, tolerance))
        energy, baseline = energy_in_boxes(cam, image_boxes)
        energies.append(energy)
        baselines.append(baseline)
        ious.append(cam_iou(cam, mask, threshold))
    if not hits:
        nan = float("nan")
        return {"cam_pointing": nan, "cam_energy": nan, "cam_energy_baseline": nan, "cam_iou": nan, "cam_n": 0}
    return {
        "cam_pointing": float(np.mean(hits)),
        "cam_energy": float(np.mean(energies)),
        "cam_energy_baseline": float(np.mean(baselines)),
        "cam_iou": float(np.mean(ious)),
        "cam_n": len(hits),
    }
