"""Training batches made on the device: the cache's canvases uploaded once, every step one batched crop.

A GPU trains EfficientNet-B0 at 224 px on ~4,400 images a second; loader workers cropping, resizing,
collating and pinning one image at a time (~0.7 ms each, more with lesion masks) cannot keep up. Here the
training part's uint8 canvases (and, with annotations, each image's lesion mask, rasterised once) live
on the device; a step gathers its batch there and crops, scales and flips every image with one
``affine_grid`` + ``grid_sample`` (bilinear for the pictures, nearest for the masks). The windows are
the product's own draws (``BTXRDImages.window``: same seed, epoch and index, same window as the worker
path), computed on the host for a whole batch and sent as one small non-blocking copy: no host sync per
step. Evaluation never goes through here: its inputs stay exactly the worker path's.

The same code runs on CPU tensors, which is how it is tested without a GPU. What differs from the worker
path: its resize is bilinear without antialiasing (crops are 0.7-1.0 of a canvas 1.15x the input, so
they are scaled by 0.8-1.15, where antialiasing changes little), then rounded back to uint8.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from btxrd.data.annotations import rasterise
from btxrd.data.dataset import BTXRDImages
from btxrd.data.loaders import Batch, EpochBatches


def feed_kind(setting: str, device: torch.device) -> str:
    """``data.feed`` resolved: ``auto`` is the device feed on a GPU, loader workers on the CPU (where the
    device is the host: its cores do the same work either way, and workers leave the model its own)."""
    if setting == "auto":
        return "device" if device.type == "cuda" else "workers"
    return setting


class DeviceFeed:
    """Stands in for the training DataLoader (``dataset``, ``batch_sampler``, ``len``, one iteration that
    streams every epoch from ``batch_sampler.start_epoch`` on)."""

    def __init__(self, dataset: BTXRDImages, batch_size: int, device: torch.device, seed: int) -> None:
        if not dataset.train:
            raise ValueError("the device feed makes training batches; evaluation reads the dataset itself")
        self.dataset, self.device, self.size = dataset, device, dataset.image_size
        self.batch_sampler = EpochBatches(len(dataset), batch_size, seed)
        pixels = np.ascontiguousarray(dataset.cache.pixels[dataset.cache_rows])  # this part's canvases only
        self.canvases = torch.from_numpy(pixels).to(device)[:, None]  # (N, 1, C, C) uint8, uploaded once
        self.labels = torch.tensor(dataset.labels, device=device)
        self.masks = self._masks() if dataset.with_masks else None
        self.has_mask = (
            self.masks.flatten(1).amax(1) > 0
            if self.masks is not None
            else torch.zeros(len(dataset), dtype=torch.bool, device=device)
        )
        self.pin = device.type == "cuda"

    def _masks(self) -> torch.Tensor:
        """Every image's lesion mask on its canvas, rasterised once (the worker path does it every epoch)."""
        dataset, canvas = self.dataset, self.dataset.cache.size
        masks = np.zeros((len(dataset), canvas, canvas), dtype=np.uint8)
        for i, row in enumerate(dataset.cache_rows):
            if dataset.boxes[i] or dataset.polygons[i]:
                scale, offset = dataset.cache.scale[row], dataset.cache.offset[row]
                masks[i] = rasterise(
                    dataset.boxes[i], dataset.polygons[i], (canvas, canvas), tuple(scale), tuple(offset)
                )
        return torch.from_numpy(masks).to(self.device)[:, None]

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Batch]:
        for keys in self.batch_sampler:
            yield self.batch(keys)

    def batch(self, keys: list[tuple[int, int]]) -> Batch:
        """The training batch of (epoch, index) ``keys``: cropped, scaled and flipped as ``BTXRDImages`` would."""
        index = torch.tensor([i for _, i in keys])
        theta = torch.from_numpy(self._theta(keys))
        if self.pin:
            index, theta = index.pin_memory(), theta.pin_memory()
        index, theta = index.to(self.device, non_blocking=True), theta.to(self.device, non_blocking=True)
        grid = F.affine_grid(theta, [len(keys), 1, self.size, self.size], align_corners=False)
        picked = self.canvases.index_select(0, index).float()
        images = F.grid_sample(picked, grid, mode="bilinear", align_corners=False).round_().clamp_(0, 255)
        if self.masks is not None:
            chosen = self.masks.index_select(0, index).float()
            masks = F.grid_sample(chosen, grid, mode="nearest", align_corners=False).to(torch.uint8)
            has_mask = masks.flatten(1).amax(1) > 0
        else:  # as the worker path: an empty mask per image, nothing to ship
            masks = torch.zeros((len(keys), 1, 0, 0), dtype=torch.uint8, device=self.device)
            has_mask = self.has_mask.index_select(0, index)
        return Batch(images.to(torch.uint8), self.labels.index_select(0, index), masks, has_mask, index)

    def _theta(self, keys: list[tuple[int, int]]) -> np.ndarray:
        """Each output pixel's place on its canvas (normalised, half-pixel centres as ``resized_crop``):
        x_canvas = left + side * (i + 0.5) / size - 0.5, mirrored within the window when flipped."""
        canvas = self.dataset.cache.size
        theta = np.zeros((len(keys), 2, 3), dtype=np.float32)
        for b, (epoch, i) in enumerate(keys):
            left, top, side, flip = self.dataset.window(epoch, i)
            theta[b, 0, 0] = (-side if flip else side) / canvas
            theta[b, 1, 1] = side / canvas
            theta[b, 0, 2] = (2 * left + side) / canvas - 1
            theta[b, 1, 2] = (2 * top + side) / canvas - 1
        return theta
