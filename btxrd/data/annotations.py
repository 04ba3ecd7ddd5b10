"""LabelMe lesion annotations of the BTXRD release: parsing and rasterisation.

The release's files (LabelMe 5.4.1, CRLF line endings) hold, per lesion, a
``rectangle`` (two corners) and a ``polygon``; the two are not linked by
``group_id`` and their counts may differ (one real file has 2 rectangles and
1 polygon). We therefore keep boxes and polygons as two lists and count lesions
as the larger of the two.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from btxrd.data.limits import DEFAULT_LIMITS, InputLimits
from btxrd.errors import DataError

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, x0 <= x1, y0 <= y1


@dataclass(frozen=True)
class Annotation:
    """Lesion shapes of one image, in pixel coordinates of the original image."""

    path: Path
    width: int
    height: int
    labels: tuple[str, ...]
    boxes: tuple[Box, ...]
    polygons: tuple[tuple[Point, ...], ...]
    n_clipped_points: int = 0
    n_dropped_shapes: int = 0  # shapes with a coordinate that is not a finite number (NaN, Infinity)
    ignored_shape_types: tuple[str, ...] = field(default_factory=tuple)
    image_path: str = ""  # LabelMe's imagePath: the image the shapes were drawn on

    @property
    def image_name(self) -> str:
        """The file name of ``image_path`` (written with / or \\ separators)."""
        return self.image_path.replace("\\", "/").rsplit("/", 1)[-1]

    @property
    def n_lesions(self) -> int:
        return max(len(self.boxes), len(self.polygons))

    def lesion_boxes(self) -> tuple[Box, ...]:
        """Boxes for localisation: the rectangles, or polygon extents when a file has none."""
        if self.boxes:
            return self.boxes
        return tuple(_polygon_extent(p) for p in self.polygons)


def _polygon_extent(points: tuple[Point, ...]) -> Box:
    xs, ys = zip(*points, strict=True)
    return (min(xs), min(ys), max(xs), max(ys))


def _clip(points: list[Point], width: int, height: int) -> tuple[list[Point], int]:
    clipped = []
    n_out = 0
    for x, y in points:
        cx = min(max(x, 0.0), float(width))
        cy = min(max(y, 0.0), float(height))
        n_out += (cx, cy) != (x, y)
        clipped.append((cx, cy))
    return clipped, n_out


def read_annotation(
    path: str | Path, limits: InputLimits = DEFAULT_LIMITS, root: str | Path | None = None
) -> Annotation:
    """Parse one LabelMe file (a regular file inside ``root``, within ``limits``); a malformed file raises
    DataError naming it. A shape with a coordinate that is not a finite number is dropped and counted."""
    path = Path(path)
    try:
        raw = json.loads(limits.read(path, root).decode("utf-8-sig"))
    except DataError as exc:
        raise DataError(f"malformed annotation file {exc}") from None
    except (OSError, ValueError, RecursionError) as exc:  # JSON errors, numbers too long, nesting too deep
        raise DataError(f"malformed annotation file {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
    try:
        width, height = int(raw["imageWidth"]), int(raw["imageHeight"])
        if width <= 0 or height <= 0:
            raise ValueError(f"image size {width} x {height}")
        shapes = raw["shapes"]
        if not isinstance(shapes, list):
            raise TypeError("'shapes' is not a list")
        labels, boxes, polygons, ignored = [], [], [], []
        n_clipped = n_dropped = 0
        for shape in shapes:
            points = [(float(x), float(y)) for x, y in shape["points"]]
            if not all(math.isfinite(v) for point in points for v in point):
                n_dropped += 1
                continue
            kind = shape.get("shape_type", "polygon")
            pts, n_out = _clip(points, width, height)
            n_clipped += n_out
            if kind == "rectangle":
                if len(pts) != 2:
                    raise ValueError(f"rectangle with {len(pts)} points")
                (xa, ya), (xb, yb) = pts
                boxes.append((min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)))
            elif kind == "polygon":
                if len(pts) < 3:
                    raise ValueError(f"polygon with {len(pts)} points")
                polygons.append(tuple(pts))
            else:
                ignored.append(str(kind))
                continue
            labels.append(str(shape.get("label", "")))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"malformed annotation file {path}: {type(exc).__name__}: {exc}") from None
    return Annotation(
        path=path,
        width=width,
        height=height,
        labels=tuple(labels),
        boxes=tuple(boxes),
        polygons=tuple(polygons),
        n_clipped_points=n_clipped,
        n_dropped_shapes=n_dropped,
        ignored_shape_types=tuple(ignored),
        image_path=str(raw.get("imagePath") or ""),
    )


def transform_box(box: Box, scale: tuple[float, float], offset: tuple[float, float]) -> Box:
    """Map a box from original pixels to a resized image: p' = p * scale + offset."""
    sx, sy = scale
    ox, oy = offset
    x0, y0, x1, y1 = box
    return (x0 * sx + ox, y0 * sy + oy, x1 * sx + ox, y1 * sy + oy)


def rasterise(
    boxes: tuple[Box, ...] | list[Box],
    polygons: tuple[tuple[Point, ...], ...] | list,
    out_size: tuple[int, int],
    scale: tuple[float, float] = (1.0, 1.0),
    offset: tuple[float, float] = (0.0, 0.0),
    use: str = "polygons",
) -> np.ndarray:
    """Lesion mask (uint8 0/1, shape (H, W)) at any output size.

    ``use='polygons'`` fills the polygons and, for lesions that only have a
    rectangle (more rectangles than polygons), falls back to the boxes;
    ``use='boxes'`` fills the rectangles only. Pillow's polygon fill does the
    rasterisation.
    """
    width, height = out_size
    if use not in ("polygons", "boxes"):
        raise ValueError(f"use must be 'polygons' or 'boxes', got {use!r}")
    sx, sy = scale
    ox, oy = offset
    if use == "boxes" or not polygons:
        mask = np.zeros((height, width), dtype=np.uint8)
        for box in boxes:
            fill_box(mask, transform_box(box, scale, offset))
        return mask
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        draw.polygon([(x * sx + ox, y * sy + oy) for x, y in poly], fill=1)
    mask = np.array(canvas, dtype=np.uint8)
    if len(boxes) > len(polygons):
        # Some lesions are only boxed: cover every box that no polygon already covers.
        for box in boxes:
            x0, y0, x1, y1 = transform_box(box, scale, offset)
            region = mask[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
            if region.size == 0 or region.mean() < 0.05:
                fill_box(mask, (x0, y0, x1, y1))
    return mask


def fill_box(mask: np.ndarray, box: Box) -> None:
    """Set the pixels whose centres lie inside ``box`` (continuous pixel coordinates) to 1."""
    x0, y0, x1, y1 = box
    c0, c1 = max(0, int(np.ceil(x0 - 0.5))), min(mask.shape[1], int(np.floor(x1 - 0.5)) + 1)
    r0, r1 = max(0, int(np.ceil(y0 - 0.5))), min(mask.shape[0], int(np.floor(y1 - 0.5)) + 1)
    mask[r0:r1, c0:c1] = 1
