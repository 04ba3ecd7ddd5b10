"""One training epoch over a loader, with as few host-device synchronisations as it can.

Sync points, named (nanoGPT's habit): on CUDA, reading a value back from the GPU (``.item()``,
``bool(tensor)``) makes the host wait for every queued kernel. Per-step losses are therefore summed
on the device, and the loop reads them back only every ``sync_every`` steps (the non-finite check
and the progress bar) and at the end of the epoch. On the CPU there is no queue to wait for, so
the check runs at every step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from btxrd.data.loaders import Batch
from btxrd.engine.inputs import InputPipeline, InputSpec, autocast
from btxrd.errors import BTXRDError


class NonFiniteLossError(BTXRDError):
    """The loss became NaN or infinite; training stops before any bad weights are saved."""


class Objective(Protocol):
    """What a task trains for: its inputs, its loss on a batch, its validation metrics."""

    inputs: InputSpec

    def setup(self, model: nn.Module, device: torch.device, train_labels: np.ndarray) -> None: ...

    def loss(self, model: nn.Module, x: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The batch loss and extra terms to report as per-image means: {name: (sum, count)} as device tensors."""
        ...

    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]: ...


@dataclass
class EpochStats:
    loss: float
    extras: dict[str, float]
    images: int
    seconds: float
    first_step_at: float = math.nan  # wall-clock time after the first optimiser step


@dataclass
class _Running:
    """Sums kept on the device until the next sync point."""

    device: torch.device
    loss: torch.Tensor = field(init=False)
    extras: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    bad_step: torch.Tensor = field(init=False)  # first step (from 0) with a non-finite loss, or -1
    bad_value: torch.Tensor = field(init=False)
    images: int = 0

    def __post_init__(self) -> None:
        self.loss = torch.zeros((), device=self.device, dtype=torch.float64)
        self.bad_step = torch.full((), -1, device=self.device, dtype=torch.long)
        self.bad_value = torch.zeros((), device=self.device)

    def add(self, step: int, loss: torch.Tensor, n: int, extras: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        value = loss.detach().float()
        first = (self.bad_step < 0) & ~torch.isfinite(value)
        self.bad_step = torch.where(first, torch.full_like(self.bad_step, step), self.bad_step)
        self.bad_value = torch.where(first, value, self.bad_value)
        self.loss += value.double() * n
        self.images += n
        for name, (total, count) in extras.items():
            acc = self.extras.setdefault(
                name,
                [
                    torch.zeros((), device=self.device, dtype=torch.float64),
                    torch.zeros((), device=self.device, dtype=torch.float64),
                ],
            )
            acc[0] += total.detach().double()
            acc[1] += count.detach().double()

    def check(self, epoch: int) -> None:
        """Sync point: raise if a loss so far was not finite."""
        step = int(self.bad_step)
        if step >= 0:
            raise NonFiniteLossError(
                f"non-finite training loss ({float(self.bad_value)}) at epoch {epoch + 1}, step {step + 1}; "
                "no checkpoint was written for this epoch (lower train.lr?)"
            )


@dataclass
class Stepper:
    """What an optimiser step uses: the module it calls (compiled with ``train.compile``; validation,
    checkpoints and Grad-CAM use the model itself), the optimiser and its schedule, the loss scaler, the
    input pipeline, and the step's settings (``train.amp``, ``grad_clip``, ``sync_every``)."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    inputs: InputPipeline
    amp: bool
    grad_clip: float
    sync_every: int


def train_one_epoch(
    stepper: Stepper,
    batches: Iterable[Batch],
    objective: Objective,
    *,
    epoch: int,
    generator: torch.Generator,
    bar: tqdm | None = None,
) -> EpochStats:
    """Train on ``batches`` (one epoch's; epochs count from 0); ``bar``, if given, wraps them."""
    model, optimizer, scaler, inputs = stepper.module, stepper.optimizer, stepper.scaler, stepper.inputs
    device = inputs.device
    check_every = stepper.sync_every if device.type == "cuda" else 1
    model.train()
    start = time.perf_counter()
    running = _Running(device)
    first_step_at = math.nan
    for step, batch in enumerate(bar if bar is not None else batches):
        x = inputs(batch.images, generator)
        with autocast(device, stepper.amp):
            loss, extras = objective.loss(model, x, batch)
        running.add(step, loss, len(batch), extras)
        if step % check_every == 0:
            running.check(epoch)  # sync point (on CUDA every sync_every steps)
            if bar is not None:
                bar.set_postfix(loss=f"{float(running.loss) / running.images:.4f}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if stepper.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), stepper.grad_clip)
        scaler.step(optimizer)  # with fp16 loss scaling this syncs to skip steps with inf gradients
        scaler.update()
        stepper.scheduler.step()
        if math.isnan(first_step_at):
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # sync point, once: when the first step has really run
            first_step_at = time.time()
    running.check(epoch)  # sync point: the epoch's last steps
    extras = {name: float(total) / max(1.0, float(count)) for name, (total, count) in running.extras.items()}
    return EpochStats(
        float(running.loss) / max(1, running.images), extras, running.images, time.perf_counter() - start, first_step_at
    )
