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
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from btxrd.redaction import redact_text
from btxrd.runtime.process import interrupted, launcher_gone, stop_signal
from btxrd.tracking.mlflow_store import PROBE_INTERVAL_S, Tracker, active_statuses
from btxrd.tracking.reach import TrackingUnreachable
from btxrd.tracking.stale import HOST, PID, STARTED, CloseNote, owner_tags
from btxrd.tracking.system_metrics import system_metrics

log = logging.getLogger(__name__)
OUTAGE_TAG = "tracking_outage"  # a run that was cut off from its tracking server says so


class RunRecorder:
    """What a job writes to its run; every call does nothing when tracking is off.

    A tracking server that stops answering does not stop the job: its writes are kept, in order,
    and sent once the server answers again (asked at most every ``PROBE_INTERVAL_S``, so training
    goes on meanwhile); the run records how long it was cut off. At its end the job waits up to
    ``tracker.outage_patience_s`` for the server to take the rest and close the run.
    """

    def __init__(self, tracker: Tracker | None, run_id: str | None) -> None:
        self.tracker, self.run_id = tracker, run_id
        self.kept: list[Callable[[], None]] = []  # writes the server did not take yet, oldest first
        self.cut_off_at: float | None = None  # when the server stopped answering (None: it answers)
        self.cut_off_reason = ""
        self.next_probe = 0.0
        self.cut_offs, self.cut_off_seconds, self.sent_late = 0, 0.0, 0

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._write(lambda tracker, run_id, params=dict(params): tracker.log_params(run_id, params))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        measured = int(time.time() * 1000)  # a value sent late keeps the time it was measured
        self._write(lambda tracker, run_id, metrics=dict(metrics): tracker.log_metrics(run_id, metrics, step, measured))

    def artifact(self, path: Path, folder: str | None = None) -> None:
        self._write(lambda tracker, run_id: tracker.log_artifact(run_id, path, folder))

    def log_model(self, checkpoint: Path, operating_points: list[str], step: int = 0) -> None:
        """The checkpoint as the run's MLflow model (classifiers: ``tracking/models.py``), with the
        names of the operating points it carries (columns of the model's output)."""

        def log(tracker: Tracker, run_id: str) -> None:
            from btxrd.tracking.models import log_classifier  # MLflow's model machinery: only when used

            log_classifier(tracker, run_id, checkpoint, operating_points, step)

        self._write(log)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._write(lambda tracker, run_id, tags=dict(tags): tracker.set_tags(run_id, tags))

    def log_dataset(
        self,
        name: str,
        digest: str,
        source: str,
        context: str,
        profile: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self._write(lambda tracker, run_id: tracker.log_dataset(run_id, name, digest, source, context, profile, tags))

    def close(self, status: str, wait: bool = True) -> None:
        """End the run with ``status`` once every kept write is sent; a server that does not answer is
        waited for up to the tracker's ``outage_patience_s`` (``wait``), then ``TrackingUnreachable``."""
        if self.tracker is None or self.run_id is None:
            return
        self._write(lambda tracker, run_id: tracker.end_run(run_id, status))
        self.next_probe = 0.0  # ask the server now
        patience = self.tracker.outage_patience_s if wait else 0.0
        deadline = time.monotonic() + patience
        while not self._send_kept() and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self.next_probe, deadline) - time.monotonic()))
        if self.kept:
            raise TrackingUnreachable(
                f"{self.cut_off_reason}, for {time.monotonic() - (self.cut_off_at or 0):.0f} s, the last "
                f"{patience:g} s after the job ended (tracking.outage_patience_s): {len(self.kept)} write(s) "
                f"of run {self.run_id} were not sent; the run stays RUNNING until the next sweep on the store "
                "or `python -m btxrd.tracking close-stale` closes it"
            )

    def _write(self, write: Callable[[Tracker, str], None]) -> None:
        if self.tracker is None or self.run_id is None:
            return
        tracker, run_id = self.tracker, self.run_id
        self.kept.append(lambda: write(tracker, run_id))
        self._send_kept()

    def _send_kept(self) -> bool:
        """Send the kept writes, oldest first, while the server takes them. Cut off, the server is
        asked first, at most every ``PROBE_INTERVAL_S``. True when none is left."""
        assert self.tracker is not None
        if self.cut_off_at is not None:
            if time.monotonic() < self.next_probe:
                return False
            self.next_probe = time.monotonic() + PROBE_INTERVAL_S
            if not self.tracker.answers():
                return False
        try:
            while self.kept:
                self.kept[0]()
                self.kept.pop(0)
                if self.cut_off_at is not None:
                    self.sent_late += 1
                    if not self.kept:
                        self._reconnected()
        except TrackingUnreachable as exc:
            if self.cut_off_at is None:
                self.cut_off_at, self.cut_off_reason = time.monotonic(), str(exc)
                self.next_probe = self.cut_off_at + PROBE_INTERVAL_S
                log.warning("%s: the job goes on; its writes are kept and sent when it answers again", exc)
            return False
        except BaseException:
            self.kept.pop(0)  # a write the server refused (not one it missed) is not tried again
            raise
        return True

    def _reconnected(self) -> None:
        """Every kept write is sent: say so, and record on the run how long it was cut off."""
        assert self.cut_off_at is not None
        seconds = time.monotonic() - self.cut_off_at
        self.cut_off_at, self.cut_off_seconds, self.cut_offs = None, self.cut_off_seconds + seconds, self.cut_offs + 1
        log.warning(
            "the tracking server answers again after %.0f s: the kept writes are sent (%d in all)",
            seconds,
            self.sent_late,
        )
        outage = (
            f"cut off from the tracking server {self.cut_offs} time(s), {self.cut_off_seconds:.0f} s in all; "
            f"{self.sent_late} write(s) were kept and sent once it answered again"
        )
        tracker, run_id = self.tracker, self.run_id
        assert tracker is not None and run_id is not None
        self.kept.append(lambda: tracker.set_tags(run_id, {OUTAGE_TAG: outage}))


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
        return redact_text(f"{type(exc).__name__}: {exc}")
    stopped = (
        "stopped: the sweep's launcher is gone" if launcher_gone() else f"interrupted by {stop_signal() or 'SIGINT'}"
    )
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
    system_metrics_interval_s: float | None = None,
) -> Iterator[RunRecorder]:
    """Open the job's run, yield its recorder, close it FINISHED, FAILED or KILLED.

    ``earlier_run_id``: the run of an interrupted job of the same configuration. It is continued
    (reopened, moved under ``parent_id``) unless ``abandon_reason`` says why not, in which case it
    is closed KILLED with that reason and a new run is opened. ``resumable``: a stopped job keeps
    its last checkpoint, and its error says the same command resumes it. ``system_metrics_interval_s``:
    how often the machine's use is sampled into the run (``tracking/system_metrics.py``; None: never).
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
    tags = {"output_dir": str(output_dir), **tags}  # where the close note is (evaluation runs have no other tag)
    run_id = run_id or tracker.start_run(name, tags, parent_id=parent_id)
    recorder = RunRecorder(tracker, run_id)
    note = CloseNote(output_dir, run_id)
    try:
        with system_metrics(tracker, run_id, system_metrics_interval_s, resumed=run_id == earlier_run_id):
            yield recorder
    except BaseException as exc:
        error = error_text(exc, resumable)
        recorder.set_tags({"error": error})
        error_file = output_dir / "error.txt"
        try:
            error_file.parent.mkdir(parents=True, exist_ok=True)
            error_file.write_text(redact_text(traceback.format_exc()))
            recorder.artifact(error_file)
        except OSError as write_error:  # the run must be closed even when its folder is not writable
            log.warning("could not keep the traceback in %s: %s", error_file, write_error)
        status = "KILLED" if interrupted(exc) else "FAILED"
        try:  # a stopped job does not wait for the server: a scheduler's grace period is short
            recorder.close(status, wait=not interrupted(exc))
            note.remove()
        except TrackingUnreachable as lost:
            log.error("%s", lost)  # the job's own error is the one to raise
            note.record(status, f"{error}; then: {lost}")
        raise
    try:
        recorder.close("FINISHED")
    except TrackingUnreachable as lost:
        note.record("FINISHED", str(lost))
        raise
    note.remove()


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
    moved = {
        k: tags[k]
        for k in ("resumed_from_epoch", "output_dir", "job_num", "sweep_dir", HOST, PID, STARTED)
        if k in tags
    }
    if parent_id:
        moved["mlflow.parentRunId"] = parent_id
    tracker.reopen(run_id, moved)
    return run_id


def record_skip(tracker: Tracker, name: str, tags: Mapping[str, str], earlier: Any, parent_id: str | None) -> None:
    """A FINISHED child that points at the earlier run of the same configuration and carries its final metrics."""
    run_id = tracker.start_run(
        name, {**tags, "skipped": "true", "skipped_for": earlier.info.run_id}, parent_id=parent_id
    )
    tracker.log_metrics(run_id, earlier.data.metrics)
    tracker.end_run(run_id, "FINISHED")
    log.info("%s: skipped, finished earlier as run %s", name, earlier.info.run_id)
