"""Running a task function under Hydra: user errors end as one line with a non-zero exit."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig

from btxrd.cli import USER_ERROR_EXIT
from btxrd.errors import BTXRDError
from btxrd.runtime.process import launcher_gone, stop_signals_handled, watch_launcher

T = TypeVar("T")


def hydra_task(task: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run ``task``; in a single run a ``BTXRDError`` prints one line and exits with code 2.

    In a multirun the error propagates, so Hydra marks the job failed and the
    other jobs go on (the sweep callback then names the failed jobs). SIGTERM stops the
    task as an exception, so its run is closed (KILLED) rather than left RUNNING.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        with stop_signals_handled():
            watch_launcher()
            return task(cfg)
    except BaseException as exc:
        if launcher_gone():  # the run is closed; nobody is left to hand the result to
            print("btxrd: the sweep's launcher is gone: this job stopped (its run ended KILLED)", file=sys.stderr)
            os._exit(143)
        if not isinstance(exc, BTXRDError):
            raise
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
