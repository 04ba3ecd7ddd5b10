"""Hydra callback: the files Hydra writes of a run's config hold no secret.

Hydra saves each job's composed config, its Hydra config and its overrides (``.hydra/*.yaml``) before
the job starts, and a sweep's whole config (``multirun.yaml``) before its first job; a secret that
reached the config other than in a URL override (a ``password`` key, a YAML file, an interpolated
variable; URL credentials are taken out of the command line before Hydra reads it, ``btxrd.entry``)
would be written there in plain text. This callback rewrites those files, as YAML, with the secrets
hidden as soon as they exist: when the job starts, in the job's own process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from btxrd.files import write_atomically
from btxrd.redaction import redact_value

HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def redact_yaml_file(path: Path) -> bool:
    """Hide the secrets in a YAML file, rewriting it whole (still YAML: ``password: '***'``); whether it held any."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    changed: list[str] = []
    hidden = redact_value(document, "", changed)
    if changed:
        write_atomically(path, lambda tmp: tmp.write_text(yaml.safe_dump(hidden, sort_keys=False)))
    return bool(changed)


class HiddenSecrets(Callback):
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra = HydraConfig.get()
        if hydra.output_subdir is not None:
            folder = Path(hydra.runtime.output_dir) / hydra.output_subdir
            for name in HYDRA_FILES:
                redact_yaml_file(folder / name)
        if hydra.mode == RunMode.MULTIRUN:  # written by the sweeper before any job started
            redact_yaml_file(Path(hydra.sweep.dir) / "multirun.yaml")
