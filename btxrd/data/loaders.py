"""Batches and the one loader factory every part (train, val, test, evaluate.py) goes through."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate


@dataclass
class Batch:
    """A batch as the dataset delivers it: uint8 images, never normalised here (the engine does it on the device)."""

    images: torch.Tensor  # (B, 1, S, S) uint8
    labels: torch.Tensor  # (B,) int64
    masks: torch.Tensor  # (B, 1, S, S) uint8 lesion masks; zeros where an image has none
    has_mask: torch.Tensor  # (B,) bool
    index: torch.Tensor  # (B,) int64: the dataset row of each item

    def __len__(self) -> int:
        return len(self.labels)

    def pin_memory(self) -> Batch:
        """Called by the DataLoader (pin_memory=True) so host-to-GPU copies can run asynchronously."""
        return Batch(*(t.pin_memory() for t in (self.images, self.labels, self.masks, self.has_mask, self.index)))


def collate_batch(items: list[tuple]) -> Batch:
    """Dataset items (image, label, mask, has_mask, index) -> one ``Batch``."""
    images, labels, masks, has_mask, index = default_collate(items)
    return Batch(images, labels, masks, has_mask.bool(), index)


class EpochShuffle(Sampler[int]):
    """A fresh seeded permutation per epoch, independent of how many epochs ran before (resumable)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def loader_workers(setting: int | None, device: torch.device, threads: int) -> int:
    """None (``auto``): on CPU the cached uint8 crops are cheap, so the training process does them
    (workers would compete with the model for the same cores); on CUDA, up to 8 workers."""
    if setting is None:
        return 0 if device.type == "cpu" else min(8, max(1, threads))
    return max(0, setting)


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int, device: torch.device,
                seed: int = 0) -> DataLoader:  # fmt: skip
    """Training: a seeded per-epoch shuffle, the last partial batch dropped. Evaluation: in order, all items."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffle(len(dataset), seed) if train else None,
        shuffle=False,
        drop_last=train and len(dataset) > batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        collate_fn=collate_batch,
    )
