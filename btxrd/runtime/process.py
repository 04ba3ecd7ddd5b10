"""Process set-up: stop signals (SIGTERM, Ctrl-C) and the watch on a sweep's launcher."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Stop signals. Python's default for SIGTERM (kill, `timeout`, a scheduler's cancel, a container
# stop) ends the process at once: no `finally`, no atexit, so its MLflow runs stayed RUNNING
# forever. Here SIGTERM raises `Terminated`, which unwinds like an exit: the job's run ends
# KILLED (its last checkpoint kept for resuming) and a sweep closes its parent run.
_stop_signals_received: list[str] = []


class Terminated(SystemExit):
    """Raised by SIGTERM; exits with status 143 (128 + 15), as the signal itself would."""


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is a stop from outside (Ctrl-C, SIGTERM) rather than a failure."""
    return isinstance(exc, (KeyboardInterrupt, Terminated))


def stop_signal() -> str | None:
    """The name of the last stop signal this process received (SIGINT or SIGTERM), if any."""
    return _stop_signals_received[-1] if _stop_signals_received else None


def _on_stop_signal(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    repeated = name in _stop_signals_received
    _stop_signals_received.append(name)
    if signum == signal.SIGINT:
        signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as usual
    if repeated:  # already unwinding (a scheduler may repeat SIGTERM): let the clean-up finish
        return
    os.write(2, f"btxrd: stopped by {name} (pid {os.getpid()})\n".encode())  # no buffered I/O in a handler
    raise Terminated(128 + signum)


def handle_stop_signals() -> dict[int, Any]:
    """From now on SIGTERM raises `Terminated`, and SIGTERM and SIGINT are recorded; the replaced handlers.

    Only in the main thread, and only where the handler is still Python's default: a launcher
    that handles signals itself (submitit requeues preempted Slurm jobs on them) keeps its own.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    return {
        signum: signal.signal(signum, _on_stop_signal)
        for signum, default in defaults.items()
        if signal.getsignal(signum) is default
    }


# A job launched by a sweep on this host learns its launcher (``pid:start time``) from this variable.
# If the launcher dies without stopping its jobs (SIGKILL, the OOM killer, a closed ssh session), a
# job would finish and then block for ever handing its result to a process that is gone: instead it
# stops itself (its run ends KILLED, its last checkpoint kept) and its process exits.
LAUNCHER_ENV = "BTXRD_LAUNCHER"
WATCH_SECONDS = 5.0
_launcher_gone = threading.Event()
_watching: list[str] = []


def launcher_gone() -> bool:
    return _launcher_gone.is_set()


def watch_launcher() -> None:
    """Start (once per process and launcher) a thread that SIGTERMs this process when the launcher is gone."""
    value = os.environ.get(LAUNCHER_ENV, "")
    if not value or value in _watching:
        return
    _watching.append(value)
    pid, started = value.split(":")

    def watch() -> None:
        from btxrd.runtime.provenance import process_alive

        while process_alive(int(pid), float(started)):
            time.sleep(WATCH_SECONDS)
        _launcher_gone.set()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


@contextmanager
def stop_signals_handled() -> Iterator[None]:
    """`handle_stop_signals` for the duration of the block."""
    replaced = handle_stop_signals()
    try:
        yield
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)
