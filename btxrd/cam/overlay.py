"""Grad-CAM overlays: per class, a grid of correct and wrong test predictions with lesion boxes.

The grid is composed as one RGB picture (numpy) and drawn on a single matplotlib axes: a figure of
eight sub-axes cost ~0.3 s on its own (axes and ticks), three of them per run a second or two of
every job's test phase.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from btxrd.data.annotations import Box

CAM_ALPHA = 0.45
BOX_COLOUR = (0.2, 1.0, 0.2)  # lime, as the lesion boxes are drawn throughout the reports
GAP = 0.06  # blank between tiles, as a share of a tile


def cam_tile(image: np.ndarray, cam: np.ndarray, boxes: Sequence[Box] = ()) -> np.ndarray:
    """One (S, S, 3) float picture: the grayscale image, its CAM (own scale, jet) blended in, the boxes."""
    from matplotlib import colormaps

    gray = np.repeat(image[..., None].astype(np.float32) / 255.0, 3, axis=2)
    scaled = cam / cam.max() if cam.max() > 0 else cam
    tile = (1 - CAM_ALPHA) * gray + CAM_ALPHA * colormaps["jet"](scaled)[..., :3]
    side = tile.shape[0]
    width = max(1, side // 100)
    for x0, y0, x1, y1 in boxes:
        c0, c1 = (int(np.clip(round(v), 0, side - 1)) for v in (x0, x1))
        r0, r1 = (int(np.clip(round(v), 0, side - 1)) for v in (y0, y1))
        tile[r0 : r0 + width, c0 : c1 + 1] = tile[max(r1 - width + 1, 0) : r1 + 1, c0 : c1 + 1] = BOX_COLOUR
        tile[r0 : r1 + 1, c0 : c0 + width] = tile[r0 : r1 + 1, max(c1 - width + 1, 0) : c1 + 1] = BOX_COLOUR
    return tile


def save_cam_grid(
    images: np.ndarray,
    cams: np.ndarray,
    boxes: Sequence[Sequence[Box]],
    labels: np.ndarray,
    preds: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    class_index: int,
    path: str | Path,
    per_row: int = 4,
    title: str = "",
) -> Path | None:
    """One PNG for true class ``class_index``: a row of correct and a row of wrong predictions.

    images: (N, S, S) uint8; cams: (N, S, S) float, any scale. Returns None when the class has no image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    of_class = labels == class_index
    if not of_class.any():
        return None
    rows = {
        "correct": np.flatnonzero(of_class & (preds == class_index))[:per_row],
        "wrong": np.flatnonzero(of_class & (preds != class_index))[:per_row],
    }
    side = images.shape[-1]
    step = side + round(GAP * side)
    label_room = round(0.32 * side)  # above each row of tiles, for the captions
    height = 2 * (label_room + step)
    mosaic = np.ones((height, per_row * step, 3), dtype=np.float32)
    captions = []
    for r, (kind, chosen) in enumerate(rows.items()):
        top = r * (label_room + step) + label_room
        for c, i in enumerate(chosen):
            mosaic[top : top + side, c * step : c * step + side] = cam_tile(images[i], cams[i], boxes[i])
            captions.append(
                (c * step + side / 2, top - 2, f"{kind}: pred {class_names[preds[i]]}\np={probs[i, preds[i]]:.2f}")
            )
        if not len(chosen):
            captions.append((per_row * step / 2, top + side / 2, f"no {kind} prediction"))
    fig, ax = plt.subplots(figsize=(2.4 * per_row, 5.4), dpi=110)
    ax.imshow(mosaic, interpolation="nearest")
    for x, y, text in captions:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=8)
    ax.set_axis_off()
    ax.set_title(title or f"Grad-CAM, true class {class_names[class_index]}", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92)
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
