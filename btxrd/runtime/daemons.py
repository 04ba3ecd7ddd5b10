"""Long-running helper processes (database, tracking server, a local Slurm cluster): started in the
foreground in a session of their own, so that one call stops each with everything it forked."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from btxrd.cli import run_cli


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_daemon(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``command`` (which must stay in the foreground) with its output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )


def stop_daemon(process: subprocess.Popen[bytes] | None, timeout_s: float = 20.0) -> None:
    """SIGTERM to the process's group, SIGKILL after ``timeout_s``; returns once it has exited."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def serve_until_stopped(serve: Callable[[], int]) -> int:
    """A helper's foreground life: ``serve()`` runs until Ctrl-C or SIGTERM, either of which unwinds it
    (its clean-up runs) and exits 0; a user's error (BTXRDError) is one line and exit 2."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return run_cli(serve)
    except KeyboardInterrupt:
        return 0


def wait_while(alive: Callable[[], bool], poll_s: float = 1.0) -> None:
    while alive():
        time.sleep(poll_s)
