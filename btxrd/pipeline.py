"""One training job, from a composed config to a finished MLflow run.

Order matters for trust: the MLflow run is opened first, so a job that fails on
bad data or a bad setting still leaves a FAILED run with its error, never a
silently missing one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from btxrd.cam.explain import explain_rows
from btxrd.config import config_hash, to_dict
from btxrd.data.cache import cache_for
from btxrd.data.dataset import BTXRDImages, CropSettings
from btxrd.data.reader import load_dataset, with_annotations
from btxrd.data.schema import CLASS_NAMES
from btxrd.data.splits import make_split, write_split_csv
from btxrd.engine.checkpoint import load_checkpoint
from btxrd.engine.reconstruction import (
    ReconstructionObjective,
    reconstruct,
    save_reconstruction_grid,
    use_raw_inputs,
)
from btxrd.engine.training import ClassificationObjective, EpochShuffle, TrainSettings, fit
from btxrd.errors import ConfigError
from btxrd.evaluation import evaluate_checkpoint, score_classifier
from btxrd.metrics import plot_confusion_matrix
from btxrd.models import build_model, list_models, model_task
from btxrd.models.memory import autoencoder_params
from btxrd.runtime import interrupted, stop_signal
from btxrd.sweep.context import JobContext, job_context
from btxrd.tracking import Tracker, active_statuses, flatten, parent_from_env, tracker_for

log = logging.getLogger(__name__)


CODE_ROOT = Path(__file__).resolve().parents[1]  # the project's checkout (an editable install)


def git_commit(root: str | Path = CODE_ROOT) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_version(root: str | Path = CODE_ROOT, commit: str | None = None) -> str:
    """What a checkpoint was made by: the commit (``git_commit``'s, if already read) plus a hash of
    uncommitted changes to tracked files, or the installed package's version outside a git checkout."""
    commit = commit or git_commit(root)
    if commit == "unknown":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"btxrd {version('btxrd')}"
        except PackageNotFoundError:
            return "unknown"
    try:
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=root, capture_output=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return commit
    return f"{commit}+{hashlib.sha1(diff).hexdigest()[:10]}" if diff else commit


def process_start_time() -> float:
    """Wall-clock start of this process (Linux /proc; elsewhere the import time of this module)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT


_IMPORTED_AT = time.time()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def select_device(setting: str, job_num: int) -> torch.device:
    """``auto``: CUDA if present, jobs spread over GPUs by job number; else CPU."""
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", job_num % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ConfigError(f"train.device={setting!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={setting}: CUDA is not available on this machine")
    return device


def threads_per_job(setting: Any, n_jobs: int, cpus_per_job: int | None = None) -> int:
    """``auto``: the job's share of the cores, so n_jobs x threads never exceeds them
    (or the CPUs the launcher gave the job, when it says)."""
    if setting == "auto":
        if cpus_per_job:
            return max(1, min(cpus_per_job, available_cores()))
        return max(1, available_cores() // max(1, n_jobs))
    return max(1, int(setting))


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def train_settings(cfg: DictConfig, config_dict: dict[str, Any]) -> TrainSettings:
    t, d = cfg.train, cfg.data
    progress = None if t.progress == "auto" else bool(t.progress)
    monitors = ("auto", "val_macro_f1", "val_accuracy", "val_balanced_accuracy", "val_auroc_macro", "val_psnr",
                "val_ssim")  # fmt: skip
    if t.monitor not in monitors:
        raise ConfigError(f"train.monitor={t.monitor!r}: use one of {', '.join(monitors)}")
    if int(t.epochs) < 1:
        raise ConfigError(f"train.epochs={t.epochs}: must be at least 1")
    return TrainSettings(
        epochs=int(t.epochs), lr=float(t.lr), weight_decay=float(t.weight_decay),
        warmup_epochs=float(t.warmup_epochs), min_lr_ratio=float(t.min_lr_ratio), patience=int(t.patience),
        monitor=str(t.monitor), class_weights=bool(t.class_weights), label_smoothing=float(t.label_smoothing),
        grad_clip=float(t.grad_clip), brightness=float(d.brightness), contrast=float(d.contrast),
        mean=float(d.mean), std=float(d.std), amp=bool(t.amp), channels_last=bool(t.channels_last),
        seed=int(cfg.seed), progress=progress, class_names=CLASS_NAMES,
        extra_state={"config": config_dict},
    )  # fmt: skip


def make_loader(dataset: BTXRDImages, batch_size: int, train: bool, workers: int, device: torch.device, seed: int):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffle(len(dataset), seed) if train else None,
        shuffle=False,
        drop_last=train and len(dataset) > batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )


def loader_workers(setting: Any, device: torch.device, threads: int) -> int:
    """``auto``: on CPU the cached uint8 crops are cheap, so the training process does them
    (workers would compete with the model for the same cores); on CUDA, up to 8 workers."""
    if setting == "auto":
        return 0 if device.type == "cpu" else min(8, max(1, threads))
    return max(0, int(setting))


class _RunLogger:
    """Adapter: the engine's per-epoch metrics go to this job's MLflow run."""

    def __init__(self, tracker: Tracker | None, run_id: str | None) -> None:
        self.tracker, self.run_id = tracker, run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(self.run_id, metrics, step=step)

    def artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.tracker is not None:
            self.tracker.log_artifact(self.run_id, path, artifact_path)


def open_tracker(cfg: DictConfig) -> Tracker | None:
    return tracker_for(cfg.tracking, cfg.paths.root)


def run_tags(cfg: DictConfig, ctx: JobContext, commit: str) -> dict[str, str]:
    return {
        "model": str(cfg.model.name),
        "split": str(cfg.split.name),
        "annotations": "on" if cfg.annotations.enabled else "off",
        "task": str(cfg.task),
        "sweep_dir": ctx.sweep_dir,
        "job_num": str(ctx.job_num),
        "overrides": " ".join(ctx.overrides),
        "trial_params": " ".join(f"{k}={v}" for k, v in ctx.trial_params.items()),
        "output_dir": str(ctx.output_dir),
        "mlflow.source.git.commit": commit,
    }


def find_resume(setting: Any, checkpoint_dir: Path, version: str) -> tuple[dict[str, Any] | None, str]:
    """(the last checkpoint per ``train.resume`` (auto | true | false) or None, and a reason not to
    continue from it). ``auto`` does not continue what other code wrote: same config, but
    perhaps other weight shapes or meanings."""
    last = checkpoint_dir / "last.pt"
    mode = str(setting).lower()
    if mode not in ("auto", "true", "false"):
        raise ConfigError(f"train.resume={setting!r}: use auto, true or false")
    if mode == "false":
        return None, ""
    if not last.is_file():
        if mode == "true":
            raise ConfigError(f"train.resume=true: no last checkpoint of this configuration at {last}")
        return None, ""
    state = load_checkpoint(last)
    written_by = state.get("code_version", "unknown")
    if mode == "auto" and written_by != version:
        return state, f"its last checkpoint was written by code version {written_by}, this is {version}"
    return state, ""


def train_task(cfg: DictConfig) -> float:
    """Run one training job; returns the best value of ``cfg.optimized_metric`` (for sweepers).

    A job is identified by its config hash: with ``sweep.skip_finished`` an earlier FINISHED run
    of the same configuration is reused; an interrupted one is resumed from its last checkpoint
    (``train.resume``), in the same MLflow run.
    """
    job_start = time.time()
    ctx = job_context(str(cfg.task))
    tracker = open_tracker(cfg)
    config_dict = to_dict(cfg)
    identity = config_hash(config_dict)
    parent_id = parent_from_env()  # set by the sweep callback (hydra.job.env_set)
    commit = git_commit()
    tags = {**run_tags(cfg, ctx, commit), "config_hash": identity}
    if tracker is not None and cfg.sweep.skip_finished:
        earlier = tracker.finished_run_with_tag("config_hash", identity)
        if earlier is not None:
            return _record_skip(cfg, ctx, tracker, earlier, tags, parent_id)
    checkpoint_dir = Path(cfg.train.checkpoint_dir) / identity
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(checkpoint_dir / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"another job is training this same configuration right now ({checkpoint_dir})") from None
    try:
        version = code_version(commit=commit)
        resume, not_resumed = find_resume(cfg.train.resume, checkpoint_dir, version)
        if not_resumed:
            log.warning("%s: starting afresh, not resuming: %s (train.resume=true forces it)", ctx.run_name,
                        not_resumed)  # fmt: skip
            _close_abandoned(tracker, resume, not_resumed)
            resume = None
        run_id = None
        if tracker is not None:
            run_id = _resumed_run(tracker, resume, parent_id, ctx) if resume else None
            run_id = run_id or tracker.start_run(ctx.run_name, tags, parent_id=parent_id)
        logger = _RunLogger(tracker, run_id)
        try:
            result = _train(cfg, ctx, logger, config_dict, checkpoint_dir, resume, job_start, version)
        except BaseException as exc:
            if tracker is not None:
                tracker.set_tags(run_id, {"error": _error_text(exc, resumable=True)})
                error_file = ctx.output_dir / "error.txt"
                error_file.parent.mkdir(parents=True, exist_ok=True)
                error_file.write_text(traceback.format_exc())
                logger.artifact(error_file)
                tracker.end_run(run_id, "KILLED" if interrupted(exc) else "FAILED")
            raise
        if tracker is not None:
            tracker.end_run(run_id, "FINISHED")
        (checkpoint_dir / "last.pt").unlink(missing_ok=True)  # finished: nothing left to resume
        return result
    finally:
        lock.release()


def _error_text(exc: BaseException, resumable: bool = False) -> str:
    """The run's ``error`` tag: the exception, or which signal stopped it (and whether it can go on)."""
    if not interrupted(exc):
        return f"{type(exc).__name__}: {exc}"
    stopped = f"interrupted by {stop_signal() or 'SIGINT'}"
    return f"{stopped}; its last checkpoint is kept: the same command resumes it" if resumable else stopped


def _close_abandoned(tracker: Tracker | None, state: dict[str, Any], reason: str) -> None:
    """An interrupted run that will not be continued ends KILLED, saying why (not RUNNING forever)."""
    earlier = tracker.find_run(state.get("mlflow_run_id") or "") if tracker is not None else None
    if earlier is not None and earlier.info.status in active_statuses():
        tracker.set_tags(earlier.info.run_id, {"error": f"interrupted; not resumed: {reason}"})
        tracker.end_run(earlier.info.run_id, "KILLED")


def _resumed_run(tracker: Tracker, resume: dict[str, Any], parent_id: str | None, ctx: JobContext) -> str | None:
    """The interrupted run a resumed job continues in: reopened, and moved under this sweep's parent
    (the sweep that finishes it counts it). None when it is gone or in another experiment."""
    earlier = tracker.find_run(resume.get("mlflow_run_id") or "")
    if earlier is None or earlier.info.experiment_id != tracker.experiment_id:
        return None
    tags = {"resumed_from_epoch": resume["epoch"], "output_dir": str(ctx.output_dir), "job_num": str(ctx.job_num),
            "sweep_dir": ctx.sweep_dir}  # fmt: skip
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    tracker.reopen(earlier.info.run_id, tags)
    return earlier.info.run_id


def _record_skip(cfg: DictConfig, ctx: JobContext, tracker: Tracker, earlier, tags: dict, parent_id: str | None):
    """A FINISHED child that points at the earlier run and carries its final metrics."""
    run_id = tracker.start_run(ctx.run_name, {**tags, "skipped": "true", "skipped_for": earlier.info.run_id},
                               parent_id=parent_id)  # fmt: skip
    tracker.log_metrics(run_id, earlier.data.metrics)
    tracker.end_run(run_id, "FINISHED")
    log.info("%s: skipped, finished earlier as run %s", ctx.run_name, earlier.info.run_id)
    return float(earlier.data.metrics.get(f"best_{optimized_metric(cfg)}", float("nan")))


TASKS = ("classify", "reconstruct")


def task_monitor(cfg: DictConfig) -> str:
    """The validation metric early stopping and checkpoint selection use (``auto``: per task)."""
    if cfg.train.monitor != "auto":
        return str(cfg.train.monitor)
    return "val_psnr" if cfg.task == "reconstruct" else "val_macro_f1"


def optimized_metric(cfg: DictConfig) -> str:
    """The metric whose best value the task function returns (``auto``: the monitored one)."""
    return task_monitor(cfg) if cfg.optimized_metric == "auto" else str(cfg.optimized_metric)


def _train(
    cfg: DictConfig,
    ctx: JobContext,
    logger: _RunLogger,
    config_dict: dict[str, Any],
    checkpoint_dir: Path,
    resume: dict[str, Any] | None,
    job_start: float,
    version: str,
) -> float:
    task = str(cfg.task)
    if task not in TASKS:
        raise ConfigError(f"task={task!r}: choose one of {', '.join(TASKS)}")
    if model_task(str(cfg.model.name)) != task:
        raise ConfigError(f"model={cfg.model.name} is a {model_task(str(cfg.model.name))} model but task={task}; "
                          f"choose one of {', '.join(list_models(task=task))}")  # fmt: skip
    out_dir = ctx.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    device = select_device(str(cfg.train.device), ctx.job_num)
    threads = threads_per_job(cfg.train.num_threads, ctx.n_jobs, ctx.cpus_per_job)
    torch.set_num_threads(threads)
    seed_everything(int(cfg.seed), bool(cfg.train.deterministic))
    if logger.tracker is not None and resume is None:
        params = flatten(config_dict)
        params.update({"runtime.device": str(device), "runtime.threads": str(threads),
                       "runtime.glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")})  # fmt: skip
        logger.tracker.log_params(logger.run_id, params)
    (out_dir / "config.json").write_text(json.dumps(config_dict, indent=2))
    logger.artifact(out_dir / "config.json")

    # Data: read, split (materialised as CSV), cache once, loaders.
    use_annotations = bool(cfg.annotations.enabled) and task == "classify"
    table = load_dataset(cfg.data.root, on_bad_image=str(cfg.data.on_bad_image), read_annotations=use_annotations,
                         memo_dir=cfg.data.cache_dir)  # fmt: skip
    needed = range(len(CLASS_NAMES)) if task == "classify" else ()
    parts = make_split(table, to_dict(cfg.split), required_classes=needed)
    split_csv = write_split_csv(table, parts, out_dir / "split.csv")
    logger.artifact(split_csv)
    image_size = int(cfg.model.image_size)
    if image_size < 32:
        raise ConfigError(f"model.image_size={image_size} is too small: the networks downsample 32x (use >= 32)")
    cache = cache_for(table, image_size, cfg.data, workers=threads)
    crop = CropSettings(float(cfg.data.crop_min_scale), float(cfg.data.crop_max_scale), bool(cfg.data.hflip))
    rows = {part: table[parts == part].reset_index(drop=True) for part in ("train", "val", "test")}
    if task == "reconstruct" and cfg.reconstruct.normal_only:
        for part in ("train", "val"):
            rows[part] = rows[part][rows[part]["label"] == 0].reset_index(drop=True)
    cam_loss_weight = float(cfg.annotations.cam_loss_weight) if use_annotations else 0.0
    train_set = BTXRDImages(rows["train"], cache, image_size, train=True, crop=crop,
                            lesion_crops=use_annotations and bool(cfg.annotations.lesion_crops),
                            with_masks=cam_loss_weight > 0, seed=int(cfg.seed))  # fmt: skip
    eval_sets = {p: BTXRDImages(rows[p], cache, image_size, train=False) for p in ("val", "test")}
    workers = loader_workers(cfg.data.num_workers, device, threads)
    batch = int(cfg.model.batch_size)
    train_loader = make_loader(train_set, batch, True, workers, device, int(cfg.seed))
    val_loader = make_loader(eval_sets["val"], int(cfg.train.eval_batch_size), False, workers, device, 0)
    test_loader = make_loader(eval_sets["test"], int(cfg.train.eval_batch_size), False, workers, device, 0)
    if logger.tracker is not None and resume is None:
        counts = {f"data.n_{p}": len(r) for p, r in rows.items()}
        logger.tracker.log_params(logger.run_id, {**counts, "data.cache_file": str(cache.path)})

    # Model and training.
    model = build_model(to_dict(cfg.model))
    settings = train_settings(cfg, config_dict)
    settings.monitor = task_monitor(cfg)
    settings.extra_state["mlflow_run_id"] = logger.run_id or ""
    settings.extra_state["code_version"] = version
    if task == "classify":
        settings.cam_loss_weight = cam_loss_weight
        settings.mask_dilation = round(float(cfg.annotations.mask_dilation) * image_size)
        settings.cam_target_name = model.cam_target_name
        objective = ClassificationObjective(settings)
    else:
        objective = ReconstructionObjective(use_raw_inputs(settings), float(cfg.reconstruct.ssim_weight))
        if logger.tracker is not None and resume is None:
            logger.tracker.log_params(logger.run_id, autoencoder_params(model, image_size, device))
    if resume is not None:
        log.info("%s: resuming after epoch %d from %s", ctx.run_name, resume["epoch"], checkpoint_dir)
    result = fit(model, train_loader, val_loader, settings, device, checkpoint_dir, logger, resume, objective)
    pd.DataFrame(result.history).rename_axis("epoch").to_csv(out_dir / "history.csv")
    logger.artifact(result.best_path, "checkpoints")
    if cfg.tracking.log_last_checkpoint:
        logger.artifact(result.last_path, "checkpoints")

    # Test metrics of the best checkpoint.
    model.load_state_dict(load_checkpoint(result.best_path)["model"])
    if task == "classify":
        test_metrics = _test_classifier(cfg, ctx, model, test_loader, device, settings, rows["test"], cache, logger)
    else:
        test_metrics = _test_autoencoder(ctx, model, rows["test"], cache, image_size, device, settings, logger)
    summary = {
        **test_metrics,
        # job start (task function entered) to the first optimiser step: data, split, cache, model
        "startup_seconds": result.first_step_at - job_start,
        "process_startup_seconds": result.first_step_at - process_start_time(),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        f"best_{settings.monitor}": result.best_score,
    }
    logger.log_metrics(summary, step=result.epochs_run)
    (out_dir / "metrics_test.json").write_text(json.dumps(summary, indent=2))
    headline = ("test_macro_f1", "test_accuracy") if task == "classify" else ("test_psnr", "test_ssim")
    log.info("%s: %s %.3f, %s %.3f", ctx.run_name, headline[0], summary[headline[0]], headline[1], summary[headline[1]])
    return float(summary.get(f"best_{optimized_metric(cfg)}", result.best_score))


def _test_classifier(cfg, ctx, model, test_loader, device, settings, rows, cache, logger) -> dict[str, float]:
    out_dir = ctx.output_dir
    test_metrics, matrix, _, _ = score_classifier(model, test_loader, device, settings, rows, out_dir, "test")
    # The test part's annotations are read here, after training and prediction, only to score the maps.
    cam_metrics, grids = explain_rows(model, test_loader, device, settings, with_annotations(rows, cfg.data.root),
                                      cache, out_dir, ctx.run_name, "test_")  # fmt: skip
    for grid in grids:
        logger.artifact(grid, "gradcam")
    plot_confusion_matrix(matrix, CLASS_NAMES, out_dir / "confusion_matrix_test.png", title=ctx.run_name)
    for name in ("confusion_matrix_test.png", "predictions_test.csv"):
        logger.artifact(out_dir / name)
    return {**test_metrics, **cam_metrics}


def _test_autoencoder(ctx, model, rows, cache, image_size, device, settings, logger) -> dict[str, float]:
    """PSNR/SSIM on the test part, overall and per class (one pass), and a picture of reconstructions."""
    loader = make_loader(BTXRDImages(rows, cache, image_size, train=False), 32, False, 0, device, 0)
    scores = reconstruct(model, loader, device, settings, keep=8)
    groups = {"": scores, **{f"_{CLASS_NAMES[k]}": by_class for k, by_class in scores["by_label"].items()}}
    metrics = {f"test_{name}{suffix}": group[name] for suffix, group in groups.items()
               for name in ("psnr", "ssim", "mse")}  # fmt: skip
    grid = save_reconstruction_grid(scores["originals"], scores["reconstructions"],
                                    ctx.output_dir / "reconstructions_test.png", ctx.run_name)  # fmt: skip
    logger.artifact(grid)
    return metrics


def evaluate_task(cfg: DictConfig) -> dict[str, float]:
    """Re-score ``cfg.run_id``'s best checkpoint (or ``cfg.checkpoint``); log a nested evaluation run."""
    if bool(cfg.run_id) == bool(cfg.checkpoint):
        raise ConfigError("give exactly one of run_id=<mlflow run id> or checkpoint=PATH")
    ctx = job_context()
    out_dir = ctx.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = open_tracker(cfg)
    expected_split = None
    trained_run = None
    if cfg.run_id:
        if tracker is None:
            raise ConfigError("run_id=... needs tracking.enabled=true (use checkpoint=PATH without tracking)")
        trained_run = tracker.find_run(str(cfg.run_id))
        if trained_run is None:
            raise ConfigError(f"run_id={cfg.run_id}: no such run in {tracker.uri}")
        if "checkpoints/best.pt" not in tracker.artifact_paths(cfg.run_id, "checkpoints"):
            raise ConfigError(f"run_id={cfg.run_id}: the run has no checkpoint artifact (checkpoints/best.pt)")
        checkpoint = tracker.download_artifact(cfg.run_id, "checkpoints/best.pt", out_dir)
        if "split.csv" in tracker.artifact_paths(cfg.run_id):
            expected_split = pd.read_csv(tracker.download_artifact(cfg.run_id, "split.csv", out_dir))
    else:
        checkpoint = Path(str(cfg.checkpoint)).expanduser()
    device = select_device(str(cfg.device), 0)
    threads = threads_per_job(cfg.num_threads, 1)
    torch.set_num_threads(threads)

    run_id = None
    if tracker is not None:
        name = (
            f"eval {cfg.part} | {trained_run.info.run_name}" if trained_run else f"eval {cfg.part} | {checkpoint.name}"
        )
        tags = {"evaluation": "true", "checkpoint": str(checkpoint), "data_root": str(cfg.data.root or "")}
        run_id = tracker.start_run(name, tags, parent_id=str(cfg.run_id) if cfg.run_id else None)
    try:
        result = evaluate_checkpoint(
            checkpoint, out_dir, device, part=str(cfg.part), data_root=cfg.data.root, cache_dir=cfg.data.cache_dir,
            expected_split=expected_split, threads=threads,
        )  # fmt: skip
    except BaseException as exc:
        if tracker is not None:
            tracker.set_tags(run_id, {"error": _error_text(exc)})
            tracker.end_run(run_id, "KILLED" if interrupted(exc) else "FAILED")
        raise
    if tracker is not None:
        tracker.log_params(run_id, {"part": result.part, "data_root": result.data_root, "n_images": result.n_images,
                                    "checkpoint": str(checkpoint)})  # fmt: skip
        tracker.log_metrics(run_id, result.metrics)
        for path in result.artifacts:
            tracker.log_artifact(run_id, path, "gradcam" if path.parent.name == "gradcam" else None)
        tracker.end_run(run_id, "FINISHED")
    print(f"evaluated {checkpoint} on {result.part} of {result.data_root} ({result.n_images} images):")
    for key, value in result.metrics.items():
        print(f"  {key:32s} {value:.4f}")
    print(f"outputs: {out_dir}" + (f"; MLflow run {run_id}" if run_id else ""))
    return result.metrics
