"""The CPU section of the benchmark: the data path against the model, on images of the release's real sizes.

Every ratio is measured within one run on the same machine state (the machine may
be shared and noisy; compare ratios, not absolute numbers across runs).

- model-only: training steps on uint8 batches already in memory;
- end-to-end: the same steps fed by the real loader (image cache, uint8 crops);
- naive: the same steps fed by a loader that decodes and resizes the JPEG every
  time (the usual torchvision/timm way); pipeline efficiency = loader / model-only;
- cache build vs a naive full decode + resize, images/s (and another input size, resized from
  the decoded source without decoding again);
- Grad-CAM cost per image relative to a forward pass;
- the cost of a run's confidence intervals (group bootstrap, 2,000 resamples, 600 images);
- the glibc allocator tunables suggested for this machine, A/B on model-only steps;
- per-job start-up in a real 2-job multirun (process start and job start to first step).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from btxrd.cam import grad_cam
from btxrd.config import compose_run, project_root
from btxrd.data.cache import cache_images, canvas_size
from btxrd.data.dataset import BTXRDImages, CropSettings
from btxrd.data.loaders import collate_batch
from btxrd.data.reader import load_dataset
from btxrd.data.synth import generate
from btxrd.engine import InputPipeline, InputSpec
from btxrd.models import build_model, cam_target
from btxrd.runtime.process import GLIBC_TUNABLES

# Width/height quantiles of the real release (shared/btxrd-reference/image_sizes.csv), used when that file is absent.
ROUNDS = 3
SOURCE_SIZE = 512  # the image cache's source canvas, as conf/data/btxrd.yaml sets it
REAL_SIZE_FALLBACK = [(1612, 2256), (2544, 3056), (555, 816), (1024, 1286), (3213, 2397), (1979, 4881), (336, 404)]


def real_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """n (width, height) pairs drawn from the real release's image sizes."""
    reference = Path(project_root()).parent / "shared" / "btxrd-reference" / "image_sizes.csv"
    rng = np.random.default_rng(seed)
    if reference.is_file():
        sizes = pd.read_csv(reference)[["width", "height"]].to_numpy()
        chosen = sizes[rng.choice(len(sizes), size=n, replace=False)]
        return [(int(w), int(h)) for w, h in chosen]
    return [REAL_SIZE_FALLBACK[i % len(REAL_SIZE_FALLBACK)] for i in range(n)]


class NaiveImages(Dataset):
    """Decode + resize the full JPEG on every access, then a random crop: the usual way."""

    def __init__(self, table: pd.DataFrame, image_size: int, seed: int = 0) -> None:
        self.paths, self.labels = table["path"].tolist(), table["label"].to_numpy()
        self.image_size, self.seed = image_size, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        rng = np.random.default_rng((self.seed, index))
        canvas = round(self.image_size * 1.15)
        with Image.open(self.paths[index]) as img:
            gray = img.convert("L").resize((canvas, canvas), Image.Resampling.BILINEAR)
        side = round(canvas * rng.uniform(0.7, 1.0))
        left, top = (int(rng.integers(0, canvas - side + 1)) for _ in range(2))
        crop = gray.crop((left, top, left + side, top + side)).resize((self.image_size,) * 2, Image.Resampling.BILINEAR)
        image = torch.from_numpy(np.asarray(crop).copy())[None]
        return image, int(self.labels[index]), torch.zeros(1, 1, 1, dtype=torch.uint8), False, index


def _train_steps(model, optimizer, batches, inputs: InputPipeline) -> float:
    """Images/s of training steps over ``batches`` (an iterable of (images, labels))."""
    seen = 0
    start = time.perf_counter()
    for images, labels in batches:
        loss = torch.nn.functional.cross_entropy(model(inputs(images)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    return seen / (time.perf_counter() - start)


def _limited(batches, steps: int):
    """(images, labels) of the next ``steps`` batches of a cycling loader."""
    for _ in range(steps):
        batch = next(batches)
        yield batch.images, batch.labels


def throughput(table: pd.DataFrame, cache_dir: Path, model_name: str, image_size: int, batch: int, steps: int):
    torch.manual_seed(0)
    model = build_model(compose_run([f"model={model_name}", "model.pretrained=false"]).model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = InputPipeline(torch.device("cpu"), InputSpec())  # normalisation does not change the cost
    memory = [(torch.randint(0, 256, (batch, 1, image_size, image_size), dtype=torch.uint8),
               torch.randint(0, 3, (batch,))) for _ in range(4)]  # fmt: skip
    _train_steps(model, optimizer, memory[:2], inputs)  # warm-up
    cache = cache_images(table, canvas_size(image_size, 1.15), cache_dir, source_size=SOURCE_SIZE)
    cached = BTXRDImages(table, cache, image_size, train=True, crop=CropSettings(0.7, 1.0, True))
    loader = _cycle(DataLoader(cached, batch_size=batch, shuffle=True, drop_last=True, num_workers=0,
                               collate_fn=collate_batch))  # fmt: skip
    naive_loader = _cycle(DataLoader(NaiveImages(table, image_size), batch_size=batch, shuffle=True, drop_last=True,
                                     collate_fn=collate_batch))  # fmt: skip
    # Interleaved rounds, median of each: the machine is shared, its speed drifts within a run.
    rounds: dict[str, list[float]] = {"model_only": [], "end_to_end": [], "naive": []}
    for _ in range(ROUNDS):
        rounds["model_only"].append(_train_steps(model, optimizer, [memory[i % 4] for i in range(steps)], inputs))
        rounds["end_to_end"].append(_train_steps(model, optimizer, _limited(loader, steps), inputs))
        rounds["naive"].append(_train_steps(model, optimizer, _limited(naive_loader, steps), inputs))
    model_only, end_to_end, naive = (float(np.median(rounds[k])) for k in ("model_only", "end_to_end", "naive"))
    # Grad-CAM vs a forward pass, per image, eval mode.
    x = inputs(memory[0][0])
    model.eval()
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(3):
            model(x)
        forward = (time.perf_counter() - start) / 3
    start = time.perf_counter()
    for _ in range(3):
        grad_cam(model, x, cam_target(model))
    cam = (time.perf_counter() - start) / 3
    return {"model_only_ips": model_only, "end_to_end_ips": end_to_end, "naive_ips": naive,
            "efficiency": end_to_end / model_only, "naive_efficiency": naive / model_only,
            "gradcam_over_forward": cam / forward}  # fmt: skip


def _cycle(loader: DataLoader):
    while True:
        yield from loader


def cache_build(table: pd.DataFrame, cache_dir: Path, image_size: int) -> dict[str, float]:
    """The first cache build of a sweep (decode to the source size, letterbox the run's canvas from it),
    on 1 thread and on every core; another input size from the same source; a naive decode + resize."""
    canvas = canvas_size(image_size, 1.15)
    results = {}
    for workers in (1, os.cpu_count() or 1):
        shutil.rmtree(cache_dir, ignore_errors=True)
        start = time.perf_counter()
        cache_images(table, canvas, cache_dir, workers=workers, source_size=SOURCE_SIZE)
        results[f"cache_build_ips_{workers}_threads"] = len(table) / (time.perf_counter() - start)
    start = time.perf_counter()
    cache_images(table, canvas_size(image_size + 32, 1.15), cache_dir, workers=1,
                 source_size=SOURCE_SIZE)  # no decoding: from the source
    results["cache_other_size_ips_1_thread"] = len(table) / (time.perf_counter() - start)
    start = time.perf_counter()
    for path in table["path"]:
        with Image.open(path) as img:
            img.convert("L").resize((canvas, canvas), Image.Resampling.BILINEAR)
    results["naive_decode_ips_1_thread"] = len(table) / (time.perf_counter() - start)
    results["cache_vs_naive_1_thread"] = results["cache_build_ips_1_threads"] / results["naive_decode_ips_1_thread"]
    results["cache_vs_naive_parallel"] = (
        results[f"cache_build_ips_{os.cpu_count() or 1}_threads"] / results["naive_decode_ips_1_thread"]
    )
    return results


def allocator_ab(image_size: int, batch: int, steps: int) -> dict[str, float]:
    """Model-only steps in fresh processes with and without the glibc tunables (set before start)."""
    code = (
        "import torch,time;from btxrd.models import build_model;from btxrd.config import compose_run;"
        "torch.manual_seed(0);m=build_model(compose_run(['model.pretrained=false']).model);"
        "o=torch.optim.AdamW(m.parameters());"
        f"x=torch.randn({batch},1,{image_size},{image_size});y=torch.randint(0,3,({batch},))\n"
        "def s():\n l=torch.nn.functional.cross_entropy(m(x),y);o.zero_grad();l.backward();o.step()\n"
        f"s();s();t=time.perf_counter()\nfor _ in range({steps}): s()\n"
        f"print({batch}*{steps}/(time.perf_counter()-t))"
    )
    measured: dict[str, list[float]] = {"default": [], "tunables": []}
    for _ in range(ROUNDS):  # interleaved A/B, fresh processes (glibc reads tunables at start-up)
        for name, extra in (("default", {}), ("tunables", {"GLIBC_TUNABLES": GLIBC_TUNABLES})):
            env = {**os.environ, **extra}
            if not extra:
                env.pop("GLIBC_TUNABLES", None)
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            measured[name].append(float(result.stdout.strip().splitlines()[-1]))
    out = {f"allocator_{name}_ips": float(np.median(values)) for name, values in measured.items()}
    out["allocator_ratio"] = out["allocator_tunables_ips"] / out["allocator_default_ips"]
    return out


def bootstrap_cost(n_images: int = 600, resamples: int = 2000, rounds: int = ROUNDS) -> dict[str, float]:
    """Seconds to give a 600-image test part every interval a run logs: the group bootstrap's weights,
    all classification metrics, three Grad-CAM means, two operating points (median of ``rounds``)."""
    from btxrd.data.schema import CLASS_NAMES
    from btxrd.metrics.uncertainty import (
        classification_replicates,
        group_bootstrap,
        mean_replicates,
        operating_point_replicates,
    )

    rng = np.random.default_rng(0)
    groups = np.sort(rng.integers(0, n_images // 2, n_images))  # patients with 1-4 views
    labels = rng.choice(3, n_images // 2 + 1, p=[0.5, 0.4, 0.1])[groups]
    logits = rng.normal(size=(n_images, 3)) + 2 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    cams = rng.random((n_images, 3))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        weights = group_bootstrap(groups, labels, resamples, seed=0)
        classification_replicates(labels, probs, weights, CLASS_NAMES)
        for column in cams.T:
            mean_replicates(column, weights)
        for threshold in (0.5, 0.7):
            operating_point_replicates(probs[:, 2], labels == 2, threshold, weights)
        times.append(time.perf_counter() - start)
    return {"bootstrap_seconds_median": float(np.median(times)), "bootstrap_seconds_min": float(min(times)),
            "bootstrap_seconds_max": float(max(times)), "bootstrap_images": n_images, "bootstrap_resamples": resamples}


def startup(data_root: Path, work: Path) -> dict[str, float]:
    """A real 2-job multirun on this dataset, run twice: cold (builds the image cache and the probe
    memo, as the first sweep on a dataset does) and warm (every later sweep). Start-up times are
    the ones the jobs log: job start and process start to the first training step."""
    out: dict[str, float] = {}
    for phase in ("cold", "warm"):
        args = [sys.executable, str(Path(project_root()) / "train.py"), "-m", "experiment=demo",
                f"data.root={data_root}", f"paths.root={work}", "train.epochs=1", "tracking.enabled=false",
                "annotations=on,off", "hydra.launcher.n_jobs=2",
                f"hydra.sweep.dir={work}/multirun/{phase}"]  # fmt: skip
        result = subprocess.run(args, capture_output=True, text=True, cwd=work)
        if result.returncode != 0:
            raise RuntimeError(f"start-up multirun failed:\n{result.stderr[-3000:]}")
        metrics = [json.loads(p.read_text()) for p in sorted(work.glob(f"multirun/{phase}/*/metrics_test.json"))]
        out[f"job_startup_seconds_{phase}"] = max(m["startup_seconds"] for m in metrics)
        out[f"process_startup_seconds_{phase}"] = max(m["process_startup_seconds"] for m in metrics)
    return out


def cpu_section(args: argparse.Namespace) -> dict[str, Any]:
    """The CPU benchmark (the module's docstring lists what it measures); prints its table."""
    work = Path(args.workdir)
    data_root = work / f"data_real_sizes_{args.n}"
    if not (data_root / "dataset.xlsx").is_file():
        print(f"generating {args.n} images of the release's real sizes in {data_root} ...", flush=True)
        generate(data_root, n=args.n, seed=0, image_sizes=real_sizes(args.n))
    table = load_dataset(data_root, read_annotations=False)
    threads = torch.get_num_threads()
    results: dict[str, Any] = {"model": args.model, "threads": threads, "batch": args.batch, "n_images": len(table),
                               "median_width": float(table["width"].median()),
                               "median_height": float(table["height"].median())}  # fmt: skip
    results.update(cache_build(table, work / "cache_build", max(args.sizes)))
    for size in args.sizes:
        print(f"measuring {args.model} at {size} px ...", flush=True)
        for key, value in throughput(table, work / "cache", args.model, size, args.batch, args.steps).items():
            results[f"{key}_{size}"] = value
    results.update(allocator_ab(min(args.sizes), args.batch, args.steps))
    results.update(bootstrap_cost())
    startup_work = work / "startup"
    shutil.rmtree(startup_work, ignore_errors=True)
    startup_work.mkdir(parents=True)
    results.update(startup(data_root, startup_work))

    print(f"\n{args.model}, {threads} threads, batch {args.batch}, {len(table)} images "
          f"(median {results['median_width']:.0f} x {results['median_height']:.0f} px)\n")  # fmt: skip
    print(f"{'input':>6} {'model-only':>11} {'end-to-end':>11} {'efficiency':>11} {'naive':>8} "
          f"{'naive eff.':>11} {'Grad-CAM/fwd':>13}")  # fmt: skip
    for size in args.sizes:
        r = {k.removesuffix(f"_{size}"): v for k, v in results.items() if k.endswith(f"_{size}")}
        print(f"{size:>4}px {r['model_only_ips']:>9.1f}/s {r['end_to_end_ips']:>9.1f}/s {r['efficiency']:>11.2f} "
              f"{r['naive_ips']:>6.1f}/s {r['naive_efficiency']:>11.2f} "
              f"{r['gradcam_over_forward']:>12.2f}x")  # fmt: skip
    cores = os.cpu_count() or 1
    print(f"\ncache build (decode once): {results['cache_build_ips_1_threads']:.1f} img/s on 1 thread, "
          f"{results[f'cache_build_ips_{cores}_threads']:.1f} on {cores}; naive decode+resize "
          f"{results['naive_decode_ips_1_thread']:.1f} img/s: {results['cache_vs_naive_1_thread']:.1f}x per thread, "
          f"{results['cache_vs_naive_parallel']:.1f}x as built; another input size from the same source: "
          f"{results['cache_other_size_ips_1_thread']:.0f} img/s on 1 thread")  # fmt: skip
    print(
        f"glibc tunables: {results['allocator_ratio']:.2f}x model-only throughput "
        f"({results['allocator_tunables_ips']:.1f} vs {results['allocator_default_ips']:.1f} img/s)"
    )
    print(f"confidence intervals of a {results['bootstrap_images']}-image test part, "
          f"{results['bootstrap_resamples']} group-bootstrap resamples: {results['bootstrap_seconds_median']:.2f} s "
          f"(min {results['bootstrap_seconds_min']:.2f}, max {results['bootstrap_seconds_max']:.2f})")  # fmt: skip
    for phase in ("cold", "warm"):
        print(f"start-up per job, 2-job multirun, {phase}: job start to first step "
              f"{results[f'job_startup_seconds_{phase}']:.1f} s, process start to first step "
              f"{results[f'process_startup_seconds_{phase}']:.1f} s")  # fmt: skip
    return results
