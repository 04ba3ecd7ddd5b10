"""Running a task function under Hydra: user errors end as one line with a non-zero exit."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from btxrd.cli import USER_ERROR_EXIT
from btxrd.errors import BTXRDError, ConfigError
from btxrd.redaction import (
    PASSWORD_ENV,
    PGPASSWORD_ENV,
    USERNAME_ENV,
    has_secret,
    move_credentials,
    redact_text,
    without_userinfo,
)
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
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)


def run_hydra_main(main: Callable[[], Any]) -> Any:
    """Call a ``@hydra.main`` function (train.py, evaluate.py). A command line that does not compose
    (a value of the wrong type, a misspelt key, an unknown option, bad override syntax) is one line
    naming the override, exit code 2, like every other user error; Hydra itself prints a few lines
    and exits 1. Any other error is shown as Hydra shows it. ``HYDRA_FULL_ERROR=1`` keeps Hydra's
    full traces."""
    try:
        credentials_out_of_command_line(sys.argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return main()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing: its errors are said here
    try:
        return main()
    except CompactHydraException as exc:
        print(f"error: {redact_text(composition_error_line(exc))}", file=sys.stderr)
        return USER_ERROR_EXIT
    except Exception as exc:  # as Hydra shows it: the traceback from the task function down, exit code 1
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_name != "run_job":  # Hydra's frames above the task
            tb = tb.tb_next
        shown = traceback.format_exception(exc.with_traceback(tb.tb_next if tb is not None else exc.__traceback__))
        print(redact_text("".join(shown)), end="", file=sys.stderr)
        print("\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", file=sys.stderr)
        return 1


# URL settings whose credentials never reach Hydra (its log lines, .hydra/*.yaml, multirun.yaml)
_URL_SETTINGS = ("tracking.uri", "tracking.ui_url")


def credentials_out_of_command_line(argv: list[str]) -> None:
    """Take the credentials out of URL overrides in ``argv`` (in place), before Hydra reads it.

    ``tracking.uri=http://user:pass@host``: the username and password go to the variables MLflow reads
    (MLFLOW_TRACKING_USERNAME / _PASSWORD; a postgresql:// password to PGPASSWORD), which every job of
    the sweep inherits, and the override keeps the bare URL. ``tracking.ui_url`` is only a link: its
    user-info is dropped. Anything else is left to the redaction of everything btxrd stores or shows.
    """
    for i, arg in enumerate(argv[1:], start=1):
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+~") not in _URL_SETTINGS:
            continue
        quote = value[0] if value[:1] in ("'", '"') and value.endswith(value[0]) and len(value) > 1 else ""
        bare = value[1:-1] if quote else value
        if has_secret(bare) and not _username(bare):  # 'http://bob:pa/ss@host': the '/' ends the host
            raise ConfigError(
                f"{key.lstrip('+~')}: the user-info of this URL cannot be read (not shown here): "
                "percent-encode a '/', '?' or '#' in the password (%2F, %3F, %23), or export "
                f"{USERNAME_ENV} / {PASSWORD_ENV} instead"
            )
        if key.lstrip("+~") == "tracking.uri":
            clean, env = move_credentials(bare)
            os.environ.update(env)
        else:
            clean, env = without_userinfo(bare), {}
        if clean == bare:
            continue
        argv[i] = f"{key}={quote}{clean}{quote}"
        if not env:
            print(
                f"note: {key.lstrip('+~')}: the credentials in the link are dropped (a browser asks for them)",
                file=sys.stderr,
            )
            continue
        where = f"{USERNAME_ENV} / {PASSWORD_ENV}" if USERNAME_ENV in env else PGPASSWORD_ENV
        print(
            f"note: {key.lstrip('+~')}: the credentials in the URL are passed in {where} and stored nowhere; "
            "export them yourself to keep them out of your shell history",
            file=sys.stderr,
        )


def _username(url: str) -> str | None:
    try:
        return urlsplit(url).username
    except ValueError:  # a port that is not a number
        return None


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
