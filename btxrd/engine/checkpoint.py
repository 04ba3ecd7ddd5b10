"""Checkpoints: atomic writes, safe (weights_only) loads."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from btxrd.errors import DataError


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
