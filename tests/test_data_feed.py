"""The device feed (``data.feed=device``) run on CPU tensors: the worker path's windows, images within
interpolation tolerance, masks on their lesions, the same batches for the same seed."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from btxrd.data.annotations import rasterise
from btxrd.data.cache import cache_images
from btxrd.data.dataset import BTXRDImages, CropSettings
from btxrd.data.feed import DeviceFeed, feed_kind
from btxrd.data.loaders import make_loader
from btxrd.data.reader import load_dataset

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def annotated(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> BTXRDImages:
    table = load_dataset(synth_root)
    cache = cache_images(table, 74, tmp_path_factory.mktemp("cache"), source_size=None)
    return BTXRDImages(
        table, cache, 64, train=True, crop=CropSettings(0.7, 1.0, True), lesion_crops=True, with_masks=True, seed=5
    )


def _both(dataset: BTXRDImages, epochs: int = 2) -> tuple[list, list]:
    """The first ``epochs`` epochs of batches from the worker path and from the device feed."""
    per_epoch = len(dataset) // 16
    workers = make_loader(dataset, 16, train=True, workers=0, device=CPU, seed=5)
    return (
        list(itertools.islice(iter(source), epochs * per_epoch))
        for source in (workers, DeviceFeed(dataset, 16, CPU, seed=5))
    )


def test_the_device_feed_crops_the_worker_paths_windows(annotated: BTXRDImages) -> None:
    from_workers, on_device = _both(annotated)
    differences = []
    for a, b in zip(from_workers, on_device, strict=True):
        assert torch.equal(a.index, b.index) and torch.equal(a.labels, b.labels)
        assert b.images.dtype == torch.uint8 and b.images.shape == a.images.shape
        differences.append((a.images.float() - b.images.float()).abs().mean(dim=(1, 2, 3)))
    per_image = torch.cat(differences)
    # bilinear without antialiasing against antialiased, at scales 0.8-1.15: grey levels apart, per image;
    # another window or a missed flip would be tens of levels apart
    print(f"mean |worker - device| per image: median {per_image.median():.2f}, max {per_image.max():.2f} levels")
    assert per_image.median() < 2.0 and per_image.max() < 6.0


def _true_mask(dataset: BTXRDImages, epoch: int, index: int) -> torch.Tensor:
    """The lesion shapes rasterised straight into the training input (the window's geometry, no resampling)."""
    size = dataset.image_size
    left, top, side, flip = dataset.window(epoch, index)
    row = dataset.cache_rows[index]
    scale, offset, factor = dataset.cache.scale[row], dataset.cache.offset[row], size / side
    mask = rasterise(
        dataset.boxes[index],
        dataset.polygons[index],
        (size, size),
        tuple(scale * factor),
        ((offset[0] - left) * factor, (offset[1] - top) * factor),
    )
    return torch.from_numpy(np.ascontiguousarray(mask[:, ::-1] if flip else mask)).bool()


def test_the_device_feeds_masks_lie_on_their_lesions(annotated: BTXRDImages) -> None:
    from_workers, on_device = _both(annotated, epochs=1)
    overlap: dict[str, list[float]] = {"workers": [], "device": []}
    for a, b in zip(from_workers, on_device, strict=True):
        assert torch.equal(a.has_mask, b.has_mask)
        for k in np.flatnonzero(a.has_mask.numpy()):
            truth = _true_mask(annotated, 0, int(a.index[k]))
            for name, batch in (("workers", a), ("device", b)):
                mask = batch.masks[k, 0].bool()
                overlap[name].append(float((mask & truth).sum() / (mask | truth).sum()))
    median = {name: float(np.median(values)) for name, values in overlap.items()}
    print(f"median IoU with the lesion drawn straight into the input: {median}")
    # grid_sample's nearest samples pixel centres, as the image's bilinear does; the worker path's nearest
    # resize does not (half a pixel off): the device feed's masks lie on their lesions at least as well
    assert len(overlap["device"]) > 20 and median["device"] > 0.85 and median["device"] >= median["workers"]
    assert min(overlap["device"]) > 0.6


def test_the_device_feed_is_seeded_and_resumable(annotated: BTXRDImages) -> None:
    first = DeviceFeed(annotated, 16, CPU, seed=5)
    second = DeviceFeed(annotated, 16, CPU, seed=5)
    a, b = (list(itertools.islice(iter(feed), 12)) for feed in (first, second))
    assert all(torch.equal(x.images, y.images) and torch.equal(x.masks, y.masks) for x, y in zip(a, b, strict=True))
    second.batch_sampler.start_epoch = 1  # a resumed run: epoch 1's batches, as the uninterrupted one drew them
    per_epoch = len(first)
    resumed = list(itertools.islice(iter(second), 12 - per_epoch))
    assert all(torch.equal(x.images, y.images) for x, y in zip(a[per_epoch:], resumed, strict=True))


def test_auto_is_the_device_feed_on_a_gpu_and_workers_on_the_cpu() -> None:
    assert feed_kind("auto", torch.device("cuda")) == "device" and feed_kind("auto", CPU) == "workers"
    assert feed_kind("device", CPU) == "device"


@pytest.mark.slow
@pytest.mark.parametrize("annotations", ["on", pytest.param("off", marks=pytest.mark.integration)])
def test_train_py_trains_through_the_device_feed(synth_root: Path, tmp_path: Path, annotations: str) -> None:
    from btxrd.jobs.train import train_job

    from .helpers import compose_config, runs, tiny

    train_job(
        compose_config(tiny(synth_root, tmp_path, "data.feed=device", "train.epochs=2", f"annotations={annotations}"))
    )
    [run] = runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.params["runtime.feed"] == "device"
    history = run.data.metrics
    assert np.isfinite(history["train_loss"]) and 0 <= history["test_macro_f1"] <= 1
    if annotations == "on":  # the attention loss, on the masks the feed cropped with the images
        assert history["train_cam_loss"] > 0
