"""What became of a sweep's Slurm jobs, seen from the launching process.

submitit's Hydra launcher collects the jobs' results in order and stops at the first job that
ended without one (cancelled with scancel, out of time for good, a failed node): its
``results()`` raises, the launcher returns, and the jobs after it are still queued or running.
Closing the sweep then would mark them failed while they run. So the sweep first waits for
every Slurm job of the sweep, through submitit's own job handles reloaded from the submitit
folder, and learns from Slurm's accounting why each job without a result ended.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
# Slurm states (sacct) of a job stopped from outside: its run ends KILLED; any other state without a
# result (FAILED, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL) ends it FAILED.
STOPPED_STATES = ("CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE")


@dataclass(frozen=True)
class LostJob:
    """A Slurm job that ended without handing its result back."""

    job_id: str  # Slurm's id (array tasks: ARRAY_TASK)
    state: str  # as sacct gives it, e.g. 'CANCELLED by 0'

    @property
    def run_status(self) -> str:
        return "KILLED" if self.state.startswith(STOPPED_STATES) else "FAILED"

    @property
    def reason(self) -> str:
        return f"Slurm job {self.job_id} ended {self.state} without a result"


def is_slurm(launcher) -> bool:
    return str(launcher.get("_target_", "")).endswith("submitit_launcher.SlurmLauncher")


def wait_for_slurm_jobs(submitit_folder: str, poll_s: float = 2.0) -> dict[str, LostJob]:
    """Wait until every Slurm job submitted from ``submitit_folder`` (a path with ``%j``) has ended;
    job number (``hydra.job.num``) -> the jobs that ended without a result."""
    import submitit

    pattern = Path(submitit_folder)
    jobs = [
        submitit.SlurmJob(folder=pattern, job_id=pickle.parent.name)
        for pickle in sorted(pattern.parent.glob("*/*_submitted.pkl"))
    ]
    waiting = [job for job in jobs if not job.done()]
    if waiting:
        log.info(
            "waiting for %d Slurm job(s) still queued or running: %s",
            len(waiting),
            " ".join(job.job_id for job in waiting),
        )
    while waiting:
        time.sleep(poll_s)
        waiting = [job for job in waiting if not job.done(force_check=True)]
    lost = {}
    for job in jobs:
        if not job.paths.result_pickle.exists():
            job_num = str(job.submission().args[2])  # the launcher's arguments: overrides, dir key, job number, ...
            lost[job_num] = LostJob(job.job_id, job.state)
    return lost
