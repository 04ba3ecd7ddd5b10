"""Tasks: one module each (classify, reconstruct), found and registered automatically."""

from btxrd.tasks.base import (
    Calibration,
    PartToScore,
    Scores,
    Task,
    make_task,
    register_task,
    resample,
    task_names,
    task_type,
)

__all__ = [
    "Calibration",
    "PartToScore",
    "Scores",
    "Task",
    "make_task",
    "register_task",
    "resample",
    "task_names",
    "task_type",
]
