"""Hydra callback: one MLflow parent run per multirun, created before any worker starts.

Parallel workers opening a fresh SQLite database corrupt it (table creation
races), so the launching process creates the database, the experiment and the
parent run in ``on_multirun_start``. The parent id and tracking URI reach the jobs
as environment variables set by Hydra itself (``hydra.job.env_set``), added to the
master config's hydra overrides, which every launcher re-applies when it composes a
job's config in its worker: joblib processes, submitit's local processes and Slurm
nodes alike, with no reliance on inherited environments. The variable is
``BTXRD_PARENT_RUN_ID`` (not MLFLOW_RUN_ID, which would override it). Hydra
skips ``on_multirun_end`` when a job fails, so the parent is also closed from an
``atexit`` hook: FAILED if any child failed or never closed, else FINISHED. When the
launching process is stopped (SIGTERM: kill, a scheduler, a container stop; or Ctrl-C),
the hook still runs: the parent and the jobs' runs left open end KILLED, saying so. On Slurm
the sweep first waits for all of its jobs and closes the run of a job that Slurm ended without
a result (scancel, time limit, node failure) with Slurm's reason (``sweep/slurm.py``).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from btxrd.cli import USER_ERROR_EXIT
from btxrd.config import typed_settings
from btxrd.data.prepare import start_preparing
from btxrd.errors import ConfigError
from btxrd.jobs.context import is_submitit
from btxrd.redaction import has_secret, redact_text
from btxrd.runtime.process import LAUNCHER_ENV, handle_stop_signals, stop_signal
from btxrd.runtime.provenance import process_start_time
from btxrd.settings import DataConfig, EvalConfig
from btxrd.sweep.progress import SweepProgress, planned_jobs
from btxrd.sweep.slurm import LostJob, is_slurm, wait_for_slurm_jobs
from btxrd.tracking import (
    PARENT_RUN_ENV,
    TRACKING_URI_ENV,
    Tracker,
    active_statuses,
    error_text,
    is_server,
    source_tags,
    tracker_for,
)
from btxrd.tracking.stale import close_stale, owner_tags

log = logging.getLogger(__name__)


def _quoted(value: str) -> str:
    """A Hydra override value that parses back to ``value`` (backslashes are escaped only before a quote)."""
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped) + "'"


def check_launcher(launcher: DictConfig) -> None:
    """Launcher settings that cannot work, named before any job is launched."""
    n_jobs = launcher.get("n_jobs")
    if n_jobs is not None and int(n_jobs) == 0:
        raise ConfigError("hydra.launcher.n_jobs=0: give the jobs to run at once (1 or more; -1: one per core)")


def task_overrides(config: DictConfig) -> str:
    """The sweep's command-line overrides, as they are shown and stored: secrets hidden."""
    return redact_text(" ".join(config.hydra.overrides.task))


def describe_sweep(config: DictConfig, total: int | None) -> str:
    """The parent run's description (MLflow shows it on the run's page): what the sweep is and where to look."""
    swept = task_overrides(config)
    return (
        f"Sweep of {total if total else 'several'} jobs: `{swept}`.\n\n"
        "Each job is a child run (expand this run in the runs table). To compare them, add the columns "
        "Metrics > test_macro_f1, test_macro_f1_ci_low / _ci_high, test_auroc_macro, test_malignant_recall, "
        "test_cam_pointing (Columns button), or open the Chart view. The statistics (intervals, seeds "
        "aggregated, tested differences) are in this run's artifacts: report/sweep_report.md."
    )


def pass_to_jobs(config: DictConfig, env: dict[str, str]) -> None:
    """Set environment variables in every job of this multirun, wherever the launcher runs it."""
    overrides = [f"++hydra.job.env_set.{name}={_quoted(value)}" for name, value in env.items()]
    with read_write(config.hydra):
        config.hydra.overrides.hydra.extend(overrides)


def prepare_data(config: DictConfig) -> subprocess.Popen | None:
    """A local sweep's dataset probed and decoded into its image cache by a process of its own, started
    now (``btxrd.data.prepare``; its log: ``prepare_data.log`` in the sweep folder), stopped with this one.
    Not with sweep.prepare_data=false, nor for Slurm, whose jobs run on other nodes, nor with settings
    that every job will refuse anyway."""
    if not config.sweep.prepare_data or is_slurm(config.hydra.launcher):
        return None
    try:
        data = typed_settings(OmegaConf.to_container(config.data, resolve=True), DataConfig, "data.")
        image_size = int(config.model.image_size)
    except (ConfigError, ValueError, TypeError):  # each job says what is wrong, in its own run
        return None
    if not Path(data.root).expanduser().is_dir():
        return None
    try:
        process = start_preparing(data, image_size, Path(config.hydra.sweep.dir) / "prepare_data.log")
    except OSError:  # no process to spare, or no sweep folder: the jobs prepare it themselves
        return None
    atexit.register(lambda: process.poll() is None and process.terminate())  # a stopped sweep stops it too
    return process


class MLflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.evaluation: EvalConfig | None = None
        self.report_error = ""
        self.tracker: Tracker | None = None
        self.parent_id: str | None = None
        self.sweep_dir: str = ""
        self.jobs_outlive_launcher = False  # submitit's jobs do; joblib's workers are killed with the launcher
        self.slurm_folder = ""  # Slurm: submitit's folder of the jobs (with %j), to learn their outcomes
        self.register_as = ""  # sweep.register_best: the registered model's name
        self.progress: SweepProgress | None = None
        self.url = self.how_to_look = ""

    def __getstate__(self) -> dict[str, Any]:
        """Launchers pickle the callbacks to their workers: the progress thread stays in this process."""
        return {**self.__dict__, "progress": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Open the sweep's parent run before any job starts. A sweep that cannot have its parent run
        (store unreachable, or not creatable) or whose launcher settings cannot work stops here, with
        one line and exit code 2: Hydra would turn any other exception of a callback into a warning
        and run the sweep untracked."""
        try:
            self._start(config)
        except Exception as exc:  # anything: the sweep must not run without its parent
            message = redact_text(str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}")
            print(f"error: sweep: {message.splitlines()[0] if message else type(exc).__name__}", file=sys.stderr)
            raise SystemExit(USER_ERROR_EXIT) from None

    def _start(self, config: DictConfig) -> None:
        check_launcher(config.hydra.launcher)
        prepare_data(config)  # first: it overlaps with all that follows, and with the jobs' imports
        self.tracker = tracker_for(config.tracking, config.paths.root)
        if self.tracker is None:
            return
        try:  # how the report's intervals are made (a bad value fails every job anyway, with its own error)
            self.evaluation = typed_settings(OmegaConf.to_container(config.eval, resolve=True), EvalConfig, "eval.")
        except ConfigError as exc:
            self.evaluation, self.report_error = None, str(exc)
        closed = close_stale(self.tracker)
        if closed:
            print(
                f"closed {len(closed)} run(s) left RUNNING by processes that are gone (KILLED): "
                + ", ".join(run.info.run_name or run.info.run_id for run in closed),
                file=sys.stderr,
            )
        uri, shown = self.tracker.uri, self.tracker.shown_uri
        sweep_dir = self.sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        total = planned_jobs(config)
        self.url = self.tracker.runs_url(config.tracking.ui_url, sweep_dir)
        port = urlparse(config.tracking.ui_url).port or 5000
        self.how_to_look = (
            f"open {self.url}"
            if is_server(uri)
            else f"mlflow ui --backend-store-uri {shown} --host 127.0.0.1 --port {port}, then open {self.url}"
        )
        self.parent_id = self.tracker.start_run(
            f"sweep {Path(sweep_dir).parent.name} {Path(sweep_dir).name}",
            {
                "sweep_dir": sweep_dir,
                "sweep": "parent",
                "overrides": task_overrides(config),
                "mlflow.note.content": describe_sweep(config, total),
                **source_tags("train.py -m"),
                **owner_tags(),
            },
        )
        self.jobs_outlive_launcher = is_submitit(config.hydra.launcher)
        self.register_as = str(config.sweep.model_name) if config.sweep.register_best else ""
        if is_slurm(config.hydra.launcher):
            self.slurm_folder = str(config.hydra.launcher.submitit_folder)
        env = {PARENT_RUN_ENV: self.parent_id}
        if not has_secret(uri):  # a job whose own tracking.uri is unset uses this store; it never travels with a secret
            env[TRACKING_URI_ENV] = uri
        if not self.jobs_outlive_launcher:  # jobs on this host stop when their launcher is gone (runtime/process.py)
            env[LAUNCHER_ENV] = f"{os.getpid()}:{process_start_time():.2f}"
        pass_to_jobs(config, env)
        handle_stop_signals()  # SIGTERM unwinds this process (its atexit hooks run) instead of ending it
        atexit.register(self.finish)
        print(f"MLflow: parent run {self.parent_id} in {shown}; its runs: {self.url}", file=sys.stderr)
        self.progress = SweepProgress(self.tracker, self.parent_id, total).start()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """In the job's process: a job that failed before it could open its run (a bad setting, an
        unwritable folder) still leaves a FAILED child with its error under the parent."""
        if self.tracker is None or self.parent_id is None or job_return.status != JobStatus.FAILED:
            return
        job = str(config.hydra.job.num)
        if any(run.data.tags.get("job_num") == job for run in self.tracker.children(self.parent_id)):
            return
        overrides = task_overrides(config)
        run_id = self.tracker.start_run(
            f"job {job} | {overrides}",
            {
                "job_num": job,
                "sweep_dir": self.sweep_dir,
                "overrides": overrides,
                "error": error_text(job_return._return_value),
                **owner_tags(),
            },
            parent_id=self.parent_id,
        )
        self.tracker.end_run(run_id, "FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish()

    def finish(self) -> None:
        """Close the parent run once: FINISHED only if every child finished; KILLED if this process was stopped."""
        if self.tracker is None or self.parent_id is None:
            return
        tracker, parent_id = self.tracker, self.parent_id
        self.parent_id = None
        stopped_by = stop_signal()
        lost = {}
        if self.slurm_folder and not stopped_by:
            try:
                lost = wait_for_slurm_jobs(self.slurm_folder)
            except KeyboardInterrupt:  # Ctrl-C while waiting: the jobs go on on Slurm and close their own runs
                stopped_by = stop_signal() or "SIGINT"
        if self.progress is not None:
            self.progress.stop()
        if not tracker.answers():  # a server restarting: the parent is closed once it answers again
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
        children = tracker.children(parent_id)
        failed, running_on = self._close_children(children, stopped_by, lost)
        # Every launched job has its folder <sweep dir>/<job number>; one without a child run here
        # failed before it could open one (or logged elsewhere): the sweep must not look complete.
        launched = {p.name for p in Path(self.sweep_dir).glob("*") if p.is_dir() and p.name.isdigit()}
        logged = {run.data.tags.get("job_num") for run in children}
        unlogged = sorted((launched | set(lost)) - logged, key=int)
        for job in unlogged:
            no_run = f"no run of this job under the parent; see {self.sweep_dir}/{job}"
            why = lost[job].reason if job in lost else no_run
            failed.append((f"job {job}", why))
        n_jobs = len(children) + len(unlogged)
        tracker.set_tags(parent_id, {"n_jobs": n_jobs, "n_failed": len(failed)})
        if n_jobs == 0:  # the launcher failed before its first job (a sweep value that does not compose)
            status, stopped = ("KILLED", f" (stopped by {stopped_by})") if stopped_by else ("FAILED", "")
            tracker.set_tags(parent_id, {"error": f"no job was launched{stopped}"})
            tracker.end_run(parent_id, status)
            print(f"sweep: no job was launched; the parent run ended {status}", file=sys.stderr)
            return
        if failed:  # the parent says which jobs did not finish, and why
            tracker.set_tags(
                parent_id,
                {
                    "not_finished": "\n".join(
                        f"[{overrides}] {error.splitlines()[0] if error else ''}" for overrides, error in failed
                    )[:5000]
                },
            )
        try:
            if self.evaluation is None:
                raise ConfigError(self.report_error)
            from btxrd.report import write_report  # torch, scipy, matplotlib: not before the jobs start

            write_report(tracker, parent_id, self.sweep_dir, self.evaluation)
            print(f"sweep report: {self.sweep_dir}/sweep_report.md", file=sys.stderr)
        except Exception as exc:  # the report must never keep the parent run open
            print(redact_text(f"sweep report failed: {type(exc).__name__}: {exc}"), file=sys.stderr)
        if self.register_as and not stopped_by:
            self._register_best(tracker, parent_id)
        if stopped_by:
            tracker.set_tags(parent_id, {"error": f"stopped by {stopped_by}"})
            tracker.end_run(parent_id, "KILLED")
            still = f" ({running_on} still running under the launcher: they close their own runs)" if running_on else ""
            print(
                f"sweep: stopped by {stopped_by}; {len(failed) + running_on} of {n_jobs} launched job(s) did not "
                f"finish{still}. The same command with sweep.skip_finished=true skips the finished jobs and "
                "resumes the interrupted ones from their last checkpoints.",
                file=sys.stderr,
            )
        else:
            tracker.end_run(parent_id, "FAILED" if failed or not children else "FINISHED")
            if failed:
                print(f"sweep: {len(failed)} of {n_jobs} job(s) failed:", file=sys.stderr)
            else:
                print(f"sweep: all {len(children)} job(s) finished; parent run {parent_id}", file=sys.stderr)
        print(f"See the runs side by side: {self.how_to_look}", file=sys.stderr)
        for overrides, error in failed:
            print(f"  [{overrides}] {error.splitlines()[0] if error else ''}", file=sys.stderr)

    def _register_best(self, tracker: Tracker, parent_id: str) -> None:
        """sweep.register_best: the best run by validation into the Model Registry; a failure is said, not raised."""
        from btxrd.tracking.models import register_best

        try:
            registered = register_best(tracker, parent_id, self.register_as)
        except Exception as exc:  # registering must never keep the parent run open
            print(f"sweep: registering the best model failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return
        if registered is None:
            print("sweep: no finished run with a logged model to register", file=sys.stderr)
            return
        run_name, version = registered
        tracker.set_tags(parent_id, {"registered_model": f"models:/{self.register_as}/{version}"})
        print(
            f"sweep: registered {run_name} (best by validation) as models:/{self.register_as}/{version}",
            file=sys.stderr,
        )

    def _close_children(
        self, children: list, stopped_by: str | None, lost: dict[str, LostJob]
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
                self.tracker.set_tags(run.info.run_id, {"error": error})
                if status in active_statuses():
                    status = job.run_status
                    self.tracker.end_run(run.info.run_id, status)
            if status in active_statuses() and stopped_by and self.jobs_outlive_launcher:
                running_on += 1  # not this process's to close: the job ends it, whatever its outcome
                continue
            if status in active_statuses():
                status, error = (
                    ("KILLED", f"the sweep was stopped by {stopped_by}")
                    if stopped_by
                    else ("FAILED", "the job ended without closing its run")
                )
                self.tracker.set_tags(run.info.run_id, {"error": error})
                self.tracker.end_run(run.info.run_id, status)
            if status != "FINISHED":
                failed.append((run.data.tags.get("overrides", ""), error))
        return failed, running_on
