"""``make gpu-check``: what a GPU machine is lent for, in one command that fits in its minutes.

A GPU machine may be lent for about 15 minutes in all, its start included, with torch and timm but
without hydra-core, omegaconf or MLflow. So everything is prepared here: ``make gpu-wheels`` downloads
what it lacks as wheels into ``.whl/`` (carried with the working tree), and there ``make gpu-check``
installs them into a folder of its own and runs, within ``--budget-s`` (480 s by default):

1. the whole test suite (``make test``'s selection) on CUDA, beside the dataset's generation;
2. the GPU benchmark (``python -m btxrd.bench --only gpu``: model-only against end-to-end through loader
   workers and through the device feed, at the benchmark's and the product's batch sizes);
3. a real-size 12-run grid: 3,746 generated images of the release's sizes, ``model=b0,b3,resnet50_cbam
   split=stratified,center annotations=on,off`` at their own input sizes, ``model.pretrained=false``, a
   few epochs, several jobs per GPU, timed end to end, with each job's throughput.

Each step is written into the results file (``bench/gpu_check.json``) as soon as it ends, so a step cut
off by the budget still leaves the others; ``python -m btxrd.bench --results bench/gpu_check.json`` turns
it into the ``bench-gpu`` block of docs/performance.md. ``--dry-run`` runs the same steps, small, on the
CPU: a rehearsal here that costs no GPU time.

    python -m btxrd.bench.gpucheck wheels .whl
    python -m btxrd.bench.gpucheck run [--dry-run] [--budget-s 480] [--out bench/gpu_check.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from btxrd.cli import run_cli
from btxrd.config import project_root
from btxrd.errors import ConfigError

# What the GPU machines' image lacks of this project's needs (its package list: torch, timm, numpy, pandas,
# scipy, scikit-learn, matplotlib, statsmodels, Pillow, OpenCV, filelock, tqdm, requests, PyYAML are there),
# at the versions this project is tested with here.
GPU_MACHINE_LACKS = (
    "hydra-core",
    "omegaconf",
    "antlr4-python3-runtime",
    "hydra-joblib-launcher",
    "mlflow-skinny",
    "sqlalchemy",
    "alembic",
    "mako",
    "openpyxl",
    "et-xmlfile",
    "imagehash",
    "pywavelets",
    "pydicom",
    "cachetools",
    "databricks-sdk",
    "google-auth",
    "pyasn1",
    "pyasn1-modules",
    "gitpython",
    "gitdb",
    "smmap",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-proto",
    "opentelemetry-semantic-conventions",
    "sqlparse",
    "python-dotenv",
    "importlib-metadata",
    "cryptography",
    "cffi",
    "pycparser",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "annotated-doc",
    "greenlet",
)
GPU_PYTHON = "3.12"  # the GPU machines' python3
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
CARRY_LIMIT_MB = 60  # what travels with the working tree is at most 64 MiB
GRID = ["model=b0,b3,resnet50_cbam", "split=stratified,center", "annotations=on,off"]
RELEASE_IMAGES = 3746


def wheels(dest: Path) -> list[Path]:
    """``GPU_MACHINE_LACKS`` as wheels for the GPU machines' Python, at this environment's versions."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    for name in GPU_MACHINE_LACKS:
        try:
            pinned = f"{name}=={importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue  # not needed by this environment either (an optional extra)
        if name == "antlr4-python3-runtime":  # published as a source archive only: built here (pure Python)
            command = [*pip, "wheel", "--no-deps", "-q", "-w", str(dest), pinned]
        else:
            platforms = [flag for p in PLATFORMS for flag in ("--platform", p)]
            command = [
                *pip,
                "download",
                "--no-deps",
                "-q",
                "--only-binary=:all:",
                "--python-version",
                GPU_PYTHON,
                "--implementation",
                "cp",
                *platforms,
                "-d",
                str(dest),
                pinned,
            ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"gpu-wheels: {pinned} could not be fetched: {done.stderr.strip().splitlines()[-1:]}")
    found = sorted(dest.glob("*.whl"))
    size = sum(p.stat().st_size for p in found) / 2**20
    if size > CARRY_LIMIT_MB:
        raise ConfigError(f"gpu-wheels: {size:.0f} MB of wheels in {dest}, over the {CARRY_LIMIT_MB} MB that travel")
    print(f"{len(found)} wheels, {size:.1f} MB, in {dest}")
    return found


class Budget:
    """The seconds left of the whole check; each step gets a share of what is left."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def share(self, fraction: float) -> float:
        return max(10.0, (self.deadline - time.monotonic()) * fraction)


def _timed(command: list[str], timeout: float, log: Path, env: dict[str, str]) -> tuple[int | None, float]:
    """(exit status or None when the budget cut it off, seconds); its output in ``log``."""
    start = time.monotonic()
    with open(log, "w") as output:
        try:
            code: int | None = subprocess.run(
                command, stdout=output, stderr=subprocess.STDOUT, timeout=timeout, env=env, cwd=project_root()
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
    return code, time.monotonic() - start


def _suite(dry_run: bool, timeout: float, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """The test suite, as ``make test`` selects it (``--dry-run``: the GPU settings' tests alone)."""
    report = work / "suite.xml"
    selection = ["tests/test_gpu_settings.py", "-m", "not slow"] if dry_run else ["-m", "not integration"]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *selection]
    code, seconds = _timed(command, timeout, work / "suite.log", env)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if report.is_file():
        import xml.etree.ElementTree as ElementTree

        root = ElementTree.parse(report).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        if suite is not None:
            counts = {key: int(suite.get(key, 0)) for key in counts}
    tail = (work / "suite.log").read_text(errors="replace").strip().splitlines()[-1:] if code != 0 else []
    return {**counts, "exit": code, "seconds": seconds, "cut_off": code is None, "last_line": "".join(tail)}


def _bench(dry_run: bool, timeout: float, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """The GPU benchmark's results (``--dry-run``: its throughput figures of one small model, on the CPU)."""
    if dry_run:
        code = (
            "import json, sys, torch; from pathlib import Path; from btxrd.bench import gpu; "
            "from btxrd.bench.common import bench_table; from btxrd.data.synth import generate; "
            "w = Path(sys.argv[1]); generate(w / 'data', n=64, seed=0, size=128); "
            "t = gpu.throughput(bench_table(w / 'data'), torch.device('cpu'), steps=2, epochs=1, "
            "models=(('b0', 64, 16),)); "
            "json.dump({'throughput': t, 'n_images': 64}, open(w / 'bench_gpu.json', 'w'))"
        )
        command = [sys.executable, "-c", code, str(work / "bench")]
    else:
        command = [sys.executable, "-m", "btxrd.bench", "--only", "gpu", "--no-write", "--workdir", str(work / "bench")]
    (work / "bench").mkdir(parents=True, exist_ok=True)
    exit_code, seconds = _timed(command, timeout, work / "bench.log", env)
    measured = work / "bench" / ("bench_gpu.json" if exit_code == 0 else "bench_gpu.partial.json")
    results = json.loads(measured.read_text()) if measured.is_file() else {}
    results.pop("made", None)
    results.pop("section", None)
    return {**results, "bench_exit": exit_code, "bench_seconds": seconds}


def _start_generating(dry_run: bool, work: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    """The grid's dataset, generated in a process of its own while the suite runs."""
    data_root = work / "grid_data"
    n = 160 if dry_run else RELEASE_IMAGES
    code = (
        "import os, sys; from btxrd.bench.cpu import real_sizes; from btxrd.data.synth import generate; "
        "n = int(sys.argv[2]); small = sys.argv[3] == '1'; "
        "generate(sys.argv[1], n=n, seed=0, size=160, image_sizes=None if small else real_sizes(n), "
        "workers=max(1, (os.cpu_count() or 2) // 2))"
    )
    with open(work / "generate.log", "w") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-c", code, str(data_root), str(n), "1" if dry_run else "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=project_root(),
        )
    return process, data_root


def _grid(dry_run: bool, timeout: float, work: Path, data_root: Path, env: dict[str, str]) -> dict[str, Any]:
    """The 12-run grid, timed from the command's start to its end; each job's figures from its run."""
    jobs = 2 if dry_run else 4
    sized = (
        ["debug=tiny", "model.image_size=32", "train.epochs=1"]
        if dry_run
        else ["model.pretrained=false", "train.epochs=3"]
    )
    grid = ["model=b0", "split=stratified", "annotations=on,off"] if dry_run else GRID
    command = [
        sys.executable,
        str(Path(project_root()) / "train.py"),
        "-m",
        *grid,
        *sized,
        f"data.root={data_root}",
        f"paths.root={work / 'grid'}",
        f"hydra.launcher.n_jobs={jobs}",
        f"train.jobs_per_gpu={jobs}",
        "tracking.log_model=false",
        "sweep.prepare_data=true",
    ]
    code, seconds = _timed(command, timeout, work / "grid.log", env)
    return {
        "command": " ".join(
            ["python train.py -m", *grid, *sized, f"hydra.launcher.n_jobs={jobs}", f"train.jobs_per_gpu={jobs}"]
        ),
        "exit": code,
        "cut_off": code is None,
        "wall_seconds": seconds,
        "n_jobs_at_once": jobs,
        "n_images": RELEASE_IMAGES if not dry_run else 160,
        "real_sizes": not dry_run,
        "jobs": _grid_jobs(work / "grid"),
    }


def _grid_jobs(paths_root: Path) -> list[dict[str, Any]]:
    """What each of the grid's jobs did: its status, epochs, images/s of training, seconds per epoch."""
    store = paths_root / "mlflow.db"
    if not store.is_file():
        return []
    from btxrd.tracking import Tracker, default_tracking_uri

    tracker = Tracker(default_tracking_uri(paths_root), "btxrd")
    client = tracker.client
    runs = client.search_runs([tracker.experiment_id], max_results=1000)
    out = []
    for run in runs:
        if "mlflow.parentRunId" not in run.data.tags:
            continue
        metrics = run.data.metrics
        history = client.get_metric_history(run.info.run_id, "epoch_seconds")
        out.append(
            {
                "name": run.info.run_name,
                "status": run.info.status,
                "epochs": int(metrics.get("epochs_run", 0)),
                "train_images_per_second": metrics.get("train_images_per_second", float("nan")),
                "mean_epoch_seconds": (sum(m.value for m in history) / len(history)) if history else float("nan"),
                "startup_seconds": metrics.get("startup_seconds", float("nan")),
                "test_macro_f1": metrics.get("test_macro_f1", float("nan")),
            }
        )
    return sorted(out, key=lambda job: job["name"])


def check(out: Path, dry_run: bool, budget_s: float) -> dict[str, Any]:
    """The whole check (the module's docstring); the results, also written to ``out`` after every step."""
    import torch

    from btxrd.bench.tables import code_measured, made_by

    if not dry_run and not torch.cuda.is_available():
        raise ConfigError("gpu-check: no CUDA GPU here (--dry-run rehearses it on the CPU)")
    budget, started = Budget(budget_s), time.time()
    work = out.parent / "gpu_check"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    device = torch.device("cuda" if not dry_run else "cpu")
    results: dict[str, Any] = {"section": "gpu", "dry_run": dry_run, "budget_s": budget_s}
    code = code_measured()

    def save(step: str) -> None:
        results["made"] = made_by([], started, device, code)
        results["made"]["command"] = "make gpu-check" + (" GPU_CHECK_ARGS=--dry-run" if dry_run else "")
        out.write_text(json.dumps(results, indent=2))
        print(f"gpu-check: {step} done, {time.time() - started:.0f} s in; {out}", flush=True)

    generating, data_root = _start_generating(dry_run, work, env)
    results["suite"] = _suite(dry_run, budget.share(0.35), work, env)
    save("test suite")
    results.update(_bench(dry_run, budget.share(0.45), work, env))
    if not dry_run:
        props = torch.cuda.get_device_properties(device)
        results.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda)
    save("benchmark")
    generating.wait(timeout=budget.share(0.5))
    results["grid"] = _grid(dry_run, budget.share(1.0), work, data_root, env)
    save("grid")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m btxrd.bench.gpucheck", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    carry = sub.add_parser("wheels", help="download what the GPU machine lacks, as wheels")
    carry.add_argument("dest", type=Path)
    run = sub.add_parser("run", help="the check (on a GPU machine; --dry-run: a rehearsal on the CPU)")
    run.add_argument("--out", type=Path, default=Path(project_root()) / "bench" / "gpu_check.json")
    run.add_argument("--dry-run", action="store_true")
    run.add_argument("--budget-s", type=float, default=480.0)
    args = parser.parse_args(argv)
    if args.command == "wheels":
        wheels(args.dest)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = check(args.out, args.dry_run, args.budget_s)
    suite, grid = results["suite"], results["grid"]
    print(
        f"suite: {suite['tests']} tests, {suite['failures']} failed, {suite['errors']} errors "
        f"({suite['seconds']:.0f} s); grid: {len(grid['jobs'])} jobs in {grid['wall_seconds']:.0f} s "
        f"(exit {grid['exit']})"
    )
    return 0 if suite["exit"] == 0 and grid["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
