"""Checkpoints: atomic writes, safe (weights_only) loads, one job per configuration, where to resume."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from btxrd.errors import ConfigError, DataError
from btxrd.files import write_atomically


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` via a temp file and rename: a kill never leaves a torn file, a full
    disk no temporary file (StorageError naming the path and the room left)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda tmp: torch.save(state, tmp))


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
    except Exception as exc:  # a torn or foreign file fails in many ways (EOFError, IndexError, RuntimeError...)
        raise DataError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def load_weights(model: torch.nn.Module, weights: Any, source: str) -> None:
    """``weights`` (a state dict) into ``model``; DataError naming ``source`` and what differs when they
    do not fit (a checkpoint of another architecture or class count than its config says)."""
    if not isinstance(weights, dict):
        raise DataError(f"{source}: holds no weights (a state dict) for the model")
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        detail = weights_mismatch(model, weights)
        raise DataError(f"{source}: its weights do not fit the model its config names ({detail})") from None


def weights_mismatch(model: torch.nn.Module, weights: dict[str, Any]) -> str:
    """How a state dict differs from ``model``'s: counts of missing, unexpected and reshaped entries, an example."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shape = {k: tuple(getattr(v, "shape", ())) for k, v in weights.items()}
    shaped = [k for k in expected if k in weights and shape[k] != tuple(expected[k].shape)]
    parts = [f"{len(missing)} missing", f"{len(unexpected)} unexpected", f"{len(shaped)} of another shape"]
    if shaped:
        first = shaped[0]
        parts.append(f"e.g. {first}: {shape[first]} in the file, {tuple(expected[first].shape)} in the model")
    elif missing:
        parts.append(f"e.g. {missing[0]} missing")
    return ", ".join(parts)


# What only resuming needs, and only from last.pt: the best checkpoint is for scoring and serving. AdamW keeps
# two moments per weight, so these are two thirds of a checkpoint.
RESUME_ONLY = ("optimizer", "scheduler", "rng_state", "cuda_rng_state")


def without_resume_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` less what only resuming reads (the best checkpoint keeps the weights, settings, history)."""
    return {key: value for key, value in state.items() if key not in RESUME_ONLY}


RUN_FILE = "run.json"  # beside the checkpoints: the MLflow run training this configuration


@dataclass
class ResumePoint:
    """The last checkpoint of an interrupted run of this configuration, and why not to continue from it."""

    state: dict[str, Any]
    not_resumed: str = ""  # empty: continue from it
    remembered_run: str = ""  # the run the folder's run.json names, for a checkpoint that cannot be read

    @property
    def run_id(self) -> str:
        return str(self.state.get("mlflow_run_id") or self.remembered_run)

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])


@contextmanager
def checkpoint_folder(folder: Path) -> Iterator[Path]:
    """The configuration's checkpoint folder, held under a lock: two jobs never train one configuration at once."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder / ".lock"))
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"another job is training this same configuration right now ({folder})") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"train.checkpoint_dir: cannot write checkpoints to {folder} ({reason})") from None
    try:
        yield folder
    finally:
        lock.release()


def remember_run(folder: Path, run_id: str | None) -> None:
    """Name the run training this configuration beside its checkpoints: if its last checkpoint ever
    cannot be read, the next job of the configuration still knows which run to close."""
    if run_id:
        (folder / RUN_FILE).write_text(json.dumps({"mlflow_run_id": run_id}))


def _remembered(folder: Path) -> str:
    try:
        return str(json.loads((folder / RUN_FILE).read_text()).get("mlflow_run_id") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def find_resume(folder: Path, resume: bool | None, version: str) -> ResumePoint | None:
    """Where this configuration's job goes on from, per ``train.resume`` (None: auto, True, False).

    None: nothing was interrupted. A point with ``not_resumed``: an interrupted run that this job
    will not continue (other code wrote its checkpoint, the checkpoint cannot be read, or
    train.resume=false): the job starts afresh and that run is closed with the reason.
    """
    last = folder / "last.pt"
    remembered = _remembered(folder)
    if not last.is_file():
        if resume is True:
            raise ConfigError(f"train.resume=true: no last checkpoint of this configuration at {last}")
        return None
    if resume is False:
        return ResumePoint({}, "train.resume=false", remembered)
    try:
        state = load_checkpoint(last)
    except DataError as exc:
        if resume is True:
            raise
        return ResumePoint({}, f"its last checkpoint cannot be read ({exc})", remembered)
    written_by = state.get("code_version", "unknown")
    if resume is None and written_by != version:
        return ResumePoint(state, f"its last checkpoint was written by code version {written_by}, this is {version}")
    return ResumePoint(state)
