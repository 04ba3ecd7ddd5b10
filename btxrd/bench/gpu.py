"""The GPU section of the benchmark: the training step as the product runs it (btxrd.engine's
``train_one_epoch``: bf16 autocast, channels_last, the real objective), fed two ways.

- model-only: uint8 batches already on the GPU, the limit the loader is measured against;
- end-to-end: the real loader (image cache, crops, pinned memory, ``loader_workers`` workers), and the
  device feed (``data.feed=device``: canvases on the GPU, batched crops), each one stream over several
  epochs as ``fit`` runs it; efficiency = end-to-end / model-only;
- the loader alone, and one loader worker's images/s on this machine's CPU (how many workers a
  GPU needs), with and without annotation-guided crops and masks;
- host syncs: ``train.sync_every`` 1 (a read-back every step) against 25; ``train.compile``;
- the autoencoders at their configured size (256 px, base 64): peak GPU memory per batch, float32 and bf16.

Every figure is the median of ``ROUNDS`` interleaved rounds with its min and max.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from btxrd.bench.common import Trainer, spread, training_feed, training_loader, uint8_batches
from btxrd.config import compose_run
from btxrd.data.loaders import collate_batch, loader_workers
from btxrd.data.reader import load_dataset
from btxrd.data.synth import generate
from btxrd.engine.fit import epoch_stream
from btxrd.runtime.environment import seed_everything

ROUNDS = 3
# (model, input size, batch): the configured input sizes, at batches as large as timm's own training benchmark uses and
# at the product's own (conf/model/).
MODELS = (
    ("b0", 224, 256),
    ("b3", 300, 128),
    ("resnet50_cbam", 224, 256),
    ("b0", 224, 32),
    ("b3", 300, 16),
    ("resnet50_cbam", 224, 16),
)
# timm's published training throughput (results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv: AMP,
# channels_last, RTX 3090): RGB input, 1000 classes; resnet50 there has no CBAM.
TIMM_RTX3090 = {
    "b0": ("efficientnet_b0 @ 224", 1752),
    "b3": ("efficientnet_b3 @ 288", 572),
    "resnet50_cbam": ("resnet50 @ 224 (no CBAM)", 1218),
}


def _epochs(trainer: Trainer, next_epoch: Callable[[], Iterable], epochs: int) -> float:
    """Images/s over ``epochs`` whole epochs of a feed's one stream, as fit runs them (epoch starts included;
    the stream is not restarted between figures: its workers keep the next batches ready, as in a run)."""
    images, start = 0, time.perf_counter()
    for _ in range(epochs):
        images += trainer.run_epoch(next_epoch()).images
    _synchronize(trainer.stepper.inputs.device)
    return images / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def throughput(
    table, device: torch.device, steps: int = 30, epochs: int = 4, models: tuple[tuple[str, int, int], ...] = MODELS
) -> dict[str, Any]:
    """Per model and batch: model-only, end-to-end through loader workers and through the device feed
    (``data.feed=device``), their efficiencies, peak GPU memory; cuDNN autotuned, as the product runs.
    (On the CPU too, smaller: ``make gpu-check``'s rehearsal.)"""
    workers = loader_workers(None, device, torch.get_num_threads())
    out: dict[str, Any] = {"loader_workers": workers}
    labels = table["label"].to_numpy()
    for name, size, batch in models:
        print(f"{device.type}: {name} at {size} px, batch {batch} ...", flush=True)
        seed_everything(0, None, device)  # train.deterministic=auto on a GPU: cuDNN autotuning
        trainer = Trainer([f"model={name}", f"model.image_size={size}"], device, labels)
        on_gpu = uint8_batches(batch, size, device)
        streams = {
            "workers": epoch_stream(training_loader(table, size, batch, device, workers), 0),
            "device": epoch_stream(training_feed(table, size, batch, device), 0),
        }
        trainer.images_per_second([on_gpu[i % 4] for i in range(5)])  # warm-up (cuDNN autotuning)
        for stream in streams.values():
            _epochs(trainer, stream, 1)  # workers started, caches warm
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        measured: dict[str, list[float]] = {"model_only": [], "workers": [], "device": []}
        for _ in range(ROUNDS):  # interleaved: the ratios are taken within a round
            measured["model_only"].append(trainer.images_per_second([on_gpu[i % 4] for i in range(steps)]))
            for feed, stream in streams.items():
                measured[feed].append(_epochs(trainer, stream, epochs))
        model_only = measured["model_only"]
        out[f"{name}@{batch}"] = {
            "model": name,
            "size": size,
            "batch": batch,
            "model_only_ips": spread(model_only),
            "end_to_end_ips": spread(measured["workers"]),
            "device_feed_ips": spread(measured["device"]),
            "efficiency": spread([e / m for e, m in zip(measured["workers"], model_only, strict=True)]),
            "device_feed_efficiency": spread([e / m for e, m in zip(measured["device"], model_only, strict=True)]),
            "peak_memory_gib": _peak_memory_gib(device),
            "timm_rtx3090": TIMM_RTX3090[name],
        }
        del trainer, streams
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def loader_ceiling(table, device: torch.device, steps: int = 12) -> dict[str, Any]:
    """Images/s of the loader alone with the product's workers, and of one worker (in this process)."""
    out: dict[str, Any] = {}
    workers = loader_workers(None, device, torch.get_num_threads())
    for size in (224, 300):
        for guided in (False, True):
            key = f"{size}px_{'annotations' if guided else 'plain'}"
            dataset = training_loader(table, size, 64, device, 0, guided).dataset
            start = time.perf_counter()
            items = [dataset[i % len(dataset)] for i in range(256)]
            collate_batch(items)
            one = 256 / (time.perf_counter() - start)
            loader = training_loader(table, size, 256, device, workers, guided)
            iterator = iter(loader)
            next(iterator)
            start, seen = time.perf_counter(), 0
            for _ in range(steps):
                try:
                    batch = next(iterator)
                except StopIteration:
                    iterator = iter(loader)
                    batch = next(iterator)
                batch.images.to(device, non_blocking=True)
                seen += len(batch)
            torch.cuda.synchronize(device)
            out[key] = {"one_worker_ips": one, f"{workers}_workers_ips": seen / (time.perf_counter() - start)}
    return out


def sync_and_compile(table, device: torch.device, steps: int = 40) -> dict[str, Any]:
    """b0 at 224 px: a read-back every step against every 25 steps; torch.compile against eager."""
    labels = table["label"].to_numpy()
    on_gpu = uint8_batches(256, 224, device)
    b0 = ["model=b0", "model.image_size=224"]
    trainers = {
        "sync_every_1": Trainer(b0, device, labels, sync_every=1),
        "sync_every_25": Trainer(b0, device, labels, sync_every=25),
    }
    start = time.perf_counter()
    trainers["compiled"] = Trainer(b0, device, labels, compile=True)
    trainers["compiled"].images_per_second([on_gpu[i % 4] for i in range(3)])
    compile_seconds = time.perf_counter() - start
    for trainer in trainers.values():
        trainer.images_per_second([on_gpu[i % 4] for i in range(5)])
    measured: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(ROUNDS):
        for key, trainer in trainers.items():
            measured[key].append(trainer.images_per_second([on_gpu[i % 4] for i in range(steps)]))
    out: dict[str, Any] = {k: spread(v) for k, v in measured.items()}
    out["per_step_sync_cost"] = spread(
        [b / a for a, b in zip(measured["sync_every_1"], measured["sync_every_25"], strict=True)]
    )
    out["compile_speedup"] = spread(
        [c / e for c, e in zip(measured["compiled"], measured["sync_every_25"], strict=True)]
    )
    out["compile_seconds"] = compile_seconds
    return out


def autoencoder_memory(device: torch.device) -> dict[str, Any]:
    """Peak GPU memory of training steps at their configured size (256 px, base 64), float32 and bf16."""
    out: dict[str, Any] = {}
    variants = {
        "ae_residual": ["model=ae_residual"],
        "ae_attention": ["model=ae_attention", "model.cbam_placement=after"],
        "ae_attention_on_branch": ["model=ae_attention", "model.cbam_placement=residual"],
    }
    for name, overrides in variants.items():
        for batch in (16, 32):
            for amp in (False, True):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                trainer = Trainer(["task=reconstruct", *overrides], device, np.zeros(8, dtype=int), amp=amp)
                batches = uint8_batches(batch, 256, device, n=1)
                trainer.images_per_second(batches * 2)
                ips = trainer.images_per_second(batches * 5)
                out[f"{name}_batch{batch}_{'bf16' if amp else 'fp32'}"] = {
                    "peak_gib": (torch.cuda.max_memory_allocated(device) - before) / 2**30,
                    "images_per_s": ips,
                }
                del trainer, batches
    return out


def gpu_section(work: Path, n_images: int = 1024) -> dict[str, Any]:
    device = torch.device("cuda")
    data_root = work / f"data_gpu_{n_images}"
    if not (data_root / "dataset.xlsx").is_file():
        print(f"generating {n_images} images in {data_root} ...", flush=True)
        generate(data_root, n=n_images, seed=0, size=384)
    run = compose_run([])
    table = load_dataset(data_root, read_annotations=True, duplicate_distance=run.data.duplicate_distance)
    props = torch.cuda.get_device_properties(device)
    results: dict[str, Any] = {
        "gpu": props.name,
        "gpu_memory_gib": props.total_memory / 2**30,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "n_images": len(table),
    }
    sections = {
        "throughput": lambda: throughput(table, device),
        "loader": lambda: loader_ceiling(table, device),
        "autoencoders": lambda: autoencoder_memory(device),
        "sync_and_compile": lambda: sync_and_compile(table, device),
    }
    for name, measure in sections.items():  # each section kept as soon as it is measured
        results[name] = measure()
        (work / "bench_gpu.partial.json").write_text(json.dumps(results, indent=2))
    return results
