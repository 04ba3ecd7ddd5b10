"""Runs whose process is gone: found and closed, so nothing stays RUNNING for ever.

Every job's run and every sweep's parent run records the host, pid and start time of the process
that opened it. A run still RUNNING whose process is provably gone (same host, and that pid no
longer runs, or runs a newer process) was left behind by a SIGKILL, an out-of-memory kill, a lost
ssh session, a tracking server that was down when the job tried to close its run. The next sweep
on the store closes such runs KILLED, saying why; on demand:

    python -m btxrd.tracking close-stale [--tracking-uri URI] [--experiment NAME]
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from btxrd.redaction import redact_text
from btxrd.runtime.provenance import process_alive, process_start_time
from btxrd.tracking.mlflow_store import Tracker
from btxrd.tracking.reach import retry

log = logging.getLogger(__name__)

HOST, PID, STARTED = "btxrd.host", "btxrd.pid", "btxrd.started"

CLOSE_NOTE = "run_close_note.json"  # in a job's output folder while its run is open (CloseNote)


class CloseNote:
    """Why a job's run could not be closed, kept where ``close-stale`` finds it later.

    A job whose store is on a full disk, or whose server stays away, cannot write its run's error or
    status; once the job is gone, ``close-stale`` would only know that its process is gone. So while the
    run is open, a small file in the job's output folder (the run's ``output_dir`` tag) holds room for
    the reason: written, and flushed to disk, when the run opens, when there is room, and overwritten in
    place, with no new block to allocate, when the run cannot be closed. Removed once it is.
    """

    SIZE = 4096

    def __init__(self, folder: Path, run_id: str) -> None:
        self.path: Path | None = folder / CLOSE_NOTE
        self.run_id = run_id
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._write({"run_id": run_id, "open": True}, create=True)
        except OSError as exc:  # no room or no folder from the start: nothing can be kept, the run is still closed
            log.debug("no close note in %s: %s", folder, exc)
            self.path = None

    def record(self, status: str, reason: str) -> None:
        """The run should have ended ``status``; ``reason`` why it did not."""
        if self.path is None:
            return
        reason = redact_text(reason)
        while len(json.dumps({"run_id": self.run_id, "status": status, "reason": reason}).encode()) > self.SIZE:
            reason = reason[: len(reason) * 3 // 4]  # whole JSON, whatever the characters' width
        try:
            self._write({"run_id": self.run_id, "status": status, "reason": reason}, create=False)
        except OSError as exc:
            log.warning("could not keep why run %s stays open in %s: %s", self.run_id, self.path, exc)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _write(self, note: dict, create: bool) -> None:
        assert self.path is not None
        data = json.dumps(note).encode().ljust(self.SIZE)
        fd = os.open(self.path, os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if create else 0), 0o644)
        try:
            os.pwrite(fd, data, 0)
            os.fsync(fd)  # the blocks are allocated now, while there is room
        finally:
            os.close(fd)


def read_close_note(output_dir: str | None, run_id: str) -> str:
    """The reason a job kept in its close note for run ``run_id``, or "" (none, or the note of another run)."""
    if not output_dir:
        return ""
    try:
        note = json.loads((Path(output_dir) / CLOSE_NOTE).read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(note, dict) or note.get("run_id") != run_id or "reason" not in note:
        return ""
    return redact_text(f"the job ended {note.get('status', '?')} but could not close its run: {note['reason']}")


def owner_tags() -> dict[str, str]:
    """Who opened a run: this host, this process and when it started (pids are reused)."""
    return {HOST: socket.gethostname(), PID: str(os.getpid()), STARTED: f"{process_start_time():.2f}"}


def stale_runs(tracker: Tracker) -> list:
    """RUNNING runs of the experiment opened on this host by a process that is gone."""
    query = f"attributes.status = 'RUNNING' and tags.`{HOST}` = '{socket.gethostname()}'"
    found = retry(lambda: tracker.client.search_runs([tracker.experiment_id], query, max_results=10_000))
    return [
        run for run in found if not process_alive(int(run.data.tags[PID]), float(run.data.tags.get(STARTED, "nan")))
    ]


def close_stale(tracker: Tracker) -> list:
    """Close the stale runs KILLED with the reason; the runs closed."""
    closed = stale_runs(tracker)
    for run in closed:
        tags = run.data.tags
        reason = (
            f"its process (pid {tags[PID]} on {tags[HOST]}) is gone: killed, or its machine or tracking "
            "server went away; closed by the next sweep on this store or close-stale"
        )
        kept = read_close_note(tags.get("output_dir"), run.info.run_id)  # what the job itself knew
        tracker.set_tags(run.info.run_id, {"error": kept or tags.get("error", reason)})
        tracker.end_run(run.info.run_id, "KILLED")
        if kept:
            (Path(tags["output_dir"]) / CLOSE_NOTE).unlink(missing_ok=True)
    return closed
