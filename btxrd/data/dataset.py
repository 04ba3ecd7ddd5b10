"""Torch dataset over the image cache, with augmentation on uint8 tensors.

Training crops: a square crop whose side is a fraction ``u ~ U(min_scale,
max_scale)`` of the canvas, resized to the input size, plus a horizontal flip.
With ``lesion_crops`` (annotations=on) the crop of a tumour image is placed so
that its lesion boxes stay inside; the scale distribution is the same for every
class, so crop statistics cannot reveal the label. Evaluation uses the whole
canvas and never reads annotations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from btxrd.data.annotations import rasterise
from btxrd.data.cache import ImageCache


@dataclass(frozen=True)
class CropSettings:
    """Training crops (data.crop_min_scale, data.crop_max_scale, data.hflip)."""

    min_scale: float
    max_scale: float
    hflip: bool


def union_box(boxes, scale: np.ndarray, offset: np.ndarray) -> tuple[float, float, float, float] | None:
    """Union of lesion boxes in canvas pixels, or None if there is none."""
    if not boxes:
        return None
    arr = np.asarray(boxes, dtype=float)
    x0, y0 = arr[:, 0].min() * scale[0] + offset[0], arr[:, 1].min() * scale[1] + offset[1]
    x1, y1 = arr[:, 2].max() * scale[0] + offset[0], arr[:, 3].max() * scale[1] + offset[1]
    return float(x0), float(y0), float(x1), float(y1)


def _crop_start(rng: np.random.Generator, canvas: int, side: int, low: float, high: float) -> int:
    """A crop start in [0, canvas-side] keeping [low, high] inside the crop when possible."""
    lo = max(0, int(np.ceil(high)) - side)
    hi = min(canvas - side, int(np.floor(low)))
    if lo > hi:  # the lesion is larger than the crop: centre the crop on it
        return int(np.clip(round((low + high - side) / 2), 0, canvas - side))
    return int(rng.integers(lo, hi + 1))


def crop_window(
    rng: np.random.Generator, canvas: int, crop: CropSettings, lesion: tuple[float, float, float, float] | None
) -> tuple[int, int, int]:
    """(left, top, side) of a square training crop.

    The side is drawn first and the same way for every image, lesion or not: the
    crop scale carries no information about the class. A lesion only moves the window.
    """
    side = max(8, round(canvas * rng.uniform(crop.min_scale, crop.max_scale)))
    if lesion is None:
        return int(rng.integers(0, canvas - side + 1)), int(rng.integers(0, canvas - side + 1)), side
    return (
        _crop_start(rng, canvas, side, lesion[0], lesion[2]),
        _crop_start(rng, canvas, side, lesion[1], lesion[3]),
        side,
    )


class BTXRDImages(Dataset):
    """Items: (image uint8 [1,S,S], label, lesion mask uint8 [1,S,S] (or [1,0,0] without ``with_masks``),
    has_mask, row index)."""

    def __init__(
        self,
        rows: pd.DataFrame,
        cache: ImageCache,
        image_size: int,
        train: bool,
        crop: CropSettings | None = None,
        lesion_crops: bool = False,
        with_masks: bool = False,
        seed: int = 0,
    ) -> None:
        row_of = cache.row_of()
        self.cache_rows = np.asarray([row_of[i] for i in rows["image_id"]], dtype=np.int64)
        self.labels = rows["label"].to_numpy(dtype=np.int64)
        self.use_annotations = train and (lesion_crops or with_masks)
        # Annotations are read only for training with annotations on; evaluation never sees them.
        self.boxes = list(rows["boxes"]) if self.use_annotations else [()] * len(rows)
        self.polygons = list(rows["polygons"]) if self.use_annotations else [()] * len(rows)
        if train and crop is None:
            raise ValueError("a training dataset needs its crop settings")
        self.cache = cache
        self.image_size = image_size
        self.train = train
        self.crop = crop
        self.lesion_crops = lesion_crops
        self.with_masks = with_masks
        self.seed = seed

    def __len__(self) -> int:
        return len(self.labels)

    def window(self, epoch: int, index: int) -> tuple[int, int, int, bool]:
        """(left, top, side, flipped) of item ``index``'s training crop in ``epoch``: drawn from (seed, epoch,
        index) alone, so the same with any number of loader workers, and on the device feed."""
        row = self.cache_rows[index]
        rng = np.random.default_rng((self.seed, epoch, index))
        scale, offset = self.cache.scale[row], self.cache.offset[row]
        lesion = union_box(self.boxes[index], scale, offset) if self.lesion_crops else None
        left, top, side = crop_window(rng, self.cache.size, self.crop, lesion)
        return left, top, side, bool(self.crop.hflip and rng.random() < 0.5)

    def __getitem__(self, key: int | tuple[int, int]):
        """``index``, or ``(epoch, index)`` for training: augmentation draws depend on (seed, epoch,
        index) only, so they are the same with any number of loader workers."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        row = self.cache_rows[index]
        canvas = self.cache.size
        image = torch.from_numpy(np.array(self.cache.pixels[row])).unsqueeze(0)  # copy out of the mmap
        boxes, polygons = self.boxes[index], self.polygons[index]
        scale, offset = self.cache.scale[row], self.cache.offset[row]
        mask = None
        if self.with_masks and (boxes or polygons):
            mask = torch.from_numpy(rasterise(boxes, polygons, (canvas, canvas), tuple(scale), tuple(offset)))[None]
        if self.train:
            left, top, side, flip = self.window(epoch, index)
            size = [self.image_size, self.image_size]
            image = TF.resized_crop(image, top, left, side, side, size, antialias=True)
            if mask is not None:
                mask = TF.resized_crop(mask, top, left, side, side, size, interpolation=TF.InterpolationMode.NEAREST)
            if flip:
                image = TF.horizontal_flip(image)
                mask = TF.horizontal_flip(mask) if mask is not None else None
        elif canvas != self.image_size:
            image = TF.resize(image, [self.image_size, self.image_size], antialias=True)
        if mask is None:  # an empty mask when none is asked for: no bytes to ship from the workers
            side = self.image_size if self.with_masks else 0
            mask = torch.zeros((1, side, side), dtype=torch.uint8)
            has_mask = False
        else:
            has_mask = bool(mask.any())
        return image, int(self.labels[index]), mask, has_mask, index
