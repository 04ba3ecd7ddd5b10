"""The CPU section of the benchmark: the data path against the model, on images of the release's real sizes.

Every figure is measured in several rounds, each in a fresh process (``btxrd.bench.rounds``), the
rounds of different figures interleaved; a figure is reported as its median with its min-max spread.
A ratio (efficiency, speed-up) is taken within one round, pair by pair, then summarised the same way.
The machine may be shared and noisy: compare ratios, not absolute numbers across runs.

- model-only: the product's training steps on uint8 batches already in memory;
- end-to-end: the same steps fed by the real loader (image cache, crops);
  efficiency = end-to-end / model-only, judged: a value above 1 beyond the spread is flagged;
- device feed: the same steps fed by ``data.feed=device`` (batched crops on the device; here the CPU);
- naive: the same steps fed by a loader that decodes and resizes the JPEG every time (the usual
  torchvision/timm way);
- the image cache's first build against a naive full decode + resize, images/s; another input size
  from the same source;
- Grad-CAM's cost per image relative to a forward pass;
- the cost of a run's confidence intervals (group bootstrap, 2,000 resamples, 600 images);
- start-up of a real 2-job multirun, cold (the first sweep: new tracking store, no image cache)
  and warm, from the command's start to each job's first training step, phase by phase;
- ``--only allocator``: an A/B of glibc allocator tunables on model-only steps (not in the default run).
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

from btxrd.bench.common import bench_table, efficiency_finding, spread
from btxrd.config import project_root
from btxrd.data.synth import generate

# Width/height quantiles of the real release (shared/btxrd-reference/image_sizes.csv), used when that file is absent.
REAL_SIZE_FALLBACK = [(1612, 2256), (2544, 3056), (555, 816), (1024, 1286), (3213, 2397), (1979, 4881), (336, 404)]
# Start-up phases, in order: (mark that ends the phase, what happens in it). The command's start is the first mark.
PHASES = (
    ("process_start", "launcher: interpreter, Hydra, config, parent run, starting the job's process"),
    ("job_start", "job process: interpreter and imports until the job function runs"),
    ("run_opened", "settings, config hash, checkpoint folder, MLflow run opened"),
    ("data_ready", "dataset read and checked, split, image cache"),
    ("model_built", "model built"),
    ("first_step", "loaders, optimiser, first training step"),
)
# Allocator tunables tried by `--only allocator`: the product no longer applies them (no gain beyond the noise;
# docs/performance.md)
GLIBC_TUNABLES = (
    "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184:glibc.malloc.top_pad=1073741824"
)


def real_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """n (width, height) pairs drawn from the real release's image sizes."""
    reference = Path(project_root()).parent / "shared" / "btxrd-reference" / "image_sizes.csv"
    rng = np.random.default_rng(seed)
    if reference.is_file():
        sizes = pd.read_csv(reference)[["width", "height"]].to_numpy()
        chosen = sizes[rng.choice(len(sizes), size=n, replace=False)]
        return [(int(w), int(h)) for w, h in chosen]
    return [REAL_SIZE_FALLBACK[i % len(REAL_SIZE_FALLBACK)] for i in range(n)]


def fresh_round(kind: str, params: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, float]:
    """One round of ``kind`` (btxrd.bench.rounds) in a new Python process; its figures."""
    command = [sys.executable, "-m", "btxrd.bench.rounds", kind, json.dumps(params)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=project_root())
    if result.returncode != 0:
        raise RuntimeError(f"benchmark round {kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarised(rounds: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Each figure of the rounds as its spread."""
    return {key: spread([r[key] for r in rounds]) for key in rounds[0]}


def throughput(data_root: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Per input size: model-only, end-to-end and naive images/s, efficiencies and Grad-CAM's cost."""
    rounds: dict[int, list[dict[str, float]]] = {size: [] for size in args.sizes}
    for index in range(args.rounds):  # interleaved: every size in every round
        for size in args.sizes:
            print(f"throughput at {size} px, round {index + 1} of {args.rounds} ...", flush=True)
            params = {
                "overrides": [f"model={args.model}", f"model.image_size={size}"],
                "size": size,
                "batch": args.batch,
                "steps": args.steps,
                "round": index,
                "data_root": str(data_root),
                "cache_dir": str(work / "cache"),
                "gradcam": True,
            }
            rounds[size].append(fresh_round("throughput", params))
    out: dict[str, Any] = {}
    for size, measured in rounds.items():
        figures: dict[str, Any] = summarised(measured)
        figures["efficiency"] = efficiency_finding([r["end_to_end_ips"] / r["model_only_ips"] for r in measured])
        figures["naive_efficiency"] = efficiency_finding([r["naive_ips"] / r["model_only_ips"] for r in measured])
        figures["device_feed_efficiency"] = efficiency_finding(
            [r["device_feed_ips"] / r["model_only_ips"] for r in measured]
        )
        out[f"{size}px"] = figures
    return out


def cache_build(data_root: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The image cache's first build and a naive decode, images/s; per-round speed-ups."""
    measured = []
    for index in range(args.cache_rounds):
        print(f"image cache build, round {index + 1} of {args.cache_rounds} ...", flush=True)
        measured.append(
            fresh_round(
                "cache_build",
                {"data_root": str(data_root), "cache_dir": str(work / "cache_build"), "size": max(args.sizes)},
            )
        )
    out: dict[str, Any] = summarised(measured)
    cores = os.cpu_count() or 1
    out["parallel_threads"] = cores  # the rounds' parallel build (btxrd.bench.rounds), named in the tables
    for name, threads in (("1_thread", 1), ("parallel", cores)):  # per round: the build over the naive decode
        out[f"cache_vs_naive_{name}"] = spread(
            [r[f"cache_build_ips_{threads}_threads"] / r["naive_decode_ips_1_thread"] for r in measured]
        )
    return out


def bootstrap_cost(n_images: int = 600, resamples: int = 2000, rounds: int = 5) -> dict[str, Any]:
    """Seconds to give a 600-image test part every interval a run logs: the group bootstrap's weights,
    all classification metrics, three Grad-CAM means, two operating points."""
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
    return {"seconds": spread(times), "images": n_images, "resamples": resamples}


def startup_round(data_root: Path, work: Path, phase: str, prepare_data: bool = True) -> dict[str, float]:
    """One 2-job multirun, as a user starts it: the seconds of each phase of the job that starts training
    last, from the command's start to its first training step (the phases add up to the total)."""
    args = [
        sys.executable,
        str(Path(project_root()) / "train.py"),
        "-m",
        "experiment=demo",
        f"data.root={data_root}",
        f"paths.root={work}",
        "train.epochs=1",
        "annotations=on,off",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={work}/multirun/{phase}",
        f"sweep.prepare_data={str(prepare_data).lower()}",
    ]
    command_start = time.time()
    result = subprocess.run(args, capture_output=True, text=True, cwd=work)
    if result.returncode != 0:
        raise RuntimeError(f"start-up multirun failed:\n{result.stderr[-3000:]}")
    jobs = [json.loads(p.read_text()) for p in sorted(work.glob(f"multirun/{phase}/*/startup.json"))]
    later = max(jobs, key=lambda job: job["first_step"])  # the phases of the job that starts training last
    marks = [command_start] + [later[mark] for mark, _ in PHASES]
    out = {mark: end - start for (mark, _), start, end in zip(PHASES, marks[:-1], marks[1:], strict=True)}
    out["job_process"] = later["first_step"] - later["process_start"]
    out["total"] = later["first_step"] - command_start
    return out


def import_floor() -> float:
    """Seconds for a fresh interpreter to import timm (torch, torchvision, and through it torch._dynamo):
    what any job that builds a timm model pays before its own code runs."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import timm"], check=True)
    return time.perf_counter() - start


def startup(data_root: Path, work: Path, rounds: int) -> dict[str, Any]:
    """Cold (a new project folder: new tracking store, no image cache or probe memo) then warm (the same
    folder again), ``rounds`` times, with the sweep's data preparation (the default) and without it
    (sweep.prepare_data=false), the two arms interleaved (which goes first alternates); the difference
    of the arms taken round by round; and the import floor, alone."""
    measured: dict[str, list[dict[str, float]]] = {"cold": [], "warm": [], "cold_unprepared": [], "warm_unprepared": []}
    floor = []
    for index in range(rounds):
        for prepare_data in (True, False) if index % 2 == 0 else (False, True):
            folder = work / "startup" / f"{index}_{'prepared' if prepare_data else 'unprepared'}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for phase in ("cold", "warm"):
                arm = phase if prepare_data else f"{phase}_unprepared"
                print(f"start-up of a 2-job sweep, {arm}, round {index + 1} of {rounds} ...", flush=True)
                measured[arm].append(startup_round(data_root, folder, phase, prepare_data))
            shutil.rmtree(folder, ignore_errors=True)  # its sweeps' checkpoints and models: about 250 MB
        floor.append(import_floor())
    gain = {
        phase: {
            figure: spread(
                [a[figure] - b[figure] for a, b in zip(measured[phase], measured[f"{phase}_unprepared"], strict=True)]
            )
            for figure in ("job_process", "total")
        }
        for phase in ("cold", "warm")
    }
    return {
        **{arm: summarised(values) for arm, values in measured.items()},
        "prepare_data_difference": gain,
        "import_floor": spread(floor),
    }


def allocator_ab(args: argparse.Namespace) -> dict[str, Any]:
    """Model-only steps with and without ``GLIBC_TUNABLES`` (glibc reads them only at start-up, so each
    arm is its own process), alternating which arm goes first; speed-up taken pair by pair."""
    configurations = {
        f"{args.model} {size} px": ([f"model={args.model}", f"model.image_size={size}"], size) for size in args.sizes
    }
    configurations["ae_attention 128 px"] = (
        [
            "task=reconstruct",
            "model=ae_attention",
            "model.image_size=128",
            "model.base_channels=16",
            "model.latent_channels=4",
        ],
        128,
    )
    out: dict[str, Any] = {"tunables": GLIBC_TUNABLES}
    plain = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    arms = {"default": plain, "tunables": {**plain, "GLIBC_TUNABLES": GLIBC_TUNABLES}}
    for name, (overrides, size) in configurations.items():
        measured: dict[str, list[float]] = {arm: [] for arm in arms}
        for index in range(args.rounds):
            print(f"allocator A/B, {name}, round {index + 1} of {args.rounds} ...", flush=True)
            order = list(arms) if index % 2 == 0 else list(reversed(arms))
            for arm in order:
                params = {"overrides": overrides, "size": size, "batch": args.batch, "steps": args.steps, "round": 0}
                measured[arm].append(fresh_round("throughput", params, env=arms[arm])["model_only_ips"])
        ratios = [t / d for d, t in zip(measured["default"], measured["tunables"], strict=True)]
        out[name] = {
            **{f"{arm}_ips": spread(v) for arm, v in measured.items()},
            "speedup": spread(ratios),
            "speedup_geometric_mean_ci95": geometric_mean_interval(ratios),
        }
    return out


def geometric_mean_interval(ratios: list[float]) -> list[float]:
    """95% t-interval of the geometric mean of paired ratios (log scale)."""
    from scipy import stats

    logs = np.log(ratios)
    low, high = stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=stats.sem(logs))
    return [float(np.exp(low)), float(np.exp(high))]


def bench_data(args: argparse.Namespace) -> Path:
    """The benchmark's dataset: ``args.n`` generated images of the release's real sizes (made once)."""
    data_root = Path(args.workdir) / f"data_real_sizes_{args.n}"
    if not (data_root / "dataset.xlsx").is_file():
        print(f"generating {args.n} images of the release's real sizes in {data_root} ...", flush=True)
        generate(data_root, n=args.n, seed=0, image_sizes=real_sizes(args.n))
    return data_root


def cpu_section(args: argparse.Namespace) -> dict[str, Any]:
    """The CPU benchmark (the module's docstring lists what it measures)."""
    work = Path(args.workdir)
    data_root = bench_data(args)
    table = bench_table(data_root)
    results: dict[str, Any] = {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "steps": args.steps,
        "rounds": args.rounds,
        "cache_rounds": args.cache_rounds,
        "n_images": len(table),
        "median_width": float(table["width"].median()),
        "median_height": float(table["height"].median()),
    }
    results["cache"] = cache_build(data_root, work, args)
    results["throughput"] = throughput(data_root, work, args)
    results["bootstrap"] = bootstrap_cost()
    results["startup"] = startup(data_root, work, args.startup_rounds)
    return results


def implausible(results: dict[str, Any]) -> list[str]:
    """The figures flagged as physically impossible (not results)."""
    return [
        f"{size} {name}"
        for size, r in results.get("throughput", {}).items()
        for name in ("efficiency", "naive_efficiency")
        if r[name]["verdict"] == "implausible"
    ]


def autoencoder_sizes(
    models: tuple[str, ...] = ("ae_residual", "ae_attention", "ae_attention_residual"),
    batches: tuple[int, ...] = (16, 32),
) -> dict[str, Any]:
    """Each autoencoder at its configured size (256 px, base 64, meant for a GPU): parameters and the
    activation memory of one float32 training step (btxrd.models.memory: counted, not timed, so one round)."""
    from btxrd.config import compose_run
    from btxrd.models import build_model
    from btxrd.models.memory import activation_bytes

    out: dict[str, Any] = {"batches": list(batches)}
    for name in models:
        print(f"autoencoder size: {name} ...", flush=True)
        settings = compose_run(["task=reconstruct", f"model={name}"]).model
        torch.manual_seed(0)
        model = build_model(settings)
        per_image, fixed = activation_bytes(model, settings.image_size)
        parameters = sum(p.numel() for p in model.parameters())
        out[name] = {
            "image_size": settings.image_size,
            "base_channels": settings.base_channels,
            "parameters": parameters,
            "activation_bytes_per_image": per_image,
            **{f"activation_bytes_batch{b}": fixed + per_image * b for b in batches},
            "weights_grads_adamw_bytes": 4 * parameters * 4,
        }
    return out
