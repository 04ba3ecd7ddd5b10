"""The data step of a job: read the dataset, split it, cache its pixels once, make the loaders.

Training and evaluate.py build their parts here, through the same loader factory, so a run's test
phase and a later re-scoring see exactly the same inputs.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch.utils.data import DataLoader

from btxrd.data.cache import ImageCache, cache_for
from btxrd.data.dataset import BTXRDImages, CropSettings
from btxrd.data.external import read_external
from btxrd.data.feed import DeviceFeed, feed_kind
from btxrd.data.limits import InputLimits
from btxrd.data.loaders import loader_workers, make_loader
from btxrd.data.reader import load_dataset
from btxrd.data.schema import CLASS_NAMES
from btxrd.data.splits import PARTS, make_split, write_split_csv
from btxrd.errors import DataError
from btxrd.runtime.environment import Runtime
from btxrd.settings import RunConfig
from btxrd.tasks import PartToScore, Task
from btxrd.tracking import RunRecorder

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """A training run's data: its parts' rows, the loaders to train and validate on, the test part."""

    rows: dict[str, pd.DataFrame]  # train / val / test rows (train and val as the task trains on them)
    unused: int  # images the split leaves out
    train_batches: DataLoader | DeviceFeed  # the training part's batches, each epoch
    feed: str  # where training batches are made: workers | device (data.feed)
    val: PartToScore
    test: PartToScore
    cache: ImageCache
    split_csv: Path


def log_datasets(recorder: RunRecorder, root: str, parts: dict[str, pd.DataFrame], split: str) -> None:
    """Each part as an MLflow dataset input: the dataset's name, a digest of the part's image files'
    contents (SHA-1s from the reader), its class counts; the part as the context."""
    for part, rows in parts.items():
        digest = hashlib.sha1("".join(sorted(rows["image_id"] + ":" + rows["sha1"])).encode()).hexdigest()[:12]
        counts = rows["label"].value_counts()
        profile = {"images": len(rows), **{name: int(counts.get(i, 0)) for i, name in enumerate(CLASS_NAMES)}}
        recorder.log_dataset(Path(root).name, digest, str(Path(root).resolve()), part, profile, {"split": split})


def part_to_score(
    settings: RunConfig, name: str, rows: pd.DataFrame, cache: ImageCache, runtime: Runtime, root: str, **external: Any
) -> PartToScore:
    """A part to score: its whole images, in order, batched by ``train.eval_batch_size``. ``external``:
    ``PartToScore``'s fields of an external table (its extra columns, annotations already read)."""
    dataset = BTXRDImages(rows, cache, settings.model.image_size, train=False)
    workers = loader_workers(settings.data.worker_count, runtime.device, runtime.threads)
    loader = make_loader(dataset, settings.train.eval_batch_size, train=False, workers=workers, device=runtime.device)
    return PartToScore(name, rows, loader, cache, root, **external)


def load_external_part(
    settings: RunConfig, table_path: str, runtime: Runtime, cache_dir: str | None = None
) -> PartToScore:
    """An external test set (``btxrd.data.external``) as a part to score, prepared as the run prepares its
    own test images (the same cache settings, input size and loader)."""
    rows, extra = read_external(table_path, InputLimits.of(settings.data))
    cache = cache_for(rows, settings.model.image_size, settings.data, cache_dir, workers=runtime.threads)
    return part_to_score(
        settings,
        "external",
        rows,
        cache,
        runtime,
        str(Path(table_path).expanduser().parent),
        extra_columns=extra,
        annotations_read=True,
    )


def load_run_data(settings: RunConfig, task: Task, runtime: Runtime, out_dir: Path) -> RunData:
    """Read, split (kept as ``split.csv`` in ``out_dir``), cache and load the data of a training settings."""
    table = load_dataset(
        settings.data.root,
        on_bad_image=settings.data.on_bad_image,
        read_annotations=task.reads_annotations,
        memo_dir=settings.data.cache_dir,
        duplicate_distance=settings.data.duplicate_distance,
        limits=InputLimits.of(settings.data),
    )
    parts = make_split(table, settings.split, required_classes=task.required_classes)
    unused = int((parts == "unused").sum())
    if unused:  # centres in neither list, or training images duplicated in the test centres
        log.warning(
            "split=%s leaves %d of %d images unused (see split.csv, part 'unused')",
            settings.split.name,
            unused,
            len(parts),
        )
    split_csv = write_split_csv(table, parts, out_dir / "split.csv")
    cache = cache_for(table, settings.model.image_size, settings.data, workers=runtime.threads)
    rows = {part: table[parts == part].reset_index(drop=True) for part in PARTS}
    rows["train"], rows["val"] = (task.training_rows(p, rows[p]) for p in ("train", "val"))
    crop = CropSettings(settings.data.crop_min_scale, settings.data.crop_max_scale, settings.data.hflip)
    train_set = BTXRDImages(
        rows["train"],
        cache,
        settings.model.image_size,
        train=True,
        crop=crop,
        seed=settings.seed,
        **task.training_dataset_options(),
    )
    feed = feed_kind(settings.data.feed, runtime.device)
    if feed == "device":
        train_batches: DataLoader | DeviceFeed = DeviceFeed(
            train_set, settings.model.batch_size, runtime.device, settings.seed
        )
    else:
        workers = loader_workers(settings.data.worker_count, runtime.device, runtime.threads)
        train_batches = make_loader(
            train_set, settings.model.batch_size, train=True, workers=workers, device=runtime.device, seed=settings.seed
        )
    val = part_to_score(settings, "val", rows["val"], cache, runtime, settings.data.root)
    test = part_to_score(settings, "test", rows["test"], cache, runtime, settings.data.root)
    return RunData(rows, unused, train_batches, feed, val, test, cache, split_csv)


def load_evaluation_part(
    settings: RunConfig,
    part: str,
    runtime: Runtime,
    data_root: str | None = None,
    cache_dir: str | None = None,
    expected_split: pd.DataFrame | None = None,
) -> PartToScore:
    """The part of a trained run to re-score: ``part`` of its own split, or all images of another dataset.

    ``data_root`` None: the run's dataset and split (``expected_split``, the run's logged split CSV,
    must match: a mismatch means the dataset changed). A path: external validation on that
    dataset (``part='all'`` unless another part is asked).
    """
    external = data_root is not None and Path(data_root).expanduser().resolve() != Path(settings.data.root).resolve()
    root = str(data_root) if data_root else settings.data.root
    table = load_dataset(
        root,
        on_bad_image=settings.data.on_bad_image,
        read_annotations=False,
        duplicate_distance=settings.data.duplicate_distance,
        limits=InputLimits.of(settings.data),
    )
    if part == "all" or (external and part == "test"):
        part, rows = "all", table.reset_index(drop=True)
    else:
        parts = make_split(table, settings.split)
        if expected_split is not None:
            same = (
                expected_split["image_id"].tolist() == table["image_id"].tolist()
                and (expected_split["part"].to_numpy() == parts.to_numpy()).all()
            )
            if not same:
                raise DataError(f"the dataset at {root} changed since training: its split differs from the run's")
        rows = table[parts == part].reset_index(drop=True)
    if len(rows) == 0:
        raise DataError(f"no image in part '{part}' of {root}")
    cache = cache_for(table, settings.model.image_size, settings.data, cache_dir, workers=runtime.threads)
    return part_to_score(settings, part, rows, cache, runtime, root)
