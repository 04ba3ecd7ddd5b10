"""Training loop for classifiers: AdamW, warm-up + cosine, class weights, early stopping.

Knows nothing of Hydra or MLflow: settings come as a dataclass, and per-epoch
metrics go to any object with ``log_metrics(metrics, step)``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from btxrd.cam.gradcam import capture_activation
from btxrd.engine.checkpoint import save_checkpoint
from btxrd.errors import BTXRDError, ConfigError
from btxrd.metrics import classification_metrics


class NonFiniteLossError(BTXRDError):
    """The loss became NaN or infinite; training stops before any bad weights are saved."""


class MetricLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


@dataclass
class TrainSettings:
    epochs: int = 30
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    patience: int = 7
    monitor: str = "val_macro_f1"
    class_weights: bool = True
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    brightness: float = 0.1
    contrast: float = 0.1
    mean: float = 0.449
    std: float = 0.226
    amp: bool = True
    channels_last: bool = True
    seed: int = 0
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    class_names: Sequence[str] = ("normal", "benign", "malignant")
    # Attention loss (annotations=on): weight x (1 - CAM mass share inside the dilated lesion mask)
    cam_loss_weight: float = 0.0
    mask_dilation: int = 0  # pixels at the input resolution
    cam_target_name: str = ""
    extra_state: dict[str, Any] = field(default_factory=dict)  # stored in checkpoints (e.g. the config)


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


class EpochShuffle(Sampler[int]):
    """A fresh seeded permutation per epoch, independent of how many epochs ran before (resumable)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights from the training part: n / (K * n_c); absent classes get 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class InputPipeline:
    """uint8 batches -> normalised float on the device (+ intensity jitter for training)."""

    def __init__(self, device: torch.device, settings: TrainSettings) -> None:
        self.device = device
        self.settings = settings
        self.memory_format = (
            torch.channels_last if settings.channels_last and device.type == "cuda" else torch.contiguous_format
        )

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        s = self.settings
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        if generator is not None and (s.brightness > 0 or s.contrast > 0):
            n = x.shape[0]
            contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * s.contrast
            brightness = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * s.brightness
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * contrast.to(x.device) + mean + brightness.to(x.device)).clamp_(0, 1)
        x = (x - s.mean) / s.std
        return x.contiguous(memory_format=self.memory_format)


def attention_loss(
    features: torch.Tensor, classifier_weight: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, dilation: int
) -> torch.Tensor:
    """Per image: 1 - share of the true class's CAM mass inside the (dilated) lesion mask.

    CAM = classifier weights of the true class x final feature map (exact for GAP + linear heads),
    rectified; the mask is dilated at input resolution, then max-pooled to the feature grid.
    Returns (B,) losses, 0 where the CAM has no positive mass inside or out.
    """
    cams = torch.relu(torch.einsum("bc,bchw->bhw", classifier_weight[labels].to(features.dtype), features)).float()
    m = masks.float()
    if dilation > 0:
        m = torch.nn.functional.max_pool2d(m, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    m = torch.nn.functional.adaptive_max_pool2d(m, cams.shape[-2:])[:, 0]
    total = cams.sum(dim=(1, 2))
    inside = (cams * m).sum(dim=(1, 2))
    return torch.where(total > 0, 1 - inside / total.clamp_min(1e-12), torch.zeros_like(total))


def autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, device: torch.device, settings: TrainSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Softmax probabilities, true labels and dataset indices over ``loader`` (model in eval mode)."""
    was_training = model.training
    model.eval()
    inputs = InputPipeline(device, settings)
    probs, labels, indices = [], [], []
    for images, y, _mask, _has_mask, index in loader:
        with autocast(device, settings.amp):
            logits = model(inputs(images))
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(y)
        indices.append(index)
    model.train(was_training)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy(), torch.cat(indices).numpy()


class ClassificationObjective:
    """Class-weighted cross-entropy (+ the attention loss on annotated tumour images); val metrics."""

    def __init__(self, settings: TrainSettings) -> None:
        self.settings = settings

    def setup(self, model: nn.Module, device: torch.device, train_labels: np.ndarray) -> None:
        s = self.settings
        weight = class_weights(train_labels, len(s.class_names)).to(device) if s.class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=s.label_smoothing)
        self.use_cam_loss = s.cam_loss_weight > 0
        if self.use_cam_loss:
            self.target, self.head = model.get_submodule(s.cam_target_name), model.get_classifier()

    def loss(self, model, x, y, masks, has_mask) -> tuple[torch.Tensor, dict[str, tuple[float, int]]]:
        """The batch loss and extra running terms {name: (sum, count)}."""
        s = self.settings
        with capture_activation(self.target) if self.use_cam_loss else nullcontext() as store:
            loss = self.criterion(model(x).float(), y)
        extras: dict[str, tuple[float, int]] = {}
        if self.use_cam_loss:
            chosen = has_mask.to(x.device)
            cam_loss = torch.zeros((), device=x.device)
            if bool(chosen.any()):
                # Same forward, same backward: the CAM comes from the captured final features.
                per_image = attention_loss(
                    store["value"][chosen], self.head.weight, y[chosen], masks.to(x.device)[chosen], s.mask_dilation
                )
                cam_loss = per_image.mean()
                loss = loss + s.cam_loss_weight * cam_loss
            extras["train_cam_loss"] = (cam_loss.item() * int(chosen.sum()), int(chosen.sum()))
        return loss, extras

    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        probs, labels, _ = predict(model, loader, device, self.settings)
        with torch.no_grad():  # CE from probabilities: softmax(log p) = p
            log_probs = torch.from_numpy(np.log(np.clip(probs, 1e-12, 1))).to(device)
            val_loss = float(self.criterion(log_probs, torch.from_numpy(labels).to(device)))
        metrics, _ = classification_metrics(labels, probs, self.settings.class_names, prefix="val_")
        keep = ("val_accuracy", "val_macro_f1", "val_balanced_accuracy", "val_auroc_macro")
        return {"val_loss": val_loss, **{k: metrics[k] for k in keep}}


class Objective(Protocol):
    def setup(self, model: nn.Module, device: torch.device, train_labels: np.ndarray) -> None: ...

    def loss(self, model, x, y, masks, has_mask) -> tuple[torch.Tensor, dict[str, tuple[float, int]]]: ...

    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]: ...


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    settings: TrainSettings,
    device: torch.device,
    out_dir: str | Path,
    logger: MetricLogger | None = None,
    resume: dict[str, Any] | None = None,
    objective: Objective | None = None,
) -> FitResult:
    """Train with early stopping on ``settings.monitor``; best and last checkpoints go to ``out_dir``.

    ``objective``: what the batches are trained for (default: classification).
    ``resume``: a last checkpoint of this same run; training continues after its epoch with
    the model, optimiser, schedule, early-stopping state and RNG state it holds, so on CPU the
    result equals an uninterrupted run (data order and augmentation are seeded per epoch).
    """
    out_dir = Path(out_dir)
    objective = objective or ClassificationObjective(settings)
    model.to(device)
    inputs = InputPipeline(device, settings)
    if inputs.memory_format is torch.channels_last:
        model.to(memory_format=torch.channels_last)
    objective.setup(model, device, np.asarray(train_loader.dataset.labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = len(train_loader)
    schedule = warmup_cosine(
        settings.epochs * steps_per_epoch, round(settings.warmup_epochs * steps_per_epoch), settings.min_lr_ratio
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    use_scaler = settings.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    show_bar = sys.stderr.isatty() if settings.progress is None else settings.progress

    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    best_score, best_epoch, bad_epochs = -math.inf, -1, 0
    history: list[dict[str, float]] = []
    stopped_early = False
    start_epoch = 0
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
        except RuntimeError:  # same config, other code: other layers or shapes
            raise ConfigError(f"train.resume: the last checkpoint in {out_dir} does not fit this model "
                              f"(written by code version {resume.get('code_version', 'unknown')}); "
                              "train.resume=false starts afresh") from None  # fmt: skip
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng_state"])
        start_epoch = int(resume["epoch"])
        best_score, best_epoch = float(resume["best_score"]), int(resume["best_epoch"])
        bad_epochs = int(resume["bad_epochs"])
        history = [dict(row) for row in resume["history"]]
        stopped_early = settings.patience > 0 and bad_epochs >= settings.patience
    epoch = start_epoch - 1
    first_step_at = float("nan")
    for epoch in range(start_epoch, settings.epochs if not stopped_early else start_epoch):
        for holder in (train_loader.sampler, train_loader.dataset):
            if hasattr(holder, "set_epoch"):
                holder.set_epoch(epoch)
        generator = torch.Generator().manual_seed(settings.seed * 7919 + epoch)
        model.train()
        start = time.perf_counter()
        total_loss, seen = 0.0, 0
        extra_sums: dict[str, list[float]] = {}
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{settings.epochs}", disable=not show_bar, leave=False)
        for step, (images, labels, masks, has_mask, _index) in enumerate(bar):
            x = inputs(images, generator)
            y = labels.to(device, non_blocking=True)
            with autocast(device, settings.amp):
                loss, extras = objective.loss(model, x, y, masks, has_mask)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite training loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                    "no checkpoint was written for this epoch (lower train.lr?)"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if settings.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if math.isnan(first_step_at):  # not set yet
                first_step_at = time.time()
            scheduler.step()
            total_loss += loss.item() * len(y)
            seen += len(y)
            for name, (value, count) in extras.items():
                acc = extra_sums.setdefault(name, [0.0, 0])
                acc[0] += value
                acc[1] += count
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        train_seconds = time.perf_counter() - start

        val_row = objective.validate(model, val_loader, device)
        row = {
            "train_loss": total_loss / max(1, seen),
            **{name: value / max(1, count) for name, (value, count) in extra_sums.items()},
            **val_row,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - start,
            "train_images_per_second": seen / train_seconds,
        }
        history.append(row)
        if logger is not None:
            logger.log_metrics(row, step=epoch + 1)

        score = row[settings.monitor]
        improved = score > best_score
        if improved:
            best_score, best_epoch, bad_epochs = score, epoch + 1, 0
        else:
            bad_epochs += 1
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch + 1,
            "metrics": {k: float(v) for k, v in row.items()},
            "class_names": list(settings.class_names),
            "best_score": best_score,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "history": history,
            "rng_state": torch.get_rng_state(),
            **settings.extra_state,
        }
        if improved:
            save_checkpoint(state, best_path)
        save_checkpoint(state, last_path)  # after best: a kill in between only repeats this epoch
        if settings.patience > 0 and bad_epochs >= settings.patience:
            stopped_early = True
            break
    return FitResult(best_path, last_path, best_epoch, best_score, epoch + 1, stopped_early, history, first_step_at)
