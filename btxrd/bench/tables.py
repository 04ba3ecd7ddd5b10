"""The benchmark's tables as the documentation shows them, written there by the benchmark itself.

Each results file (bench/bench.json, bench_sizes.json, bench_startup.json, bench_allocator.json,
bench_gpu.json) holds its section's name and how it was made (command, code, machine, when); ``blocks``
turns it into the blocks it measures, which ``make bench`` writes into the pages that hold them
(docs/performance.md, docs/autoencoders.md), and ``python -m btxrd.bench --results FILE`` writes again
from a saved file (a GPU machine's results brought back, say).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from btxrd.bench.common import described_efficiency, shown
from btxrd.bench.cpu import PHASES
from btxrd.config import project_root
from btxrd.report.blocks import closing, opening, page_holding, write_block
from btxrd.report.render import code_line, machine_line, markdown_table, utc
from btxrd.runtime.environment import machine_tags
from btxrd.runtime.provenance import code_version, git_commit

# the blocks of each section's results (the CPU section's results hold its start-up table too)
BLOCKS = {
    "cpu": ("bench-cpu", "bench-startup"),
    "startup": ("bench-startup",),
    "allocator": ("bench-allocator",),
    "sizes": ("autoencoder-sizes",),
    "gpu": ("bench-gpu",),
}


def code_measured() -> dict[str, str]:
    """The code a benchmark run measures, read before it starts: its own page writes (and any edit
    made while it runs) would otherwise count as uncommitted changes of a later section."""
    commit = git_commit()
    return {"mlflow.source.git.commit": commit, "code_version": code_version(commit=commit)}


def made_by(argv: list[str], started: float, device: torch.device, code: dict[str, str]) -> dict[str, Any]:
    """How a section's figures were made: its command, code (``code_measured``), machine and time
    (seconds since the epoch)."""
    return {
        "command": " ".join(["python -m btxrd.bench", *argv]),
        "started": started,
        "ended": time.time(),
        **machine_tags(device),
        **code,
    }


def blocks(section: str, results: dict[str, Any]) -> dict[str, str]:
    """The blocks of a section's results, by name."""
    made = results["made"]
    render = {
        "bench-cpu": lambda: _cpu(results),
        "bench-startup": lambda: _startup(results.get("startup", results)),
        "bench-allocator": lambda: _allocator(results),
        "autoencoder-sizes": lambda: _sizes(results),
        "bench-gpu": lambda: _gpu(results),
    }
    return {
        name: "\n".join([opening(name), *_provenance(made), "", render[name](), closing(name)])
        for name in BLOCKS[section]
    }


def block_pages(page: Path | None) -> dict[str, Path]:
    """Where each block is written: ``page``, or else the project page that holds it (found before any
    measuring: a block that no page holds fails at once, not after the benchmark)."""
    names = [name for section in BLOCKS.values() for name in section]
    return {name: page or page_holding(Path(project_root()), name) for name in names}


def write(pages: dict[str, Path], section: str, results: dict[str, Any]) -> None:
    """Write the section's blocks into their pages (``block_pages``)."""
    for name, text in blocks(section, results).items():
        write_block(pages[name], name, text)
        print(f"written to {pages[name]}: {name} (git diff shows what moved)")


def _provenance(made: dict[str, Any]) -> list[str]:
    make = " (`make bench`)" if made["command"] == "python -m btxrd.bench" else ""
    return [
        f"Written by `{made['command']}`{make}; do not edit by hand.",
        "",
        f"- code: commit {code_line(made)}",
        f"- machine: {machine_line(made)}",
        f"- measured: {utc(made['started'] * 1000)} to {utc(made['ended'] * 1000)}",
    ]


def _cpu(r: dict[str, Any]) -> str:
    settings = (
        f"{r['model']}, {r['threads']} threads, batch {r['batch']}, {r['steps']} steps per feed; "
        f"{r['n_images']} generated images of the release's real sizes (median {r['median_width']:.0f} x "
        f"{r['median_height']:.0f} px); median (min-max) of {r['rounds']} rounds in fresh "
        "processes:"
    )
    rows = [
        [
            f"{size.removesuffix('px')} px",
            f"{shown(t['model_only_ips'])} img/s",
            f"{shown(t['end_to_end_ips'])} img/s",
            described_efficiency(t["efficiency"]),
            f"{shown(t['naive_ips'])} img/s",
            described_efficiency(t["naive_efficiency"]),
            f"{shown(t['gradcam_over_forward'], 2)}x",
        ]
        for size, t in r["throughput"].items()
    ]
    table = markdown_table(
        [
            "input",
            "model-only",
            "end-to-end (cache)",
            "efficiency",
            "naive loader",
            "naive efficiency",
            "Grad-CAM / forward",
        ],
        rows,
    )
    fed = [
        f"{size.removesuffix('px')} px {shown(t['device_feed_ips'])} img/s, efficiency "
        f"{described_efficiency(t['device_feed_efficiency'])}"
        for size, t in r["throughput"].items()
        if "device_feed_ips" in t
    ]
    if fed:  # results made before the device feed existed have none
        table += (
            "\nThe same steps fed by `data.feed=device` (the batched crops of a GPU run, here on the CPU): "
            + "; ".join(fed)
            + ".\n"
        )
    c, b = r["cache"], r["bootstrap"]
    cores = c["parallel_threads"]  # os.cpu_count() in the rounds, not the affinity machine.cores counts
    cache = (
        f"Image cache, first build ({r['cache_rounds']} rounds): {shown(c['cache_build_ips_1_threads'])} img/s "
        f"on 1 thread, {shown(c[f'cache_build_ips_{cores}_threads'])} on {cores}, against "
        f"{shown(c['naive_decode_ips_1_thread'])} img/s for a naive full decode + resize on 1 thread: "
        f"{shown(c['cache_vs_naive_1_thread'], 2)}x per thread, {shown(c['cache_vs_naive_parallel'], 2)}x as "
        f"built. Another input size from the same source: {shown(c['cache_other_size_ips_1_thread'], 0)} img/s "
        f"on 1 thread. Confidence intervals of a {b['images']}-image test part ({b['resamples']:,} "
        f"group-bootstrap resamples, every interval a run logs): {shown(b['seconds'], 2)} s."
    )
    return f"{settings}\n\n{table}\n{cache}"


def _startup(s: dict[str, Any]) -> str:
    rounds = len(s["cold"]["total"]["rounds"])
    rows = [[what, shown(s["cold"][mark]), shown(s["warm"][mark])] for mark, what in PHASES]
    rows += [
        [
            "**the job's process start to its first step**",
            shown(s["cold"]["job_process"]),
            shown(s["warm"]["job_process"]),
        ],
        ["**command start to the later job's first step**", shown(s["cold"]["total"]), shown(s["warm"]["total"])],
    ]
    floor = (
        f"\nThe floor, in the same rounds: a fresh interpreter importing timm alone (torch, torchvision and "
        f"through it torch._dynamo), one process alone: {shown(s['import_floor'])} s.\n"
        if "import_floor" in s
        else ""
    )
    if "prepare_data_difference" in s:
        d, off = s["prepare_data_difference"], {phase: s[f"{phase}_unprepared"] for phase in ("cold", "warm")}
        floor += (
            f"\nWithout the sweep's data preparation (`sweep.prepare_data=false`: the first job probes and "
            f"decodes the dataset) in the same rounds, the job's process start to its first step: cold "
            f"{shown(off['cold']['job_process'])}, warm {shown(off['warm']['job_process'])}; command start "
            f"to the later job's first step: cold {shown(off['cold']['total'])}, warm "
            f"{shown(off['warm']['total'])}. With minus without, round by round, command start to first "
            f"step: cold {signed(d['cold']['total'])} s, warm {signed(d['warm']['total'])} s.\n"
        )
    return (
        f"{rounds} round{'s' if rounds > 1 else ''}, cold and warm interleaved; seconds, median (min-max):\n\n"
        + markdown_table(["phase", "cold", "warm"], rows)
        + floor
    )


def signed(figure: dict[str, Any]) -> str:
    """A difference measured in several rounds: ``median (min to max)`` with signs."""
    return f"{figure['median']:+.1f} ({figure['min']:+.1f} to {figure['max']:+.1f})"


def _allocator(r: dict[str, Any]) -> str:
    rows = []
    for name, figures in r.items():
        if not (isinstance(figures, dict) and "speedup" in figures):  # the tunables, how it was made
            continue
        low, high = figures["speedup_geometric_mean_ci95"]
        rows.append(
            [
                name,
                shown(figures["default_ips"]),
                shown(figures["tunables_ips"]),
                shown(figures["speedup"], 2),
                f"[{low:.2f}, {high:.2f}]",
            ]
        )
    return f"`GLIBC_TUNABLES={r['tunables']}`; model-only steps, each arm its own process:\n\n" + markdown_table(
        ["model", "default img/s", "with tunables img/s", "speed-up, median (min-max)", "geometric mean, 95% CI"], rows
    )


def _sizes(r: dict[str, Any]) -> str:
    models = {name: m for name, m in r.items() if isinstance(m, dict) and "parameters" in m}
    first = next(iter(models.values()))
    rows = [
        [
            name,
            f"{m['parameters'] / 1e6:.1f} M",
            f"{m['activation_bytes_per_image'] / 2**20:.0f} MB",
            *(f"{m[f'activation_bytes_batch{b}'] / 2**30:.1f} GB" for b in r["batches"]),
            f"{m['weights_grads_adamw_bytes'] / 2**20:.0f} MB",
        ]
        for name, m in models.items()
    ]
    return (
        f"{first['image_size']} px, base {first['base_channels']}, float32; activation memory of one training "
        "step from the tensors autograd saves (counted, linear in the batch; MB = MiB, GB = GiB):\n\n"
        + markdown_table(
            [
                "model",
                "parameters",
                "activations / image",
                *(f"batch {b}" for b in r["batches"]),
                "weights + grads + AdamW",
            ],
            rows,
        )
    )


def _gpu(r: dict[str, Any]) -> str:
    """The GPU section: what it holds of the benchmark's figures, and with ``make gpu-check``'s results the
    test suite on CUDA and the real-size grid."""
    parts = [_gpu_suite(r["suite"])] if "suite" in r else []
    if "throughput" in r:
        parts.append(_gpu_throughput(r))
    if "loader" in r and "sync_and_compile" in r:
        parts.append(_gpu_loader_and_syncs(r))
    if "autoencoders" in r:
        parts.append(_gpu_autoencoders(r["autoencoders"]))
    if "grid" in r:
        parts.append(_gpu_grid(r["grid"]))
    return "\n\n".join(parts)


def _gpu_suite(suite: dict[str, Any]) -> str:
    passed = suite["tests"] - suite["failures"] - suite["errors"] - suite["skipped"]
    outcome = "cut off by the time budget" if suite["cut_off"] else f"exit {suite['exit']}"
    return (
        f"The test suite (`make test`'s selection) on this machine: {passed} passed, {suite['failures']} failed, "
        f"{suite['errors']} errors, {suite['skipped']} skipped in {suite['seconds']:.0f} s ({outcome})."
        + (f" Last line: `{suite['last_line']}`" if suite.get("last_line") else "")
    )


def _gpu_throughput(r: dict[str, Any]) -> str:
    t = r["throughput"]
    workers = t["loader_workers"]
    machine = (
        f"On {r['gpu']} ({r['gpu_memory_gib']:.0f} GiB), CUDA {r['cuda']}" if "gpu" in r else "On the CPU (a rehearsal)"
    )
    settings = (
        f"{machine}; {r['n_images']:,} generated images; mixed precision where the device has it, "
        "channels_last, cuDNN autotuned; median (min-max) of the rounds:"
    )
    models = {name: f for name, f in t.items() if isinstance(f, dict) and "size" in f}
    fed = all("device_feed_ips" in f for f in models.values())  # results made before the device feed have none
    rows = [
        [
            f.get("model", name),
            f"{f['size']} px",
            str(f["batch"]),
            shown(f["model_only_ips"], 0),
            shown(f["end_to_end_ips"], 0),
            shown(f["efficiency"], 2),
            *((shown(f["device_feed_ips"], 0), shown(f["device_feed_efficiency"], 2)) if fed else ()),
            f"{shown_plain(f['peak_memory_gib'], 1)} GiB",
            f"{f['timm_rtx3090'][0]}: {f['timm_rtx3090'][1]:,}",
        ]
        for name, f in models.items()
    ]
    return (
        settings
        + "\n\n"
        + markdown_table(
            [
                "model",
                "input",
                "batch",
                "model-only img/s",
                f"end-to-end img/s ({workers} loader workers)",
                "efficiency",
                *(("end-to-end img/s (device feed)", "efficiency") if fed else ()),
                "peak GPU memory",
                "timm's RTX 3090 figure",
            ],
            rows,
        )
    )


def _gpu_loader_and_syncs(r: dict[str, Any]) -> str:
    workers = r["throughput"]["loader_workers"]
    loader = (
        "Loader alone: "
        + "; ".join(
            f"{k}: {v['one_worker_ips']:.0f} img/s per worker, {v[f'{workers}_workers_ips']:.0f} with {workers}"
            for k, v in r["loader"].items()
        )
        + "."
    )
    s = r["sync_and_compile"]
    return loader + (
        f" b0 224 px model-only: `train.sync_every=1` {s['sync_every_1']['median']:.0f}, 25 "
        f"{s['sync_every_25']['median']:.0f} img/s ({s['per_step_sync_cost']['median']:.3f}x); "
        f"`train.compile=true` {s['compiled']['median']:.0f} img/s "
        f"({s['compile_speedup']['median']:.2f}x, {s['compile_seconds']:.0f} s to compile)."
    )


def _gpu_autoencoders(measured: dict[str, Any]) -> str:
    variants = {
        "batch 16, float32": "batch16_fp32",
        "batch 16, bf16": "batch16_bf16",
        "batch 32, float32": "batch32_fp32",
        "batch 32, bf16": "batch32_bf16",
    }
    models = dict.fromkeys(key.split("_batch")[0] for key in measured)
    memory = markdown_table(
        ["model", *variants],
        [
            [
                model,
                *(
                    f"{measured[f'{model}_{v}']['peak_gib']:.1f} GiB, {measured[f'{model}_{v}']['images_per_s']:.0f} "
                    "img/s"
                    for v in variants.values()
                ),
            ]
            for model in models
        ],
    )
    return (
        "The autoencoders at their configured size (256 px, base 64), peak GPU memory of training steps (activations, "
        f"gradients, AdamW state, cuDNN workspaces):\n\n{memory}"
    )


def _gpu_grid(grid: dict[str, Any]) -> str:
    jobs = grid["jobs"]
    finished = sum(job["status"] == "FINISHED" for job in jobs)
    outcome = "cut off by the time budget" if grid["cut_off"] else f"exit {grid['exit']}"
    rows = [
        [
            job["name"],
            job["status"],
            str(job["epochs"]),
            shown_plain(job["train_images_per_second"], 0),
            shown_plain(job["mean_epoch_seconds"], 1),
            shown_plain(job["startup_seconds"], 1),
            shown_plain(job["test_macro_f1"], 3),
        ]
        for job in jobs
    ]
    data = f"{grid['n_images']:,} generated images" + (" of the release's real sizes" if grid["real_sizes"] else "")
    return (
        f"A grid on {data}, `{grid['command']}`: {finished} of {len(jobs)} jobs finished in "
        f"{grid['wall_seconds']:.0f} s from the command's start to its end ({outcome}), "
        f"{grid['n_jobs_at_once']} jobs at a time:\n\n"
        + markdown_table(
            ["job", "status", "epochs", "training img/s", "s per epoch", "start-up s", "test macro-F1"], rows
        )
    )


def shown_plain(value: float, digits: int) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"  # NaN: not measured
