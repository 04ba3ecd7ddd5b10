"""What both benchmark sections share: the product's own training step and loader, and how a
figure is summarised (median with its spread over interleaved rounds)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from btxrd.config import compose_run
from btxrd.data.cache import cache_for
from btxrd.data.dataset import BTXRDImages, CropSettings
from btxrd.data.feed import DeviceFeed
from btxrd.data.loaders import Batch, make_loader
from btxrd.data.reader import load_dataset
from btxrd.engine.fit import set_up_training
from btxrd.engine.loop import EpochStats, train_one_epoch
from btxrd.models import build_model
from btxrd.tasks import make_task


def spread(values: Sequence[float]) -> dict[str, Any]:
    """A figure measured in several rounds: its median, min, max and every round's value."""
    return {
        "median": float(np.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "rounds": [float(v) for v in values],
    }


def shown(figure: dict[str, Any], digits: int = 1) -> str:
    """``median (min-max)`` as the tables print it."""
    return f"{figure['median']:.{digits}f} ({figure['min']:.{digits}f}-{figure['max']:.{digits}f})"


def efficiency_finding(ratios: Sequence[float]) -> dict[str, Any]:
    """End-to-end / model-only of each round, judged against what is physically possible.

    Feeding real batches cannot make the same training steps faster than batches already in memory,
    so a ratio above 1 is noise, never a finding. ``loss``: every round below 1, the loader costs
    time; ``no measurable loss``: the rounds straddle 1 (the loader's cost is within the noise);
    ``implausible``: every round above 1, the measurement itself is wrong (e.g. the two halves did
    not run the same work) and the figure must not be reported.
    """
    figure = spread(ratios)
    if figure["max"] < 1:
        verdict = "loss"
    elif figure["min"] > 1:
        verdict = "implausible"
    else:
        verdict = "no measurable loss"
    return {**figure, "verdict": verdict}


def described_efficiency(finding: dict[str, Any]) -> str:
    """How a table states an efficiency: never a value above 1 as a result."""
    if finding["verdict"] == "loss":
        return shown(finding, 2)
    if finding["verdict"] == "no measurable loss":
        return f"~1, no loss measurable ({finding['min']:.2f}-{finding['max']:.2f})"
    return f"IMPLAUSIBLE {shown(finding, 2)}: end-to-end faster than model-only in every round"


def bench_table(data_root: Path) -> pd.DataFrame:
    """The benchmark dataset's table; its images are probed once, then remembered beside it (every
    round is a fresh process: without the memo each would decode all of them again)."""
    return load_dataset(data_root, read_annotations=False, memo_dir=data_root.parent / "memo")


def uint8_batches(batch: int, size: int, device: torch.device, n: int = 4) -> list[Batch]:
    """``n`` batches of random uint8 images (and labels) already on ``device``: the model-only input."""
    generator = torch.Generator().manual_seed(0)
    return [
        Batch(
            torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, generator=generator).to(device),
            torch.randint(0, 3, (batch,), generator=generator).to(device),
            torch.zeros(batch, 1, size, size, dtype=torch.uint8, device=device),
            torch.zeros(batch, dtype=torch.bool, device=device),
            torch.arange(batch, device=device),
        )
        for _ in range(n)
    ]


class Trainer:
    """A model set up as ``fit`` sets it up (optimiser, schedule, scaler, inputs; compiled with compile=True),
    from the composed config with ``overrides`` and ``train`` settings replaced."""

    def __init__(self, overrides: list[str], device: torch.device, labels: np.ndarray, **train: Any) -> None:
        run = compose_run(["model.pretrained=false", *overrides])
        self.settings = replace(run, train=replace(run.train, **train))
        self.model = build_model(self.settings.model)
        self.objective = make_task(self.settings).objective(self.model)
        self.training, self.stepper = set_up_training(
            self.model, self.objective, self.settings.train, device, labels, steps_per_epoch=10
        )
        self.epoch = 0

    def run_epoch(self, batches: Iterable[Batch]) -> EpochStats:
        generator = torch.Generator(self.stepper.inputs.device).manual_seed(self.epoch)
        stats = train_one_epoch(self.stepper, batches, self.objective, epoch=self.epoch, generator=generator)
        self.epoch += 1
        return stats

    def images_per_second(self, batches: Iterable[Batch]) -> float:
        stats = self.run_epoch(batches)
        return stats.images / stats.seconds


def training_dataset(
    table: pd.DataFrame, size: int, annotations: bool = False, cache_dir: Path | None = None
) -> BTXRDImages:
    """The product's training dataset (image cache, crops; lesion crops and masks with ``annotations``);
    the cache in ``cache_dir`` (default: ``data.cache_dir``), built there first if missing."""
    run = compose_run([f"model.image_size={size}"])
    cache = cache_for(table, size, run.data, cache_dir)
    crop = CropSettings(run.data.crop_min_scale, run.data.crop_max_scale, run.data.hflip)
    return BTXRDImages(table, cache, size, train=True, crop=crop, lesion_crops=annotations, with_masks=annotations)


def training_loader(
    table: pd.DataFrame,
    size: int,
    batch: int,
    device: torch.device,
    workers: int,
    annotations: bool = False,
    cache_dir: Path | None = None,
) -> DataLoader:
    """The product's training loader over ``training_dataset``."""
    dataset = training_dataset(table, size, annotations, cache_dir)
    return make_loader(dataset, batch, train=True, workers=workers, device=device, seed=0)


def training_feed(
    table: pd.DataFrame,
    size: int,
    batch: int,
    device: torch.device,
    annotations: bool = False,
    cache_dir: Path | None = None,
) -> DeviceFeed:
    """The product's device feed (``data.feed=device``) over ``training_dataset``."""
    return DeviceFeed(training_dataset(table, size, annotations, cache_dir), batch, device, seed=0)
