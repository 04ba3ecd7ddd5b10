"""What computed a job, recorded in its run: the machine (CPU, cores, GPU, torch, CUDA, cuDNN, driver) as
tags, and the software as ``environment/requirements.txt`` with its digest (a tag the sweep report names)."""

from __future__ import annotations

from pathlib import Path

import torch

from btxrd.runtime.environment import machine_tags
from btxrd.runtime.software import requirements_text, software_tags
from btxrd.tracking import RunRecorder

ENVIRONMENT_FOLDER = "environment"  # among the run's artifacts


def record_machine(recorder: RunRecorder, device: torch.device, out_dir: Path, **tags: str) -> None:
    """Tag the run with its machine and software (and ``tags``), and log the package list."""
    recorder.set_tags({**machine_tags(device), **software_tags(device), **tags})
    requirements = out_dir / ENVIRONMENT_FOLDER / "requirements.txt"
    requirements.parent.mkdir(parents=True, exist_ok=True)
    requirements.write_text(requirements_text())
    recorder.artifact(requirements, ENVIRONMENT_FOLDER)
