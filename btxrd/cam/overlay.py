"""Grad-CAM overlays: per class, a grid of correct and wrong test predictions with lesion boxes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from btxrd.data.annotations import Box


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

    images: (N, S, S) uint8; cams: (N, S, S) float, any scale. Returns None when
    the class has no test image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    of_class = labels == class_index
    rows = {
        "correct": np.flatnonzero(of_class & (preds == class_index))[:per_row],
        "wrong": np.flatnonzero(of_class & (preds != class_index))[:per_row],
    }
    if not of_class.any():
        return None
    fig, axes = plt.subplots(2, per_row, figsize=(2.4 * per_row, 5.4), dpi=110, squeeze=False)
    for r, (kind, chosen) in enumerate(rows.items()):
        for c in range(per_row):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(chosen):
                continue
            i = chosen[c]
            cam = cams[i]
            scaled = cam / cam.max() if cam.max() > 0 else cam
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
            ax.imshow(scaled, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            for x0, y0, x1, y1 in boxes[i]:
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.2))
            ax.set_title(f"{kind}: pred {class_names[preds[i]]}\np={probs[i, preds[i]]:.2f}", fontsize=8)
    fig.suptitle(title or f"Grad-CAM, true class {class_names[class_index]}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
