"""Hydra callback: the files Hydra writes of a run's config hold no secret.

Hydra saves each job's composed config, its Hydra config and its overrides (``.hydra/*.yaml``) before
the job starts, and a sweep's whole config (``multirun.yaml``) before its first job; a secret that
reached the config other than in a URL override (a ``password`` key, a YAML file, an interpolated
variable; URL credentials are taken out of the command line before Hydra reads it, ``btxrd.entry``)
would be written there in plain text. This callback rewrites those files, as YAML, with the secrets
hidden as soon as they exist: a job's when it starts, in its own process; the sweep's from a thread of
the launcher that waits for the sweeper to write it (a Slurm job may start hours later).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from btxrd.files import write_atomically
from btxrd.redaction import redact_text, redact_value

HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def redact_yaml_file(path: Path) -> bool:
    """Hide the secrets in a YAML file, rewriting it whole (still YAML: ``password: '***'``; a file that
    does not parse is redacted as text); whether it held any."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    try:
        changed: list[str] = []
        hidden = yaml.safe_dump(redact_value(yaml.safe_load(text), "", changed), sort_keys=False)
    except yaml.YAMLError:
        hidden = redact_text(text)
        changed = [path.name] if hidden != text else []
    if changed:
        write_atomically(path, lambda tmp: tmp.write_text(hidden))
    return bool(changed)


def _redact_when_written(path: Path, seconds: float = 60.0) -> None:
    """``redact_yaml_file(path)`` once the file is there and has stopped growing (written whole)."""
    deadline, size = time.monotonic() + seconds, -1
    while time.monotonic() < deadline:
        time.sleep(0.2)
        current = path.stat().st_size if path.is_file() else -1
        if current > 0 and current == size:
            redact_yaml_file(path)
            return
        size = current


class HiddenSecrets(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_file = Path(config.hydra.sweep.dir) / "multirun.yaml"  # the sweeper writes it right after this
        threading.Thread(target=_redact_when_written, args=(sweep_file,), name="btxrd-redact", daemon=True).start()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra = HydraConfig.get()
        if hydra.output_subdir is not None:
            folder = Path(hydra.runtime.output_dir) / hydra.output_subdir
            for name in HYDRA_FILES:
                redact_yaml_file(folder / name)
        if hydra.mode == RunMode.MULTIRUN:  # in case the launcher's thread did not get to it
            redact_yaml_file(Path(hydra.sweep.dir) / "multirun.yaml")
