"""Running a task function under Hydra: user errors end as one line with a non-zero exit."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

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


def run_hydra_main(main: Callable[[], Any]) -> Any:
    """Call a ``@hydra.main`` function (train.py, evaluate.py). A command line that does not compose
    (a value of the wrong type, a misspelt key, an unknown option, bad override syntax) is one line
    naming the override, exit code 2, like every other user error; Hydra itself prints a few lines
    and exits 1. Any other error is shown as Hydra shows it. ``HYDRA_FULL_ERROR=1`` keeps Hydra's
    full traces."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return main()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing: its errors are said here
    try:
        return main()
    except CompactHydraException as exc:
        print(f"error: {composition_error_line(exc)}", file=sys.stderr)
        return USER_ERROR_EXIT
    except Exception as exc:  # as Hydra shows it: the traceback from the task function down, exit code 1
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_name != "run_job":  # Hydra's frames above the task
            tb = tb.tb_next
        traceback.print_exception(exc.with_traceback(tb.tb_next if tb is not None else exc.__traceback__))
        print("\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", file=sys.stderr)
        return 1


def composition_error_line(exc: CompactHydraException) -> str:
    """Hydra's message for a command line that does not compose, on one line: what failed, the
    cause OmegaConf gives (the value and the type it should have), Hydra's hint, the options."""
    head, *hints = [line.strip() for line in str(exc).splitlines() if line.strip()]
    parts = [head.rstrip(".")]
    if isinstance(exc, OverrideParseException) and exc.override not in head:  # the parser names only a token
        parts[0] = f"{exc.override}: {parts[0]}"
    if isinstance(exc.__cause__, OmegaConfBaseException):
        parts[0] += f": {str(exc.__cause__).splitlines()[0]}"
    if isinstance(exc, MissingConfigException):  # its text goes on with the options and the search path
        hints = [f"available: {', '.join(exc.options)}"] if exc.options else []
    return ". ".join([*parts, *(hint.rstrip(".") for hint in hints)])
