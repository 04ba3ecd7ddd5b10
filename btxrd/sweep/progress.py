"""A sweep's progress in the launching terminal: jobs done of all, failures, elapsed, a rough time left.

The launcher (joblib, submitit) reports nothing until every job has ended, so a thread of the
launching process reads the jobs' runs from the tracking store every few seconds and rewrites one
status line when something changed. Only on a terminal: a log file (CI) gets no extra lines.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from omegaconf import DictConfig

from btxrd.tracking import Tracker, active_statuses

POLL_SECONDS = 5.0


def planned_jobs(config: DictConfig) -> int | None:
    """How many jobs the sweep will launch: the grid of its swept overrides (``a=1,2 b=x,y``: 4), or
    the trials of a search (``hydra.sweeper.n_trials``); None when it cannot tell."""
    sweeper = config.hydra.sweeper
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    total = 1
    for override in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
        if override.is_sweep_override():
            if override.is_discrete_sweep():
                total *= len(list(override.sweep_string_iterator()))
            else:  # a range or an interval: only a search knows how many values it draws
                return None
    return total


def status_line(done: int, failed: int, running: int, total: int | None, elapsed: float) -> str:
    """e.g. 'sweep: 5/12 done (1 failed), 2 running, 6m40s elapsed, about 9m left'."""
    of = f"/{total}" if total else ""
    parts = [
        f"sweep: {done}{of} done" + (f" ({failed} failed)" if failed else ""),
        f"{running} running",
        f"{_duration(elapsed)} elapsed",
    ]
    if total and 0 < done < total:
        parts.append(f"about {_duration(elapsed / done * (total - done))} left")
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class SweepProgress:
    """Polls the children of ``parent_id`` and keeps one status line up to date on ``stream``."""

    def __init__(self, tracker: Tracker, parent_id: str, total: int | None, stream: TextIO = sys.stderr) -> None:
        self.tracker, self.parent_id, self.total, self.stream = tracker, parent_id, total, stream
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-progress", daemon=True)
        self._last = ""

    def start(self) -> SweepProgress:
        if self.stream.isatty():
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=POLL_SECONDS + 5)
            self.stream.write("\n")

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                line = self.line(self.tracker.children(self.parent_id))
            except Exception:  # a progress line must never disturb the sweep
                continue
            if line != self._last:
                self.stream.write("\r" + line.ljust(len(self._last)))
                self.stream.flush()
                self._last = line

    def line(self, children: list[Any]) -> str:
        statuses = [run.info.status for run in children]
        running = sum(status in active_statuses() for status in statuses)
        failed = sum(status in ("FAILED", "KILLED") for status in statuses)
        return status_line(len(statuses) - running, failed, running, self.total, time.monotonic() - self.started)
