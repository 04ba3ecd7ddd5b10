"""A job's MLflow run from open to close, for training and evaluation alike.

Order matters for trust: a job opens (or continues) its run before any data is read, so a job
that fails on bad data, a non-finite loss or any exception still leaves a FAILED run with its
error (``error`` tag and ``error.txt``), and one stopped from outside (SIGTERM, Ctrl-C) a KILLED
one; never a run left RUNNING by a job that ended, never a silently missing one.
"""

from __future__ import annotations

import getpass
import logging
import os
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from btxrd.runtime.process import interrupted, launcher_gone, stop_signal
from btxrd.tracking.mlflow_store import Tracker, active_statuses
from btxrd.tracking.stale import HOST, PID, STARTED, owner_tags

log = logging.getLogger(__name__)


class RunRecorder:
    """What a job writes to its run; every call does nothing when tracking is off."""

    def __init__(self, tracker: Tracker | None, run_id: str | None) -> None:
        self.tracker, self.run_id = tracker, run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.tracker is not None:
            self.tracker.log_params(self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(self.run_id, metrics, step=step)

    def artifact(self, path: Path, folder: str | None = None) -> None:
        if self.tracker is not None:
            self.tracker.log_artifact(self.run_id, path, folder)

    def log_model(self, checkpoint: Path, operating_points: list[str], step: int = 0) -> None:
        """The checkpoint as the run's MLflow model (classifiers: ``tracking/models.py``), with the
        names of the operating points it carries (columns of the model's output)."""
        if self.tracker is not None:
            from btxrd.tracking.models import log_classifier  # MLflow's model machinery: only when used

            log_classifier(self.tracker, self.run_id, checkpoint, operating_points, step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.tracker is not None:
            self.tracker.set_tags(self.run_id, tags)

    def log_dataset(self, name: str, digest: str, source: str, context: str, profile: Mapping[str, Any],
                    tags: Mapping[str, str] | None = None) -> None:  # fmt: skip
        if self.tracker is not None:
            self.tracker.log_dataset(self.run_id, name, digest, source, context, profile, tags)


def source_tags(entry_point: str) -> dict[str, str]:
    """What MLflow's Source and User columns show: the entry point that ran, on this machine, by whom."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = str(os.getuid())
    return {"mlflow.source.name": entry_point, "mlflow.source.type": "LOCAL", "mlflow.user": user}


def error_text(exc: BaseException, resumable: bool = False) -> str:
    """The run's ``error`` tag: the exception, or which signal stopped it (and whether it can go on)."""
    if not interrupted(exc):
        return f"{type(exc).__name__}: {exc}"
    stopped = ("stopped: the sweep's launcher is gone" if launcher_gone()
               else f"interrupted by {stop_signal() or 'SIGINT'}")  # fmt: skip
    return f"{stopped}; its last checkpoint is kept: the same command resumes it" if resumable else stopped


@contextmanager
def job_run(
    tracker: Tracker | None,
    name: str,
    tags: Mapping[str, str],
    *,
    output_dir: Path,
    parent_id: str | None = None,
    earlier_run_id: str | None = None,
    abandon_reason: str = "",
    resumable: bool = False,
) -> Iterator[RunRecorder]:
    """Open the job's run, yield its recorder, close it FINISHED, FAILED or KILLED.

    ``earlier_run_id``: the run of an interrupted job of the same configuration. It is continued
    (reopened, moved under ``parent_id``) unless ``abandon_reason`` says why not, in which case it
    is closed KILLED with that reason and a new run is opened. ``resumable``: a stopped job keeps
    its last checkpoint, and its error says the same command resumes it.
    """
    if tracker is None:
        yield RunRecorder(None, None)
        return
    run_id = None
    tags = {**tags, **owner_tags()}  # who runs it: a run whose process is gone can be closed (stale.py)
    if earlier_run_id and abandon_reason:
        _close_abandoned(tracker, earlier_run_id, abandon_reason)
    elif earlier_run_id:
        run_id = _continued(tracker, earlier_run_id, parent_id, tags)
    run_id = run_id or tracker.start_run(name, tags, parent_id=parent_id)
    recorder = RunRecorder(tracker, run_id)
    try:
        yield recorder
    except BaseException as exc:
        tracker.set_tags(run_id, {"error": error_text(exc, resumable)})
        error_file = output_dir / "error.txt"
        try:
            error_file.parent.mkdir(parents=True, exist_ok=True)
            error_file.write_text(traceback.format_exc())
            recorder.artifact(error_file)
        except OSError as write_error:  # the run must be closed even when its folder is not writable
            log.warning("could not keep the traceback in %s: %s", error_file, write_error)
        tracker.end_run(run_id, "KILLED" if interrupted(exc) else "FAILED")
        raise
    tracker.end_run(run_id, "FINISHED")


def _close_abandoned(tracker: Tracker, run_id: str, reason: str) -> None:
    """An interrupted run that will not be continued ends KILLED, saying why (not RUNNING forever)."""
    earlier = tracker.find_run(run_id)
    if earlier is not None and earlier.info.status in active_statuses():
        tracker.set_tags(run_id, {"error": f"interrupted; not resumed: {reason}"})
        tracker.end_run(run_id, "KILLED")


def _continued(tracker: Tracker, run_id: str, parent_id: str | None, tags: Mapping[str, str]) -> str | None:
    """The interrupted run a resumed job continues in: reopened, and moved under this sweep's parent
    (the sweep that finishes it counts it). None when it is gone or in another experiment."""
    earlier = tracker.find_run(run_id)
    if earlier is None or earlier.info.experiment_id != tracker.experiment_id:
        return None
    moved = {k: tags[k] for k in ("resumed_from_epoch", "output_dir", "job_num", "sweep_dir", HOST, PID, STARTED)
             if k in tags}  # fmt: skip
    if parent_id:
        moved["mlflow.parentRunId"] = parent_id
    tracker.reopen(run_id, moved)
    return run_id


def record_skip(tracker: Tracker, name: str, tags: Mapping[str, str], earlier: Any, parent_id: str | None) -> None:
    """A FINISHED child that points at the earlier run of the same configuration and carries its final metrics."""
    run_id = tracker.start_run(name, {**tags, "skipped": "true", "skipped_for": earlier.info.run_id},
                               parent_id=parent_id)  # fmt: skip
    tracker.log_metrics(run_id, earlier.data.metrics)
    tracker.end_run(run_id, "FINISHED")
    log.info("%s: skipped, finished earlier as run %s", name, earlier.info.run_id)
