"""Model registry: one decorator to register, one ``build_model`` door (after timm's registry).

An entry is a builder function taking the model config (a plain mapping) and
returning a network. Classifiers are timm models and carry ``cam_target_name``,
the dotted name of the layer whose activations Grad-CAM uses (a name, not the
module itself, so the state_dict keeps timm's keys).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from btxrd.errors import ConfigError

ModelBuilder = Callable[[Mapping[str, Any]], nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}
_TASKS: dict[str, str] = {}


def register_model(name: str, task: str = "classify") -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder`` under ``name`` for ``task`` ('classify' or 'reconstruct')."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        _TASKS[name] = task
        return builder

    return decorator


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered names matching a wildcard ``pattern`` (and ``task``, if given), sorted."""
    _load_entries()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern) and (task is None or _TASKS[n] == task))


def model_task(name: str) -> str:
    _load_entries()
    _check_name(name)
    return _TASKS[name]


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ConfigError(f"model.name={name!r} is not a registered model; registered: {', '.join(list_models())}")


def build_model(cfg: Mapping[str, Any]) -> nn.Module:
    """Build the network named by ``cfg['name']`` with the rest of ``cfg`` as its settings."""
    _load_entries()
    name = cfg.get("name")
    _check_name(name)
    return _REGISTRY[name](cfg)


def cam_target(model: nn.Module) -> nn.Module:
    """The Grad-CAM target layer of a registered classifier."""
    return model.get_submodule(model.cam_target_name)


def _load_entries() -> None:
    # Importing the entry modules runs their @register_model decorators.
    from btxrd.models import autoencoders, classifiers  # noqa: F401
