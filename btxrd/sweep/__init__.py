"""Hydra-side of sweeps: the parent-run callback and each job's context."""

from btxrd.sweep.callback import MLflowSweepCallback

__all__ = ["MLflowSweepCallback"]
