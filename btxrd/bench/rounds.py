"""One round of a CPU benchmark figure, in a fresh process:  python -m btxrd.bench.rounds KIND 'JSON'.

Prints one JSON line. A fresh process per round: what one process learnt (allocator state, page
cache of its own heap, thread pools) does not carry into the next round, and glibc's tunables, read
only at start-up, can differ between the two arms of an A/B.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from btxrd.bench.common import Trainer, bench_table, training_feed, training_loader, uint8_batches
from btxrd.cam import grad_cam
from btxrd.config import compose_run
from btxrd.data.cache import cache_images, canvas_size
from btxrd.data.loaders import Batch, EpochBatches, collate_batch, loader_workers
from btxrd.models import cam_target


class NaiveImages(Dataset):
    """Decode + resize the full JPEG on every access, then a random crop: the usual torchvision way."""

    def __init__(self, table: pd.DataFrame, image_size: int, canvas_scale: float, seed: int = 0) -> None:
        self.paths, self.labels = table["path"].tolist(), table["label"].to_numpy()
        self.image_size, self.canvas_scale, self.seed = image_size, canvas_scale, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        rng = np.random.default_rng((self.seed, index))
        canvas = round(self.image_size * self.canvas_scale)
        with Image.open(self.paths[index]) as img:
            gray = img.convert("L").resize((canvas, canvas), Image.Resampling.BILINEAR)
        side = round(canvas * rng.uniform(0.7, 1.0))
        left, top = (int(rng.integers(0, canvas - side + 1)) for _ in range(2))
        crop = gray.crop((left, top, left + side, top + side)).resize((self.image_size,) * 2, Image.Resampling.BILINEAR)
        image = torch.from_numpy(np.asarray(crop).copy())[None]
        return image, int(self.labels[index]), torch.zeros(1, 1, 1, dtype=torch.uint8), False, index


def endless(loader: DataLoader) -> Iterator[Batch]:
    """Batches for ever: a training loader's own stream of epochs, any other loader re-iterated."""
    if isinstance(loader.batch_sampler, EpochBatches):
        return iter(loader)
    return itertools.chain.from_iterable(itertools.repeat(loader))


def throughput(params: dict[str, Any]) -> dict[str, float]:
    """The product's training step (``Trainer``) fed four ways: model-only (uint8 batches in memory),
    end-to-end (the real loader over the image cache), the device feed (``data.feed=device``, here on the
    CPU) and naive (decode + resize per access); then
    Grad-CAM's cost relative to a forward pass. Without ``data_root``, model-only alone.

    The feeds take turns step by step (each feed first in turn), and a feed's images/s is its batch
    over its median step time (fetching the batch included): a drift of the machine's speed reaches
    every feed alike, and a hiccup of a shared machine moves no median.
    """
    torch.manual_seed(0)
    size, batch, steps = params["size"], params["batch"], params["steps"]
    device = torch.device("cpu")
    table = bench_table(Path(params["data_root"])) if params.get("data_root") else None
    labels = table["label"].to_numpy() if table is not None else np.arange(30) % 3
    trainer = Trainer(params["overrides"], device, labels)
    memory = itertools.cycle(uint8_batches(batch, size, device))
    feeds: dict[str, Iterator[Batch]] = {"model_only": memory}
    if table is not None:
        workers = loader_workers(None, device, torch.get_num_threads())  # what a training run uses here
        feeds["end_to_end"] = endless(
            training_loader(table, size, batch, device, workers, cache_dir=Path(params["cache_dir"]))
        )
        feeds["device_feed"] = iter(training_feed(table, size, batch, device, cache_dir=Path(params["cache_dir"])))
        naive_images = NaiveImages(table, size, trainer.settings.data.canvas_scale)
        feeds["naive"] = endless(
            DataLoader(
                naive_images,
                batch_size=batch,
                shuffle=True,
                drop_last=True,
                num_workers=workers,
                collate_fn=collate_batch,
            )
        )
    names = list(feeds)
    for name in names:  # warm-up: first calls, allocations, the loaders' first items
        trainer.run_epoch(itertools.islice(feeds[name], 1))
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for step in range(steps):
        shift = (step + params["round"]) % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(trainer.run_epoch(itertools.islice(feeds[name], 1)).seconds)
    out = {f"{name}_ips": batch / float(np.median(times)) for name, times in seconds.items()}
    if params.get("gradcam"):
        out["gradcam_over_forward"] = gradcam_over_forward(trainer, next(memory))
    return out


def gradcam_over_forward(trainer: Trainer, batch: Batch, repeats: int = 3) -> float:
    """Seconds of Grad-CAM (forward + backward to the target layer) over seconds of a forward pass."""
    model = trainer.model.eval()
    x = trainer.stepper.inputs(batch.images)
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
        forward = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        grad_cam(model, x, cam_target(model))
    return (time.perf_counter() - start) / forward


def cache_build(params: dict[str, Any]) -> dict[str, float]:
    """A first cache build (decode to the source size, letterbox the canvas), on 1 thread and on every
    core; another input size from the same source; a naive full decode + resize per image."""
    table = bench_table(Path(params["data_root"]))
    cache_dir, size, data = Path(params["cache_dir"]), params["size"], compose_run([]).data
    canvas, source = canvas_size(size, data.canvas_scale), data.cache_source_size
    out: dict[str, float] = {}
    for workers in (1, os.cpu_count() or 1):
        shutil.rmtree(cache_dir, ignore_errors=True)
        start = time.perf_counter()
        cache_images(table, canvas, cache_dir, workers=workers, source_size=source)
        out[f"cache_build_ips_{workers}_threads"] = len(table) / (time.perf_counter() - start)
    start = time.perf_counter()
    cache_images(table, canvas_size(size + 32, data.canvas_scale), cache_dir, workers=1, source_size=source)
    out["cache_other_size_ips_1_thread"] = len(table) / (time.perf_counter() - start)
    start = time.perf_counter()
    for path in table["path"]:
        with Image.open(path) as img:
            img.convert("L").resize((canvas, canvas), Image.Resampling.BILINEAR)
    out["naive_decode_ips_1_thread"] = len(table) / (time.perf_counter() - start)
    shutil.rmtree(cache_dir, ignore_errors=True)
    return out


ROUNDS = {"throughput": throughput, "cache_build": cache_build}


def main(argv: list[str]) -> int:
    kind, params = argv
    print(json.dumps(ROUNDS[kind](json.loads(params))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
