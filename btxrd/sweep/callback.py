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
a result (scancel, time limit, node failure) with Slurm's reason (``sweep/slurm.py``). What is done
before the first job is in ``sweep/launch.py``, what is done at the end in ``sweep/closing.py``.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from btxrd.cli import USER_ERROR_EXIT
from btxrd.config import typed_settings
from btxrd.errors import ConfigError
from btxrd.jobs.context import is_submitit
from btxrd.redaction import has_secret, redact_text
from btxrd.runtime.process import LAUNCHER_ENV, handle_stop_signals, stop_signal
from btxrd.runtime.provenance import process_start_time
from btxrd.settings import EvalConfig, SweepConfig
from btxrd.sweep.closing import account_jobs, end_parent, end_without_jobs, wait_for_store
from btxrd.sweep.launch import (
    check_launcher,
    describe_sweep,
    pass_to_jobs,
    prepare_data,
    quiet_worker_replacement,
    task_overrides,
)
from btxrd.sweep.progress import SweepProgress, planned_jobs
from btxrd.sweep.slurm import is_slurm, wait_for_slurm_jobs
from btxrd.tracking import PARENT_RUN_ENV, TRACKING_URI_ENV, Tracker, error_text, is_server, source_tags, tracker_for
from btxrd.tracking.reach import first_line
from btxrd.tracking.stale import close_stale, owner_tags

log = logging.getLogger(__name__)


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
        self.register_alias = ""  # and the alias its new version takes (sweep.model_alias)
        self.registration_failed = False
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
            print(f"error: sweep: {_exception_line(exc)}", file=sys.stderr)
            raise SystemExit(USER_ERROR_EXIT) from None

    def _start(self, config: DictConfig) -> None:
        check_launcher(config.hydra.launcher)
        quiet_worker_replacement()
        sweep = typed_settings(OmegaConf.to_container(config.sweep, resolve=True), SweepConfig, "sweep.")
        if sweep.register_best and not (config.tracking.enabled and config.tracking.log_model):
            raise ConfigError(
                "sweep.register_best=true registers logged models: it needs tracking.enabled=true and "
                "tracking.log_model=true"
            )
        self.register_as = sweep.model_name if sweep.register_best else ""
        self.register_alias = sweep.model_alias or ""
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
        if self.registration_failed:  # what the sweep was asked to do is not done: exit code 1
            raise SystemExit(1)

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
        wait_for_store(tracker, parent_id)
        outcome = account_jobs(tracker, parent_id, self.sweep_dir, stopped_by, lost, self.jobs_outlive_launcher)
        if outcome.n_jobs == 0:
            end_without_jobs(tracker, parent_id, stopped_by)
            return
        self._write_report(tracker, parent_id)
        registration_error = ""
        if self.register_as and not stopped_by:
            registration_error = (
                f"sweep.register_best: nothing registered, since {len(outcome.failed)} job(s) did not finish "
                "(the best of the others may not be the sweep's best)"
                if outcome.failed
                else self._register_best(tracker, parent_id)
            )
        self.registration_failed = bool(registration_error)
        end_parent(tracker, parent_id, outcome, stopped_by, self.how_to_look, registration_error)

    def _write_report(self, tracker: Tracker, parent_id: str) -> None:
        """The sweep report, into the sweep folder and the parent run; a failure is said, never raised."""
        try:
            if self.evaluation is None:
                raise ConfigError(self.report_error)
            from btxrd.report.sweep import write_report  # torch, scipy, matplotlib: not before the jobs start

            write_report(tracker, parent_id, self.sweep_dir, self.evaluation)
            print(f"sweep report: {self.sweep_dir}/sweep_report.md", file=sys.stderr)
        except Exception as exc:  # the report must never keep the parent run open
            print(redact_text(f"sweep report failed: {type(exc).__name__}: {exc}"), file=sys.stderr)

    def _register_best(self, tracker: Tracker, parent_id: str) -> str:
        """sweep.register_best: the best run by validation into the Model Registry, with its model card and
        alias; what went wrong ("" if nothing), said when the parent run ends (never raised: it must end)."""
        from btxrd.tracking.models import point_alias, register_best

        try:
            registered = register_best(tracker, parent_id, self.register_as)
        except Exception as exc:
            return f"registering the best model failed: {_exception_line(exc)}"
        if registered is None:
            return "sweep.register_best: no finished run has a logged model to register"
        run_name, version = registered
        uri = f"models:/{self.register_as}/{version}"
        tracker.set_tags(parent_id, {"registered_model": uri})
        print(f"sweep: registered {run_name} (best by validation) as {uri}", file=sys.stderr)
        if not self.register_alias:
            return ""
        try:
            point_alias(tracker, self.register_as, self.register_alias, version)
        except Exception as exc:
            return f"{uri} is registered, but the alias {self.register_alias} was not moved: {_exception_line(exc)}"
        print(f"sweep: models:/{self.register_as}@{self.register_alias} now names version {version}", file=sys.stderr)
        return ""


def _exception_line(exc: Exception) -> str:
    """An exception as one line, secrets hidden (a ConfigError says it all; others also name their type)."""
    return first_line(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {first_line(exc)}"
