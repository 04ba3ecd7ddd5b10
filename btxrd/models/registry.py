"""Model registry: one decorator to register, one ``build_model`` door (after timm's registry).

An entry is a builder taking typed keyword arguments (its model config's keys) and returning a
network; like fairseq's registry, the entry carries its config schema (``btxrd.settings``) and
the task its networks serve. ``build_model`` passes the config's keys to the builder and refuses
a key the builder does not take, naming it (nothing is dropped silently). Classifiers carry
``cam_target_name``, the dotted name of the layer whose activations Grad-CAM uses (a name, not the
module itself, so the state_dict keeps timm's keys).
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

from torch import nn

from btxrd.errors import ConfigError
from btxrd.settings import ClassifierConfig, ModelConfig

ModelBuilder = Callable[..., nn.Module]
# Model config keys the job uses (input size, batch) rather than the network; passed on only to
# builders that take them.
_JOB_KEYS = ("name", "image_size", "batch_size")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: ModelBuilder
    task: str  # the task whose networks these are ("classify", "reconstruct")
    config: type[ModelConfig]  # the schema of this model's config (conf/model/<name>.yaml names it too)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, task: str, config: type[ModelConfig] = ClassifierConfig
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder`` under ``name``, for ``task``, configured by ``config``."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, task, config)
        return builder

    return decorator


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered names matching a wildcard ``pattern`` (and ``task``, if given), sorted."""
    _load_entries()
    return sorted(n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and task in (None, e.task))


def model_entry(name: str) -> ModelEntry:
    _load_entries()
    if name not in _REGISTRY:
        raise ConfigError(f"model.name={name!r} is not a registered model; registered: {', '.join(list_models())}")
    return _REGISTRY[name]


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> nn.Module:
    """Build the network named by the config's ``name``, its other keys as the builder's arguments."""
    values = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    entry = model_entry(str(values.get("name")))
    accepted = inspect.signature(entry.builder).parameters
    arguments = {k: v for k, v in values.items() if k not in _JOB_KEYS or k in accepted}
    unknown = sorted(set(arguments) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model={entry.name} has no setting {', '.join(f'model.{k}' for k in unknown)}; "
            f"it takes: {', '.join(f'model.{k}' for k in accepted)}"
        )
    missing = [k for k, p in accepted.items() if k not in arguments and p.default is inspect.Parameter.empty]
    if missing:
        raise ConfigError(f"model={entry.name} needs {', '.join(f'model.{k}' for k in missing)}")
    return entry.builder(**arguments)


def cam_target(model: nn.Module) -> nn.Module:
    """The Grad-CAM target layer of a registered classifier."""
    return model.get_submodule(model.cam_target_name)


def _load_entries() -> None:
    # Importing the entry modules runs their @register_model decorators.
    from btxrd.models import autoencoders, classifiers  # noqa: F401
