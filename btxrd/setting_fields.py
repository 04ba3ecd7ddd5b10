"""How a setting is declared and checked: ``setting()`` fields carry their range or choices (OmegaConf
cannot express them), ``check`` walks a settings object and names the first bad key, and the checks and
readers of the ``auto`` settings. Standard library only."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import field, fields, is_dataclass
from typing import Any

from btxrd.errors import ConfigError

MISSING = "???"  # OmegaConf's marker of a mandatory value (omegaconf.MISSING), without importing OmegaConf


def setting(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A field without a default (the value comes from conf/) and with the range it must lie in.

    ``check(value)`` returns what is wrong with a value (e.g. "must be auto or an integer >= 0"), or None.
    """
    return field(default=MISSING, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "check": check})


def _problem(value: Any, meta: dict[str, Any]) -> str | None:
    if value is None:  # Optional fields: None is checked by the type, not the range
        return None
    if meta.get("choices") is not None and value not in meta["choices"]:
        return "choose one of " + ", ".join(str(c) for c in meta["choices"])
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        bounds = (
            ("ge", ">=", value >= (meta["ge"] if meta.get("ge") is not None else -math.inf)),
            ("gt", ">", value > (meta["gt"] if meta.get("gt") is not None else -math.inf)),
            ("le", "<=", value <= (meta["le"] if meta.get("le") is not None else math.inf)),
            ("lt", "<", value < (meta["lt"] if meta.get("lt") is not None else math.inf)),
        )
        broken = [f"{sign} {meta[key]:g}" for key, sign, ok in bounds if not ok]
        if broken:
            return "must be " + " and ".join(broken)
    if meta.get("check") is not None:
        return meta["check"](value)
    return None


def check(settings: Any, prefix: str = "") -> None:
    """Check every field's range and choices, recursively; raise ConfigError naming the first bad key."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            check(value, f"{key}.")
            continue
        problem = _problem(value, dict(f.metadata))
        if problem:
            raise ConfigError(f"{key}={value!r}: {problem}")
    validate = getattr(settings, "validate", None)
    if validate is not None:  # relations between fields (e.g. split fractions summing to 1); names its keys
        problem = validate()
        if problem:
            raise ConfigError(problem)


def auto_or_int(minimum: int) -> Callable[[Any], str | None]:
    """For settings that are ``auto`` or a whole number (threads, loader workers)."""

    def test(value: Any) -> str | None:
        if str(value) == "auto":
            return None
        try:
            ok = int(str(value)) >= minimum
        except ValueError:
            ok = False
        return None if ok else f"must be auto or a whole number >= {minimum}"

    return test


def auto_or_bool(value: Any) -> str | None:
    return None if str(value).lower() in ("auto", "true", "false") else "must be auto, true or false"


def device_name(value: Any) -> str | None:
    text = str(value)
    if text in ("auto", "cpu", "cuda", "mps") or (text.startswith("cuda:") and text[5:].isdigit()):
        return None
    return "must be auto, cpu, cuda or cuda:N"


# The ``auto`` settings stay strings for Hydra (its structured configs have no int-or-string type); each is
# read through a property of its group (btxrd.settings) that resolves it once, here: None for auto (decided where the
# machine is known), else the value.
def auto_int(value: Any) -> int | None:
    return None if str(value) == "auto" else int(str(value))


def auto_bool(value: Any) -> bool | None:
    text = str(value).lower()
    return None if text == "auto" else text == "true"
