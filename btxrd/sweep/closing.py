"""The end of a sweep: every job accounted for (runs closed, jobs that never opened one, jobs Slurm ended
without a result), the parent run ended with its outcome, and what happened said on the terminal."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from btxrd.sweep.slurm import LostJob
from btxrd.tracking import Tracker, active_statuses


@dataclass
class SweepOutcome:
    """What became of a sweep's launched jobs."""

    n_jobs: int  # launched: with a run, or with a folder and no run
    n_runs: int  # child runs under the parent
    failed: list[tuple[str, str]] = field(default_factory=list)  # (overrides, error) of each job that did not finish
    running_on: int = 0  # jobs of a stopped sweep still running under their launcher (submitit's)


def wait_for_store(tracker: Tracker, parent_id: str) -> None:
    """A tracking server restarting: wait (``tracking.outage_patience_s``) until it answers, or exit 1
    saying the parent run stays RUNNING."""
    if tracker.answers():
        return
    patience = tracker.outage_patience_s
    print(
        f"sweep: the tracking server {tracker.shown_uri} does not answer; waiting up to {patience:g} s "
        "(tracking.outage_patience_s) to close the sweep's runs",
        file=sys.stderr,
    )
    if not tracker.wait_until_answering(patience):
        print(
            f"error: sweep: the tracking server {tracker.shown_uri} did not answer for {patience:g} s: the "
            f"parent run {parent_id} stays RUNNING until the next sweep on the store or `python -m "
            "btxrd.tracking close-stale` closes it",
            file=sys.stderr,
        )
        raise SystemExit(1)


def account_jobs(
    tracker: Tracker,
    parent_id: str,
    sweep_dir: str,
    stopped_by: str | None,
    lost: dict[str, LostJob],
    jobs_outlive_launcher: bool,
) -> SweepOutcome:
    """Close the children left open, and count as failed every launched job without a run: each has its
    folder ``<sweep dir>/<job number>``, and one without a child run failed before it could open one."""
    children = tracker.children(parent_id)
    failed, running_on = close_children(tracker, children, stopped_by, lost, jobs_outlive_launcher)
    launched = {p.name for p in Path(sweep_dir).glob("*") if p.is_dir() and p.name.isdigit()}
    logged = {run.data.tags.get("job_num") for run in children}
    unlogged = sorted((launched | set(lost)) - logged, key=int)
    for job in unlogged:
        no_run = f"no run of this job under the parent; see {sweep_dir}/{job}"
        failed.append((f"job {job}", lost[job].reason if job in lost else no_run))
    outcome = SweepOutcome(len(children) + len(unlogged), len(children), failed, running_on)
    tracker.set_tags(parent_id, {"n_jobs": outcome.n_jobs, "n_failed": len(failed)})
    if failed:  # the parent says which jobs did not finish, and why
        listed = "\n".join(f"[{overrides}] {_first_line(error)}" for overrides, error in failed)
        tracker.set_tags(parent_id, {"not_finished": listed[:5000]})
    return outcome


def close_children(
    tracker: Tracker, children: list, stopped_by: str | None, lost: dict[str, LostJob], jobs_outlive_launcher: bool
) -> tuple[list[tuple[str, str]], int]:
    """Close the children left open (their process is gone): KILLED when this sweep was stopped,
    else FAILED; a run whose Slurm job ended without a result as Slurm's state says, with its reason.
    The (overrides, error) of every child that did not finish, and how many still run."""
    failed, running_on = [], 0
    for run in children:
        status, error = run.info.status, run.data.tags.get("error", run.info.status)
        job = lost.get(run.data.tags.get("job_num", ""))
        if job is not None and status != "FINISHED":
            error = job.reason if status in active_statuses() else f"{job.reason}; {error}"
            tracker.set_tags(run.info.run_id, {"error": error})
            if status in active_statuses():
                status = job.run_status
                tracker.end_run(run.info.run_id, status)
        if status in active_statuses() and stopped_by and jobs_outlive_launcher:
            running_on += 1  # not this process's to close: the job ends it, whatever its outcome
            continue
        if status in active_statuses():
            status, error = (
                ("KILLED", f"the sweep was stopped by {stopped_by}")
                if stopped_by
                else ("FAILED", "the job ended without closing its run")
            )
            tracker.set_tags(run.info.run_id, {"error": error})
            tracker.end_run(run.info.run_id, status)
        if status != "FINISHED":
            failed.append((run.data.tags.get("overrides", ""), error))
    return failed, running_on


def end_parent(
    tracker: Tracker,
    parent_id: str,
    outcome: SweepOutcome,
    stopped_by: str | None,
    how_to_look: str,
    closing_error: str = "",
) -> None:
    """End the parent run (KILLED if the sweep was stopped; FAILED if any job did not finish or a step of
    the sweep's end failed, ``closing_error`` saying which; else FINISHED) and say so, with every job that
    did not finish."""
    failed = outcome.failed
    if stopped_by:
        tracker.set_tags(parent_id, {"error": f"stopped by {stopped_by}"})
        tracker.end_run(parent_id, "KILLED")
        running = outcome.running_on
        still = f" ({running} still running under the launcher: they close their own runs)" if running else ""
        print(
            f"sweep: stopped by {stopped_by}; {len(failed) + running} of {outcome.n_jobs} launched job(s) did not "
            f"finish{still}. The same command with sweep.skip_finished=true skips the finished jobs and "
            "resumes the interrupted ones from their last checkpoints.",
            file=sys.stderr,
        )
    else:
        if closing_error:
            tracker.set_tags(parent_id, {"error": closing_error})
        tracker.end_run(parent_id, "FAILED" if failed or closing_error or not outcome.n_runs else "FINISHED")
        if closing_error:
            finished = f"{outcome.n_jobs - len(failed)} of {outcome.n_jobs}" if failed else f"all {outcome.n_runs}"
            print(f"error: sweep: {finished} job(s) finished, but {closing_error}", file=sys.stderr)
        if failed:
            print(f"sweep: {len(failed)} of {outcome.n_jobs} job(s) failed:", file=sys.stderr)
        elif not closing_error:
            print(f"sweep: all {outcome.n_runs} job(s) finished; parent run {parent_id}", file=sys.stderr)
    print(f"See the runs side by side: {how_to_look}", file=sys.stderr)
    for overrides, error in failed:
        print(f"  [{overrides}] {_first_line(error)}", file=sys.stderr)


def end_without_jobs(tracker: Tracker, parent_id: str, stopped_by: str | None) -> None:
    """The launcher failed before its first job (a sweep value that does not compose), or was stopped."""
    status, stopped = ("KILLED", f" (stopped by {stopped_by})") if stopped_by else ("FAILED", "")
    tracker.set_tags(parent_id, {"error": f"no job was launched{stopped}"})
    tracker.end_run(parent_id, status)
    print(f"sweep: no job was launched; the parent run ended {status}", file=sys.stderr)


def _first_line(error: str) -> str:
    return error.splitlines()[0] if error else ""
