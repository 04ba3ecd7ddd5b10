"""Checkpoints: atomic writes, safe (weights_only) loads, one job per configuration, where to resume."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from btxrd.errors import ConfigError, DataError


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` via a temp file and rename: a kill never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never pickled code."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"refusing to load {path}: it is not a plain weights checkpoint ({first})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise DataError(f"cannot read checkpoint {path}: {exc}") from None


@dataclass
class ResumePoint:
    """The last checkpoint of an interrupted run of this configuration, and why not to continue from it."""

    state: dict[str, Any]
    not_resumed: str = ""  # empty: continue from it

    @property
    def run_id(self) -> str:
        return str(self.state.get("mlflow_run_id") or "")

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])


@contextmanager
def checkpoint_folder(folder: Path) -> Iterator[Path]:
    """The configuration's checkpoint folder, held under a lock: two jobs never train one configuration at once."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"another job is training this same configuration right now ({folder})") from None
    try:
        yield folder
    finally:
        lock.release()


def find_resume(folder: Path, resume: bool | None, version: str) -> ResumePoint | None:
    """The last checkpoint per ``train.resume`` (None: auto, True, False), or None.

    ``auto`` does not continue what other code wrote (same config, but perhaps other weight shapes
    or meanings): the point says why, and the job starts afresh.
    """
    last = folder / "last.pt"
    if resume is False:
        return None
    if not last.is_file():
        if resume is True:
            raise ConfigError(f"train.resume=true: no last checkpoint of this configuration at {last}")
        return None
    state = load_checkpoint(last)
    written_by = state.get("code_version", "unknown")
    if resume is None and written_by != version:
        return ResumePoint(state, f"its last checkpoint was written by code version {written_by}, this is {version}")
    return ResumePoint(state)
