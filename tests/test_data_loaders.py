"""The loader factory: training batches as one stream of epochs, the same with or without workers."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from btxrd.data.cache import cache_images
from btxrd.data.dataset import BTXRDImages, CropSettings
from btxrd.data.loaders import EpochBatches, make_loader
from btxrd.data.reader import load_dataset


def test_epoch_batches_are_seeded_per_epoch_full_and_resumable() -> None:
    batches = EpochBatches(10, 4, seed=3)
    assert len(batches) == 2  # the last partial batch of each epoch is dropped
    first = list(itertools.islice(iter(batches), 6))
    assert [b[0][0] for b in first] == [0, 0, 1, 1, 2, 2]  # each key carries its epoch
    for epoch in range(3):
        indices = [i for b in first[2 * epoch : 2 * epoch + 2] for _, i in b]
        order = torch.randperm(10, generator=torch.Generator().manual_seed(3 * 100_003 + epoch)).tolist()
        assert indices == order[:8]
    batches.start_epoch = 2  # a resumed run draws what the uninterrupted one drew
    assert list(itertools.islice(iter(batches), 2)) == first[4:6]
    assert len(EpochBatches(3, 4, seed=0)) == 1  # fewer images than a batch: one (short) batch


@pytest.mark.slow
def test_workers_see_each_epoch_and_give_the_batches_of_the_training_process(synth_root: Path, tmp_path: Path) -> None:
    """Persistent workers hold their own copy of the dataset: the epoch must travel with each key,
    or every epoch after the first would repeat the first one's crops and flips."""
    table = load_dataset(synth_root)
    cache = cache_images(table, 74, tmp_path, source_size=None)
    dataset = BTXRDImages(table, cache, 64, train=True, crop=CropSettings(0.5, 1.0, True), seed=1)
    streams = [
        iter(make_loader(dataset, 16, train=True, workers=w, device=torch.device("cpu"), seed=1)) for w in (0, 2)
    ]
    per_epoch = len(table) // 16
    in_process, with_workers = ([next(s) for _ in range(2 * per_epoch)] for s in streams)
    for a, b in zip(in_process, with_workers, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.index, b.index)

    # the same image drawn in epochs 0 and 1 is cropped differently
    def drawn(batches) -> dict:
        return {int(i): img for batch in batches for i, img in zip(batch.index, batch.images, strict=True)}

    first, second = drawn(in_process[:per_epoch]), drawn(in_process[per_epoch:])
    common = sorted(set(first) & set(second))[:10]
    assert sum(not torch.equal(first[i], second[i]) for i in common) >= 8


def test_no_mask_is_shipped_when_none_is_asked_for(synth_root: Path, tmp_path: Path) -> None:
    table = load_dataset(synth_root, read_annotations=False)
    cache = cache_images(table, 74, tmp_path, source_size=None)
    batch = next(
        iter(
            make_loader(
                BTXRDImages(table, cache, 64, train=False), 8, train=False, workers=0, device=torch.device("cpu")
            )
        )
    )
    assert batch.images.shape == (8, 1, 64, 64) and batch.masks.shape == (8, 1, 0, 0) and not batch.has_mask.any()
