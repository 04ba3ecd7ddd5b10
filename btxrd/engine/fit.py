"""Training with early stopping: set-up, resume, the epochs, checkpoints.

Knows nothing of Hydra, MLflow or the task: the objective (``btxrd.tasks``) says what the
batches are trained for and how validation is scored; per-epoch metrics go to any object with
``log_metrics(metrics, step)``.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from btxrd.data.feed import DeviceFeed
from btxrd.data.loaders import EpochBatches
from btxrd.engine.checkpoint import save_checkpoint, weights_mismatch, without_resume_state
from btxrd.engine.inputs import InputPipeline, amp_dtype, place_model
from btxrd.engine.loop import EpochStats, Objective, Stepper, train_one_epoch
from btxrd.engine.schedule import EarlyStopping, warmup_cosine
from btxrd.errors import ConfigError
from btxrd.settings import TrainConfig


class MetricLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


@dataclass
class FitResult:
    best_path: Path
    last_path: Path
    best_epoch: int
    best_score: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]]
    first_step_at: float = float("nan")  # wall-clock time (time.time()) after the first optimiser step


@dataclass
class _Training:
    """Everything that changes while training and is saved in a checkpoint to resume from."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    stopper: EarlyStopping
    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)

    def state(self, row: dict[str, float], extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "metrics": {k: float(v) for k, v in row.items()},
            **self.stopper.state_dict(),
            "history": self.history,
            "rng_state": torch.get_rng_state(),
            **({"cuda_rng_state": torch.cuda.get_rng_state_all()} if torch.cuda.is_initialized() else {}),
            **extra,
        }

    def resume_from(self, state: dict[str, Any], out_dir: Path) -> None:
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:  # same config, other code: other layers or shapes
            raise ConfigError(
                f"train.resume: the last checkpoint in {out_dir} does not fit this model "
                f"({weights_mismatch(self.model, state['model'])}; written by code version "
                f"{state.get('code_version', 'unknown')}); train.resume=false starts afresh"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_state"])
        cuda_states = state.get("cuda_rng_state")  # dropout's draws on the GPU
        if cuda_states is not None and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        self.epoch = int(state["epoch"])
        self.stopper.load_state_dict(state)
        self.history = [dict(row) for row in state["history"]]


def set_up_training(
    model: nn.Module,
    objective: Objective,
    settings: TrainConfig,
    device: torch.device,
    train_labels: np.ndarray,
    steps_per_epoch: int,
) -> tuple[_Training, Stepper]:
    """Model on the device, objective, optimiser, schedule, loss scaler, input pipeline: what training
    saves to resume from, and what each step uses."""
    place_model(model, device, settings.channels_last)
    inputs = InputPipeline(device, objective.inputs, settings.channels_last)
    objective.setup(model, device, train_labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = warmup_cosine(
        settings.epochs * steps_per_epoch, round(settings.warmup_epochs * steps_per_epoch), settings.min_lr_ratio
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    use_scaler = settings.amp and amp_dtype(device) == torch.float16  # bf16 needs no loss scaling
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    module = torch.compile(model) if settings.compile else model
    stepper = Stepper(
        module, optimizer, scheduler, scaler, inputs, settings.amp, settings.grad_clip, settings.sync_every
    )
    return _Training(model, optimizer, scheduler, EarlyStopping(settings.patience)), stepper


def epoch_stream(loader: DataLoader | DeviceFeed, start_epoch: int) -> Callable[[], Iterable]:
    """A function giving the next epoch's batches. A loader of ``EpochBatches`` is iterated once, from
    ``start_epoch`` on, one epoch's worth of batches at a time (its workers go on preparing the next
    epoch meanwhile); any other loader is iterated afresh for each epoch."""
    batches = loader.batch_sampler
    if not isinstance(batches, EpochBatches):
        return lambda: loader
    batches.start_epoch = start_epoch
    stream = iter(loader)
    return lambda: itertools.islice(stream, len(batches))


def fit(
    model: nn.Module,
    train_batches: DataLoader | DeviceFeed,
    val_loader: DataLoader,
    objective: Objective,
    settings: TrainConfig,
    *,
    monitor: str,
    seed: int,
    device: torch.device,
    out_dir: str | Path,
    logger: MetricLogger | None = None,
    resume: dict[str, Any] | None = None,
    extra_state: dict[str, Any] | None = None,
) -> FitResult:
    """Train with early stopping on ``monitor``; best and last checkpoints go to ``out_dir`` (the best
    one without the optimiser, schedule and RNG states, which only resuming reads, from the last).

    ``resume``: a last checkpoint of this same run; training continues after its epoch with the
    model, optimiser, schedule, early-stopping state and RNG state it holds, so on CPU the result
    equals an uninterrupted run (data order and augmentation are seeded per epoch).
    ``extra_state``: stored in every checkpoint (e.g. the config, the code version).
    """
    out_dir = Path(out_dir)
    training, stepper = set_up_training(
        model, objective, settings, device, np.asarray(train_batches.dataset.labels), len(train_batches)
    )
    if resume is not None:
        training.resume_from(resume, out_dir)
    progress = settings.progress_bar
    show_bar = sys.stderr.isatty() if progress is None else progress
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    first_step_at = math.nan
    next_epoch = epoch_stream(train_batches, training.epoch)
    while training.epoch < settings.epochs and not training.stopper.should_stop:
        epoch = training.epoch
        batches = next_epoch()
        described = f"epoch {epoch + 1}/{settings.epochs}"
        bar = tqdm(batches, total=len(train_batches), desc=described, leave=False) if show_bar else None
        generator = torch.Generator(device).manual_seed(seed * 7919 + epoch)
        stats = train_one_epoch(stepper, batches, objective, epoch=epoch, generator=generator, bar=bar)
        if math.isnan(first_step_at):
            first_step_at = stats.first_step_at
        row = _epoch_row(stats, objective, model, val_loader, device, training.optimizer)
        training.epoch = epoch + 1
        training.history.append(row)
        if logger is not None:
            logger.log_metrics(row, step=training.epoch)
        improved = training.stopper.update(row[monitor], training.epoch)
        state = training.state(row, extra_state or {})
        if improved:
            save_checkpoint(without_resume_state(state), best_path)
        save_checkpoint(state, last_path)  # after best: a kill in between only repeats this epoch
    stopper = training.stopper
    return FitResult(
        best_path,
        last_path,
        stopper.best_epoch,
        stopper.best_score,
        training.epoch,
        stopper.should_stop,
        training.history,
        first_step_at,
    )


def _epoch_row(
    stats: EpochStats,
    objective: Objective,
    model: nn.Module,
    val_loader: DataLoader,
    device: torch.device,
    optimizer: torch.optim.Optimizer,
) -> dict[str, float]:
    """An epoch's metrics: training loss and extras, validation, learning rate, time and throughput."""
    validation_start = time.perf_counter()
    row = {
        "train_loss": stats.loss,
        **stats.extras,
        **objective.validate(model, val_loader, device),
        "lr": optimizer.param_groups[0]["lr"],
        "epoch_seconds": stats.seconds + time.perf_counter() - validation_start,
        "train_images_per_second": stats.images / stats.seconds,
    }
    return {k: float(v) for k, v in row.items()}  # plain floats: checkpoints load with weights_only=True
