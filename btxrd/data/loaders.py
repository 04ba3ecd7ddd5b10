"""Batches and the one loader factory every part (train, val, test, evaluate.py) goes through."""

from __future__ import annotations

import itertools
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


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """Training batches of every epoch from ``start_epoch`` on, as one stream: keys (epoch, index).

    Each epoch is a fresh seeded permutation, independent of how many epochs ran before (resumable),
    cut into full batches (the last partial one dropped). One stream for the whole training, rather
    than a new loader iterator per epoch: loader workers never idle at an epoch's start, and they
    learn each item's epoch from its key (a persistent worker holds its own copy of the dataset, so
    an epoch set on the dataset in the training process would never reach it). ``len`` is the
    number of batches per epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed, self.start_epoch = n, batch_size, seed, 0
        self.drop = n % batch_size if n > batch_size else 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in itertools.count(self.start_epoch):
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
            for start in range(0, self.n - self.drop, self.batch_size):
                yield [(epoch, index) for index in order[start : start + self.batch_size]]

    def __len__(self) -> int:
        return max(1, (self.n - self.drop) // self.batch_size) if self.n else 0


def loader_workers(setting: int | None, device: torch.device, threads: int) -> int:
    """None (``auto``): on CPU the cached uint8 crops are cheap, so the training process does them
    (workers would compete with the model for the same cores); on CUDA, up to 8 workers."""
    if setting is None:
        return 0 if device.type == "cpu" else min(8, max(1, threads))
    return max(0, setting)


def make_loader(
    dataset: Dataset, batch_size: int, *, train: bool, workers: int, device: torch.device, seed: int = 0
) -> DataLoader:
    """Training: every epoch's seeded shuffle as one stream of batches (``EpochBatches``; iterate it
    once). Evaluation: in order, all items."""
    batching: dict = (
        {"batch_sampler": EpochBatches(len(dataset), batch_size, seed)}
        if train
        else {"batch_size": batch_size, "shuffle": False}
    )
    return DataLoader(
        dataset,
        **batching,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        collate_fn=collate_batch,
        # Its own generator: starting an iterator draws a seed, which must not come from the global RNG
        # (dropout's), or a resumed run that starts its stream mid-training would diverge.
        generator=torch.Generator().manual_seed(seed),
    )
