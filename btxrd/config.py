"""The Hydra side of the settings: resolvers, the schema in Hydra's ConfigStore, typed loading.

``btxrd.settings`` declares every key (types, ranges); this module registers those dataclasses
with Hydra (so composition refuses unknown keys and wrong types) and turns a composed config
into the typed, range-checked objects the library takes (``run_settings``, ``evaluate_settings``).
Importing it is cheap (no torch), so entry points can compose and print configs quickly.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from btxrd.errors import ConfigError
from btxrd.setting_fields import check
from btxrd.settings import MODEL_FAMILIES, SPLITS, EvaluateConfig, RunConfig

PROJECT_ROOT_ENV = "BTXRD_PROJECT_ROOT"
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def project_root() -> str:
    """The folder holding ``conf/``: $BTXRD_PROJECT_ROOT, else this checkout, else the working folder."""
    if os.environ.get(PROJECT_ROOT_ENV):
        return str(Path(os.environ[PROJECT_ROOT_ENV]).resolve())
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "conf" / "config.yaml").is_file():
        return str(checkout)
    return str(Path.cwd())


def register() -> None:
    """The ``btxrd_project_root`` resolver and the schema, once per process (Hydra reads both when composing).

    The YAML files name their schema in their defaults lists: conf/config.yaml ``run_schema``,
    conf/evaluate.yaml ``evaluate_schema``, each model ``/schema/model/<family>``, each split
    ``/schema/split/<name>``.
    """
    if not OmegaConf.has_resolver("btxrd_project_root"):
        OmegaConf.register_new_resolver("btxrd_project_root", project_root)
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    for family, schema in MODEL_FAMILIES.items():
        store.store(group="schema/model", name=family, node=schema)
    for name, schema in SPLITS.items():
        store.store(group="schema/split", name=name, node=schema)


register()


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain containers (safe for weights_only checkpoints and MLflow params)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def _typed(cfg: DictConfig | dict[str, Any], schema: type, source: str, model_schema: type | None = None) -> Any:
    """``cfg`` merged onto ``schema`` and built as its dataclass; range-checked. ConfigError names the key.

    Composed configs carry the schema of their model and split (named by the option's YAML); a
    stored config (a plain dict, from a checkpoint) gets the split's by its name and ``model_schema``.
    """
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        for group, typed in (("model", model_schema), ("split", None)):
            if group not in merged or OmegaConf.is_missing(merged, group):
                continue
            if OmegaConf.get_type(merged[group]) is dict:
                typed = typed or SPLITS.get(str(merged[group].get("name")))
                if typed is None:
                    raise ConfigError(f"{source}: {group}.name={merged[group].get('name')!r} is not known")
                merged[group] = OmegaConf.merge(OmegaConf.structured(typed), merged[group])
        settings = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        message = str(exc).splitlines()[0]
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{message}") from None
    check(settings)
    return settings


def typed_settings(values: dict[str, Any], schema: type, prefix: str) -> Any:
    """``values`` as the dataclass ``schema``, typed and range-checked; errors name ``prefix`` + key."""
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        raise ConfigError(f"{prefix}{key}: {str(exc).splitlines()[0]}") from None
    check(typed, prefix)
    return typed


def run_settings(cfg: DictConfig, source: str = "config") -> RunConfig:
    """A training job's settings, typed and range-checked (no file is read)."""
    return _typed(cfg, RunConfig, source)


def stored_run_settings(config: dict[str, Any], model_schema: type, source: str) -> RunConfig:
    """The settings a checkpoint was trained with (its stored, resolved config). Settings added since it
    was written take their default from conf/ (the default option of their group)."""
    return _typed(OmegaConf.merge(_group_defaults(), config), RunConfig, source, model_schema)


# Groups whose every key a stored config has, and that later versions may add keys to
_FILLED_GROUPS = ("paths", "data", "annotations", "train", "tracking", "eval")


def _group_defaults() -> DictConfig:
    """The default option of each group in ``_FILLED_GROUPS``, as conf/config.yaml's defaults list names it."""
    top = OmegaConf.load(Path(CONFIG_DIR) / "config.yaml")
    chosen = {
        group: option
        for entry in top.defaults
        if isinstance(entry, DictConfig)
        for group, option in entry.items_ex(resolve=False)  # entries may interpolate other choices
        if group in _FILLED_GROUPS
    }
    return OmegaConf.create(
        {group: OmegaConf.load(Path(CONFIG_DIR) / group / f"{option}.yaml") for group, option in chosen.items()}
    )


def compose_run(overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The settings ``python train.py OVERRIDES`` would run with, outside Hydra's app (scripts, notebooks)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return run_settings(compose("config", overrides=list(overrides)))


def evaluate_settings(cfg: DictConfig) -> EvaluateConfig:
    return _typed(cfg, EvaluateConfig, "config")


# Settings that change where or how fast a job runs, not what it computes.
_NOT_IDENTITY = {
    "paths": None,
    "tracking": None,
    "sweep": None,
    "data": {"cache_dir", "num_workers", "feed"},
    "train": {
        "device",
        "num_threads",
        "progress",
        "resume",
        "checkpoint_dir",
        "sync_every",
        "deterministic",
        "jobs_per_gpu",
    },
}


def config_hash(config: dict[str, Any]) -> str:
    """A stable id of what a run computes (data, model, split, annotations, training, seed)."""
    identity = {}
    for key, value in config.items():
        if key in _NOT_IDENTITY and _NOT_IDENTITY[key] is None:
            continue
        if isinstance(value, dict) and key in _NOT_IDENTITY:
            value = {k: v for k, v in value.items() if k not in _NOT_IDENTITY[key]}
        identity[key] = value
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
