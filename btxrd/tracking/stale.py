"""Runs whose process is gone: found and closed, so nothing stays RUNNING for ever.

Every job's run and every sweep's parent run records the host, pid and start time of the process
that opened it. A run still RUNNING whose process is provably gone (same host, and that pid no
longer runs, or runs a newer process) was left behind by a SIGKILL, an out-of-memory kill, a lost
ssh session, a tracking server that was down when the job tried to close its run. The next sweep
on the store closes such runs KILLED, saying why; on demand:

    python -m btxrd.tracking close-stale [--tracking-uri URI] [--experiment NAME]
"""

from __future__ import annotations

import os
import socket

from btxrd.runtime.provenance import process_alive, process_start_time
from btxrd.tracking.mlflow_store import Tracker, retry

HOST, PID, STARTED = "btxrd.host", "btxrd.pid", "btxrd.started"


def owner_tags() -> dict[str, str]:
    """Who opened a run: this host, this process and when it started (pids are reused)."""
    return {HOST: socket.gethostname(), PID: str(os.getpid()), STARTED: f"{process_start_time():.2f}"}


def stale_runs(tracker: Tracker) -> list:
    """RUNNING runs of the experiment opened on this host by a process that is gone."""
    query = f"attributes.status = 'RUNNING' and tags.`{HOST}` = '{socket.gethostname()}'"
    found = retry(lambda: tracker.client.search_runs([tracker.experiment_id], query, max_results=10_000))
    return [run for run in found
            if not process_alive(int(run.data.tags[PID]), float(run.data.tags.get(STARTED, "nan")))]  # fmt: skip


def close_stale(tracker: Tracker) -> list:
    """Close the stale runs KILLED with the reason; the runs closed."""
    closed = stale_runs(tracker)
    for run in closed:
        tags = run.data.tags
        reason = (f"its process (pid {tags[PID]} on {tags[HOST]}) is gone: killed, or its machine or tracking "
                  "server went away; closed by the next sweep on this store or close-stale")  # fmt: skip
        tracker.set_tags(run.info.run_id, {"error": tags.get("error", reason)})
        tracker.end_run(run.info.run_id, "KILLED")
    return closed



