"""Re-score a trained model: the run's own split part, or all images of another dataset.

The checkpoint carries its resolved training config, so the model, input size, canvas and
split are rebuilt exactly as in training, and the same scoring function as the run's test phase
gives the run's own test metrics back. Checkpoints load with weights_only=True only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from btxrd.config import evaluate_settings
from btxrd.engine import load_checkpoint, place_model
from btxrd.errors import ConfigError
from btxrd.jobs.context import job_context
from btxrd.jobs.machine import record_machine
from btxrd.jobs.parts import load_evaluation_part, load_external_part, log_datasets
from btxrd.jobs.scoring import score_part
from btxrd.runtime.environment import job_runtime, seed_everything
from btxrd.settings import EvaluateConfig
from btxrd.tasks import Calibration, make_task
from btxrd.tasks.inference import check_scoring_memory, restore_model
from btxrd.tracking import Tracker, job_run, source_tags, tracker_for
from btxrd.tracking.models import model_checkpoint


def evaluate_job(cfg: DictConfig) -> dict[str, float]:
    """Re-score ``run_id``'s best checkpoint (or ``checkpoint``); log a nested evaluation run."""
    settings = evaluate_settings(cfg)
    out_dir = job_context().output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = tracker_for(settings.tracking, settings.paths.root)
    checkpoint, expected_split, name, source_run = _checkpoint_source(settings, tracker, out_dir)
    tags = {
        "evaluation": "true",
        "checkpoint": str(checkpoint),
        "data_root": str(settings.data.root or ""),
        "external": str(settings.external or ""),
        **source_tags("evaluate.py"),
    }
    with job_run(
        tracker,
        f"eval {settings.part} | {name}",
        tags,
        output_dir=out_dir,
        parent_id=source_run,
        system_metrics_interval_s=settings.tracking.system_metrics_interval_s,
    ) as recorder:
        state = load_checkpoint(checkpoint)
        trained, model = restore_model(state, checkpoint)
        if settings.batch_size is not None:
            trained = dataclasses.replace(
                trained, train=dataclasses.replace(trained.train, eval_batch_size=settings.batch_size)
            )
        task = make_task(trained)
        threads = settings.thread_count
        with job_runtime(settings.device, threads, jobs_per_gpu=trained.train.jobs_per_gpu) as runtime:
            seed_everything(trained.seed, trained.train.strict_determinism, runtime.device)  # as the run scored
            record_machine(recorder, runtime.device, out_dir)
            check_scoring_memory(
                model, trained.model.image_size, trained.train.eval_batch_size, runtime.device, "batch_size"
            )
            if settings.external:
                part = load_external_part(trained, settings.external, runtime, settings.data.cache_dir)
            else:
                part = load_evaluation_part(
                    trained, settings.part, runtime, settings.data.root, settings.data.cache_dir, expected_split
                )
            place_model(model, runtime.device, trained.train.channels_last)
            log_datasets(recorder, part.root, {part.name: part.rows}, trained.split.name)
            title = f"{Path(checkpoint).name} on {part.name}"
            evaluation = settings.eval.applied_to(trained.eval)
            metrics = score_part(
                task, model, part, runtime.device, out_dir, title, evaluation, Calibration.of(state), recorder
            )
            recorder.log_params(
                {"part": part.name, "data_root": part.root, "n_images": len(part.rows), "checkpoint": str(checkpoint)}
            )
            recorder.log_metrics(metrics)
            (out_dir / f"metrics_{part.name}.json").write_text(json.dumps(metrics, indent=2))
            recorder.artifact(out_dir / f"metrics_{part.name}.json")
    print(f"evaluated {checkpoint} on {part.name} of {part.root} ({len(part.rows)} images):")
    for key, value in metrics.items():
        print(f"  {key:40s} {value:.4f}")
    print(f"outputs: {out_dir}" + (f"; MLflow run {recorder.run_id}" if recorder.run_id else ""))
    return metrics


def _checkpoint_source(
    settings: EvaluateConfig, tracker: Tracker | None, out_dir: Path
) -> tuple[Path, pd.DataFrame | None, str, str | None]:
    """(checkpoint file, the run's logged split or None, a name for the evaluation run, the run it is nested
    under or None). A model URI is scored like the run that logged it (its split and its place, when that
    run is in the store)."""
    if settings.checkpoint:
        checkpoint = Path(str(settings.checkpoint)).expanduser()
        return checkpoint, None, checkpoint.name, None
    source = "run_id=..." if settings.run_id else "model_uri=..."
    if tracker is None:
        raise ConfigError(f"{source} needs tracking.enabled=true (use checkpoint=PATH without tracking)")
    if settings.model_uri:
        checkpoint, run_id = model_checkpoint(tracker, settings.model_uri, out_dir / "model")
        trained = tracker.find_run(run_id) if run_id else None
        split = _logged_split(tracker, run_id, out_dir) if trained else None
        return checkpoint, split, settings.model_uri, run_id if trained else None
    trained = tracker.find_run(settings.run_id)
    if trained is None:
        raise ConfigError(f"run_id={settings.run_id}: no such run in {tracker.shown_uri}")
    if "checkpoints/best.pt" not in tracker.artifact_paths(settings.run_id, "checkpoints"):
        raise ConfigError(f"run_id={settings.run_id}: the run has no checkpoint artifact (checkpoints/best.pt)")
    checkpoint = tracker.download_artifact(settings.run_id, "checkpoints/best.pt", out_dir)
    return checkpoint, _logged_split(tracker, settings.run_id, out_dir), trained.info.run_name, settings.run_id


def _logged_split(tracker: Tracker, run_id: str, out_dir: Path) -> pd.DataFrame | None:
    if "split.csv" not in tracker.artifact_paths(run_id):
        return None
    return pd.read_csv(tracker.download_artifact(run_id, "split.csv", out_dir))
