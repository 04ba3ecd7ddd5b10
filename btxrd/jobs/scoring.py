"""Scoring a trained model on one part: the one path a run's test phase and evaluate.py share."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from btxrd.settings import EvalConfig
from btxrd.tasks import Calibration, PartToScore, Task
from btxrd.tracking import RunRecorder


def score_part(
    task: Task,
    model: nn.Module,
    part: PartToScore,
    device: torch.device,
    out_dir: Path,
    title: str,
    evaluation: EvalConfig,
    calibration: Calibration,
    recorder: RunRecorder,
) -> dict[str, float]:
    """The task's metrics of ``model`` on ``part`` with their intervals (``calibration``: the temperature
    and thresholds the best checkpoint carries); its pictures and per-image table are logged to the run
    (Grad-CAM grids under ``gradcam/``). The caller logs the metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = task.score(model, part, device, out_dir, title, evaluation, calibration)
    for path in scores.artifacts:
        recorder.artifact(path, "gradcam" if path.parent.name == "gradcam" else None)
    return scores.metrics
