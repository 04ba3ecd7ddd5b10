"""OmegaConf resolvers and config helpers shared by the entry points (the only Hydra-aware bits)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT_ENV = "BTXRD_PROJECT_ROOT"


def project_root() -> str:
    """The folder holding ``conf/``: $BTXRD_PROJECT_ROOT, else this checkout, else the working folder."""
    if os.environ.get(PROJECT_ROOT_ENV):
        return str(Path(os.environ[PROJECT_ROOT_ENV]).resolve())
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "conf" / "config.yaml").is_file():
        return str(checkout)
    return str(Path.cwd())


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("btxrd_project_root"):
        OmegaConf.register_new_resolver("btxrd_project_root", project_root)


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (safe for weights_only checkpoints and MLflow params)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

register_resolvers()


# Settings that change where or how fast a job runs, not what it computes.
_NOT_IDENTITY = {
    "paths": None,
    "tracking": None,
    "sweep": None,
    "data": {"cache_dir", "num_workers"},
    "train": {"device", "num_threads", "progress", "resume", "checkpoint_dir"},
}


def config_hash(config: dict[str, Any]) -> str:
    """A stable id of what a run computes (data, model, split, annotations, training, seed)."""
    import hashlib
    import json

    identity = {}
    for key, value in config.items():
        if key in _NOT_IDENTITY and _NOT_IDENTITY[key] is None:
            continue
        if isinstance(value, dict) and key in _NOT_IDENTITY:
            value = {k: v for k, v in value.items() if k not in _NOT_IDENTITY[key]}
        identity[key] = value
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
