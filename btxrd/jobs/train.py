"""One training job, from a composed config to a closed MLflow run, in named steps.

1. settings: every key typed and range-checked, the task's too; no file read yet;
2. identity: the config hash; with ``sweep.skip_finished`` an earlier FINISHED run is reused;
3. the configuration's checkpoint folder (locked) and where to resume from;
4. the run (opened, or continued after an interruption), then inside it: runtime, data, model,
   training, and the test part scored by the same function as evaluate.py.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig
from torch import nn

from btxrd.config import config_hash, run_settings, to_dict
from btxrd.data.schema import CLASS_NAMES
from btxrd.data.synth import is_synthetic
from btxrd.engine import fit, load_checkpoint, save_checkpoint
from btxrd.engine.checkpoint import ResumePoint, checkpoint_folder, find_resume, remember_run
from btxrd.engine.fit import FitResult
from btxrd.errors import ConfigError
from btxrd.jobs.context import JobContext, job_context
from btxrd.jobs.machine import record_machine
from btxrd.jobs.parts import RunData, load_run_data, log_datasets
from btxrd.jobs.scoring import score_part
from btxrd.models import build_model
from btxrd.redaction import redact_config
from btxrd.runtime.environment import Runtime, job_runtime, seed_everything
from btxrd.runtime.provenance import code_version, git_commit, process_start_time
from btxrd.settings import RunConfig
from btxrd.tasks import Task, make_task
from btxrd.tracking import RunRecorder, flatten, job_run, parent_from_env, record_skip, source_tags, tracker_for
from btxrd.tracking.model_card import SYNTHETIC_TAG

log = logging.getLogger(__name__)


def train_job(cfg: DictConfig) -> float:
    """Run one training job; returns the best validation value of the optimised metric (for sweepers)."""
    job_start = time.time()
    settings = run_settings(cfg)
    task = make_task(settings)
    job = job_context(task.run_name_part())
    tracker = tracker_for(settings.tracking, settings.paths.root)
    # What is stored and shown of the config (params, config.json, checkpoints, the config hash tag): secrets
    # hidden. A secret changes where a run reads or writes, never what it computes.
    stored_config, hidden = redact_config(to_dict(cfg))
    identity = config_hash(stored_config)
    commit = git_commit()
    tags = {**task.tags(), **_job_tags(settings, job, commit), "config_hash": identity, "monitor": task.monitor}
    if hidden:
        tags["redacted"] = f"secrets hidden (***) in {', '.join(hidden)}: they are stored nowhere"
        log.info("%s: %s", job.run_name, tags["redacted"])
    parent_id = parent_from_env()  # set by the sweep callback (hydra.job.env_set)
    if tracker is not None and settings.sweep.skip_finished:
        earlier = tracker.finished_run_with_tag("config_hash", identity)
        if earlier is not None:
            record_skip(tracker, job.run_name, tags, earlier, parent_id)
            return float(earlier.data.metrics.get(f"best_{task.optimized_metric}", math.nan))
    with checkpoint_folder(Path(settings.train.checkpoint_dir) / identity) as folder:
        version = code_version(commit=commit)
        resume = find_resume(folder, settings.train.resume_mode, version)
        if resume is not None and resume.not_resumed:
            log.warning(
                "%s: starting afresh, not resuming: %s (train.resume=true forces it)", job.run_name, resume.not_resumed
            )
        elif resume is not None:
            tags["resumed_from_epoch"] = str(resume.epoch)
        with job_run(
            tracker,
            job.run_name,
            tags,
            output_dir=job.output_dir,
            parent_id=parent_id,
            earlier_run_id=resume.run_id if resume else None,
            abandon_reason=resume.not_resumed if resume else "",
            resumable=True,
            system_metrics_interval_s=settings.tracking.system_metrics_interval_s,
        ) as recorder:
            remember_run(folder, recorder.run_id)
            continued = resume if resume is not None and not resume.not_resumed else None
            with job_runtime(
                settings.train.device,
                settings.train.thread_count,
                job.n_jobs,
                job.cpus_per_job,
                settings.train.jobs_per_gpu,
            ) as runtime:
                best = _train_in_run(
                    settings, task, job, recorder, runtime, stored_config, folder, continued, version, job_start
                )
        (folder / "last.pt").unlink(missing_ok=True)  # finished: nothing left to resume
        return best


def _job_tags(settings: RunConfig, job: JobContext, commit: str) -> dict[str, str]:
    return {
        "model": settings.model.name,
        "split": settings.split.name,
        "sweep_dir": job.sweep_dir,
        "job_num": str(job.job_num),
        "overrides": " ".join(job.overrides),
        "choices": json.dumps(job.overridden, sort_keys=True),  # the sweep report pairs jobs by these
        "seed": str(settings.seed),
        "trial_params": " ".join(f"{k}={v}" for k, v in job.trial_params.items()),
        "output_dir": str(job.output_dir),
        SYNTHETIC_TAG: str(is_synthetic(settings.data.root)).lower(),  # the model card warns
        "mlflow.source.git.commit": commit,
        **source_tags("train.py"),
    }


def _train_in_run(
    settings: RunConfig,
    task: Task,
    job: JobContext,
    recorder: RunRecorder,
    runtime: Runtime,
    stored_config: dict,
    folder: Path,
    resume: ResumePoint | None,
    version: str,
    job_start: float,
) -> float:
    """Inside the open run: runtime and params, data, model, training, then the best checkpoint calibrated
    and scored on the test part; the best validation value of the optimised metric."""
    # Wall-clock marks of the start-up phases, written to startup.json (`make bench` tables them)
    startup = {"process_start": process_start_time(), "job_start": job_start, "run_opened": time.time()}
    out_dir = job.output_dir
    _start_run(settings, recorder, runtime, stored_config, out_dir, version, fresh=resume is None)
    data = load_run_data(settings, task, runtime, out_dir)
    startup["data_ready"] = time.time()
    recorder.artifact(data.split_csv)
    model = build_model(settings.model)
    startup["model_built"] = time.time()
    if resume is None:  # a continued run has its parameters already
        log_datasets(recorder, settings.data.root, data.rows, settings.split.name)
        sizes = {**{f"data.n_{p}": len(r) for p, r in data.rows.items()}, "data.n_unused": data.unused}
        recorder.log_params(
            {**sizes, "data.cache_file": str(data.cache.path), "runtime.feed": data.feed, **task.describe_model(model)}
        )
    else:
        log.info("%s: resuming after epoch %d from %s", job.run_name, resume.epoch, folder)
    result = fit(
        model,
        data.train_batches,
        data.val.loader,
        task.objective(model),
        settings.train,
        monitor=task.monitor,
        seed=settings.seed,
        device=runtime.device,
        out_dir=folder,
        logger=recorder,
        resume=resume.state if resume else None,
        extra_state={
            "config": stored_config,
            "class_names": list(CLASS_NAMES),
            "code_version": version,
            "mlflow_run_id": recorder.run_id or "",
        },
    )
    pd.DataFrame(result.history).rename_axis("epoch").to_csv(out_dir / "history.csv")
    (out_dir / "startup.json").write_text(json.dumps({**startup, "first_step": result.first_step_at}, indent=2))
    test_metrics = _score_best(settings, task, job, recorder, runtime, model, data, result)
    optimized = task.optimized_metric
    summary = {
        **test_metrics,
        # job start (task function entered) to the first optimiser step: data, split, cache, model
        "startup_seconds": result.first_step_at - job_start,
        "process_startup_seconds": result.first_step_at - startup["process_start"],
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        f"best_{task.monitor}": result.best_score,
        f"best_{optimized}": max(row[optimized] for row in result.history),
    }
    recorder.log_metrics(summary, step=result.epochs_run)
    (out_dir / "metrics_test.json").write_text(json.dumps(summary, indent=2))
    log.info("%s: %s", job.run_name, ", ".join(f"{k} {summary[k]:.3f}" for k in task.headline))
    return float(summary[f"best_{optimized}"])


def _start_run(
    settings: RunConfig,
    recorder: RunRecorder,
    runtime: Runtime,
    stored_config: dict,
    out_dir: Path,
    version: str,
    fresh: bool,
) -> None:
    """The job's output folder, seeds and determinism, the machine's tags, the params (a fresh run's only)
    and config.json."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write the job's output folder {out_dir} ({exc.strerror or exc})") from None
    strict = seed_everything(settings.seed, settings.train.strict_determinism, runtime.device)
    record_machine(recorder, runtime.device, out_dir, code_version=version)
    if fresh:
        recorder.log_params(
            {
                **flatten(stored_config),
                "runtime.device": str(runtime.device),
                "runtime.threads": str(runtime.threads),
                "runtime.deterministic": str(strict).lower(),
            }
        )
    (out_dir / "config.json").write_text(json.dumps(stored_config, indent=2))
    recorder.artifact(out_dir / "config.json")


def _score_best(
    settings: RunConfig,
    task: Task,
    job: JobContext,
    recorder: RunRecorder,
    runtime: Runtime,
    model: nn.Module,
    data: RunData,
    result: FitResult,
) -> dict[str, float]:
    """The best checkpoint, calibrated and with the operating points chosen on the validation part, scores
    the test part (and is logged, as a checkpoint and a model); the test metrics."""
    out_dir = job.output_dir
    best = load_checkpoint(result.best_path)
    model.load_state_dict(best["model"])
    calibration = task.calibrate(model, data.val, runtime.device, settings.eval)
    calibration.into(best)
    save_checkpoint(best, result.best_path)
    validation = task.predictions(model, data.val, runtime.device, calibration)
    if validation is not None:  # a cross-validation sweep pools them (out-of-fold results)
        validation.to_csv(out_dir / "predictions_val.csv", index=False)
        recorder.artifact(out_dir / "predictions_val.csv")
    recorder.artifact(result.best_path, "checkpoints")
    if settings.tracking.log_last_checkpoint:
        recorder.artifact(result.last_path, "checkpoints")
    test_metrics = score_part(
        task, model, data.test, runtime.device, out_dir, job.run_name, settings.eval, calibration, recorder
    )
    if task.servable and settings.tracking.log_model:
        recorder.log_model(result.best_path, list(calibration.operating_points), step=result.epochs_run)
    return test_metrics
