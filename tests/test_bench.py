"""How the benchmark judges and prints its figures (the measurements themselves: make bench)."""

from __future__ import annotations

import pytest

from btxrd.bench.common import described_efficiency, efficiency_finding, spread
from btxrd.bench.cpu import implausible


def test_a_figure_is_its_median_with_the_spread_of_its_rounds() -> None:
    figure = spread([3.0, 1.0, 2.0, 10.0])
    assert (figure["median"], figure["min"], figure["max"]) == (2.5, 1.0, 10.0)
    assert figure["rounds"] == [3.0, 1.0, 2.0, 10.0]


@pytest.mark.parametrize(
    ("ratios", "verdict", "printed"),
    [
        ([0.91, 0.95, 0.93], "loss", "0.93 (0.91-0.95)"),
        ([0.97, 1.04, 1.01], "no measurable loss", "~1, no loss measurable (0.97-1.04)"),
        ([1.09, 1.12, 1.15], "implausible", "IMPLAUSIBLE 1.12 (1.09-1.15)"),
    ],
)
def test_an_efficiency_above_1_is_never_printed_as_a_result(ratios: list[float], verdict: str, printed: str) -> None:
    finding = efficiency_finding(ratios)
    assert finding["verdict"] == verdict
    assert described_efficiency(finding).startswith(printed)
    results = {"throughput": {"128px": {"efficiency": finding, "naive_efficiency": efficiency_finding([0.5, 0.6])}}}
    assert implausible(results) == (["128px efficiency"] if verdict == "implausible" else [])


def _figure(median: float) -> dict:
    return spread([median * 0.9, median, median * 1.1])


def _saved_results(section: str, efficiency: list[float] | None = None) -> dict:
    """A results file as the benchmark saves it (its figures made up, its shape the real one)."""
    import torch

    from btxrd.bench.cpu import PHASES
    from btxrd.bench.tables import code_measured, made_by

    made = made_by(
        ["--only", section] if section != "cpu" else [], 1_795_000_000.0, torch.device("cpu"), code_measured()
    )
    phases = {mark: _figure(i + 1.0) for i, (mark, _) in enumerate(PHASES)}
    startup = {
        p: {**phases, "job_process": _figure(12.0), "total": _figure(20.0 if p == "cold" else 15.0)}
        for p in ("cold", "warm")
    }
    for p in ("cold", "warm"):  # sweep.prepare_data=false, in the same rounds
        startup[f"{p}_unprepared"] = {**phases, "job_process": _figure(14.0), "total": _figure(22.0)}
    startup["prepare_data_difference"] = {
        p: {"job_process": spread([-2.5, -2.0, -1.5]), "total": spread([-2.0, -1.0, 0.5])} for p in ("cold", "warm")
    }
    startup["import_floor"] = _figure(4.0)
    if section == "startup":
        return {**startup, "section": section, "made": made}
    if section == "allocator":
        ab = {
            "default_ips": _figure(22.0),
            "tunables_ips": _figure(23.0),
            "speedup": _figure(1.05),
            "speedup_geometric_mean_ci95": [0.91, 1.24],
        }
        return {"tunables": "glibc.malloc.top_pad=1", "b0 128 px": ab, "section": section, "made": made}
    if section == "sizes":
        model = {
            "image_size": 256,
            "base_channels": 64,
            "parameters": 23_900_000,
            "activation_bytes_per_image": 437 * 2**20,
            "activation_bytes_batch16": int(6.8 * 2**30),
            "activation_bytes_batch32": int(13.6 * 2**30),
            "weights_grads_adamw_bytes": 365 * 2**20,
        }
        return {"batches": [16, 32], "ae_residual": model, "section": section, "made": made}
    if section == "gpu":  # made on a GPU machine, its file brought back
        made.update({"machine.accelerator": "NVIDIA H100 80GB HBM3", "machine.cuda": "13.0"})
        model = {
            "size": 224,
            "batch": 256,
            "model_only_ips": _figure(4416.0),
            "end_to_end_ips": _figure(2751.0),
            "efficiency": _figure(0.62),
            "peak_memory_gib": 10.8,
            "timm_rtx3090": ["efficientnet_b0 @ 224", 1752],
        }
        autoencoders = {
            f"{m}_batch{b}_{p}": {"peak_gib": 12.7, "images_per_s": 291.0}
            for m in ("ae_residual", "ae_attention")
            for b in (16, 32)
            for p in ("fp32", "bf16")
        }
        sync = {
            "sync_every_1": _figure(4085.0),
            "sync_every_25": _figure(4321.0),
            "compiled": _figure(5202.0),
            "per_step_sync_cost": _figure(1.058),
            "compile_speedup": _figure(1.2),
            "compile_seconds": 77.0,
        }
        return {
            "gpu": "NVIDIA H100 80GB HBM3",
            "gpu_memory_gib": 79.2,
            "torch": "2.11.0+cu130",
            "cuda": "13.0",
            "cpu_threads": 16,
            "n_images": 1024,
            "throughput": {"loader_workers": 8, "b0": model},
            "loader": {"224px_plain": {"one_worker_ips": 1169.0, "8_workers_ips": 4130.0}},
            "sync_and_compile": sync,
            "autoencoders": autoencoders,
            "section": section,
            "made": made,
        }
    size = {
        "model_only_ips": _figure(24.7),
        "end_to_end_ips": _figure(23.4),
        "naive_ips": _figure(14.8),
        "gradcam_over_forward": _figure(1.22),
        "efficiency": efficiency_finding(efficiency or [0.9, 0.95]),
        "naive_efficiency": efficiency_finding([0.55, 0.6]),
        "device_feed_ips": _figure(24.1),
        "device_feed_efficiency": efficiency_finding([0.96, 0.98]),
    }
    cores = 2
    cache = {
        "cache_build_ips_1_threads": _figure(47.5),
        f"cache_build_ips_{cores}_threads": _figure(84.6),
        "naive_decode_ips_1_thread": _figure(29.7),
        "cache_vs_naive_1_thread": _figure(1.54),
        "cache_vs_naive_parallel": _figure(2.77),
        "cache_other_size_ips_1_thread": _figure(696.0),
        "parallel_threads": cores,
    }
    return {
        "model": "b0",
        "threads": 2,
        "batch": 16,
        "steps": 6,
        "rounds": 3,
        "cache_rounds": 3,
        "n_images": 160,
        "median_width": 1612.0,
        "median_height": 2256.0,
        "cache": cache,
        "throughput": {"128px": size},
        "bootstrap": {"seconds": _figure(0.24), "images": 600, "resamples": 2000},
        "startup": startup,
        "section": section,
        "made": made,
    }


def test_make_bench_writes_its_tables_into_their_blocks_with_how_they_were_made(tmp_path, capsys) -> None:
    import json

    from btxrd.bench.__main__ import main
    from btxrd.runtime.environment import cpu_model
    from btxrd.runtime.provenance import git_commit

    names = ("bench-cpu", "bench-startup", "bench-allocator", "autoencoder-sizes")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n" + "".join(f"<!-- evidence {n} -->\nold\n<!-- /evidence {n} -->\n" for n in names))
    for section in ("cpu", "allocator", "sizes"):
        saved = tmp_path / f"{section}.json"
        saved.write_text(json.dumps(_saved_results(section)))
        assert main(["--results", str(saved), "--page", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and "\nold\n" not in text
    cpu_block = text[text.index("<!-- evidence bench-cpu -->") : text.index("<!-- /evidence bench-cpu -->")]
    assert "Written by `python -m btxrd.bench` (`make bench`); do not edit by hand." in cpu_block
    assert f"- code: commit {git_commit()[:12]}" in cpu_block and f"- machine: {cpu_model()}" in cpu_block
    assert "- measured: 2026-11-18 " in cpu_block  # the time the measurement started, in UTC
    assert "CUDA" not in cpu_block  # torch's CUDA build is named only where a GPU computed the figures
    assert (
        "| 128 px | 24.7 (22.2-27.2) img/s | 23.4 (21.1-25.7) img/s | 0.93 (0.90-0.95) | 14.8 (13.3-16.3) img/s "
        "| 0.57 (0.55-0.60) | 1.22 (1.10-1.34)x |"
    ) in cpu_block
    assert "fed by `data.feed=device` (the batched crops of a GPU run, here on the CPU): 128 px 24.1" in cpu_block
    assert "47.5 (42.8-52.3) img/s on 1 thread" in cpu_block and "0.24 (0.22-0.26) s" in cpu_block
    assert "| **command start to the later job's first step** | 20.0 (18.0-22.0) | 15.0 (13.5-16.5) |" in text
    assert "importing timm alone (torch, torchvision and through it torch._dynamo)" in text
    assert "one process alone: 4.0 (3.6-4.4) s." in text
    assert (
        "Without the sweep's data preparation (`sweep.prepare_data=false`: the first job probes and decodes the "
        "dataset) in the same rounds, the job's process start to its first step: cold 14.0 (12.6-15.4)"
    ) in text
    assert "With minus without, round by round, command start to first step: cold -1.0 (-2.0 to +0.5) s" in text
    assert "`python -m btxrd.bench --only allocator`" in text
    assert "| b0 128 px | 22.0 (19.8-24.2) | 23.0 (20.7-25.3) | 1.05 (0.95-1.16) | [0.91, 1.24] |" in text
    assert "256 px, base 64, float32" in text
    assert "| ae_residual | 23.9 M | 437 MB | 6.8 GB | 13.6 GB | 365 MB |" in text
    # Again from the same file: the same README (a re-run's git diff shows only what moved)
    assert main(["--results", str(tmp_path / "allocator.json"), "--page", str(readme)]) == 0
    assert readme.read_text() == text

    # A file whose efficiency is impossible writes nothing; a file that is not a results file is one line
    impossible = tmp_path / "impossible.json"
    impossible.write_text(json.dumps(_saved_results("cpu", efficiency=[1.1, 1.2])))
    assert main(["--results", str(impossible), "--page", str(readme)]) == 1
    assert readme.read_text() == text and "physically impossible figures" in capsys.readouterr().err
    (tmp_path / "other.json").write_text("{}")
    from btxrd.cli import run_cli

    assert run_cli(lambda: main(["--results", str(tmp_path / "other.json"), "--page", str(readme)])) == 2
    assert capsys.readouterr().err.startswith(f"error: --results {tmp_path / 'other.json'}: not a results file")


def test_the_machine_line_names_cuda_only_for_a_gpu() -> None:
    from btxrd.report.render import machine_line

    tags = {"machine.cpu": "AMD EPYC", "machine.cores": "16", "machine.torch": "2.14.1+cu130", "machine.cuda": "13.0"}
    assert machine_line({**tags, "machine.accelerator": "none"}) == "AMD EPYC, 16 cores, no GPU; torch 2.14.1+cu130"
    assert machine_line({**tags, "machine.accelerator": "NVIDIA H100"}) == (
        "AMD EPYC, 16 cores, NVIDIA H100; torch 2.14.1+cu130, CUDA 13.0"
    )


def test_gpu_results_brought_back_write_the_gpu_block(tmp_path) -> None:
    import json

    from btxrd.bench.__main__ import main

    readme = tmp_path / "README.md"
    readme.write_text("<!-- evidence bench-gpu -->\nold\n<!-- /evidence bench-gpu -->\n")
    saved = tmp_path / "bench_gpu.json"
    saved.write_text(json.dumps(_saved_results("gpu")))
    assert main(["--results", str(saved), "--page", str(readme)]) == 0
    text = readme.read_text()
    assert "`python -m btxrd.bench --only gpu`" in text
    assert "NVIDIA H100 80GB HBM3; torch" in text and "CUDA 13.0" in text
    assert (
        "| b0 | 224 px | 256 | 4416 (3974-4858) | 2751 (2476-3026) | 0.62 (0.56-0.68) | 10.8 GiB | "
        "efficientnet_b0 @ 224: 1,752 |"
    ) in text
    assert "224px_plain: 1169 img/s per worker, 4130 with 8" in text and "`train.compile=true` 5202 img/s" in text
    assert "| ae_attention | " + " | ".join(["12.7 GiB, 291 img/s"] * 4) + " |" in text


def test_the_code_measured_is_the_code_when_the_run_started(tmp_path, monkeypatch) -> None:
    """A section's page write (or an edit while the benchmark runs) is not the measured code."""
    import json

    from btxrd.bench import cpu, tables
    from btxrd.bench.__main__ import main

    edited = []
    monkeypatch.setattr(tables, "git_commit", lambda: "0123456789abcdef")
    monkeypatch.setattr(tables, "code_version", lambda commit: commit + ("+e1e1e1e1e1" if edited else ""))

    def measured_while_edited() -> dict:
        edited.append(True)
        results = _saved_results("sizes")
        return {k: v for k, v in results.items() if k not in ("section", "made")}

    monkeypatch.setattr(cpu, "autoencoder_sizes", measured_while_edited)
    readme_file = tmp_path / "README.md"
    readme_file.write_text("<!-- evidence autoencoder-sizes -->\n<!-- /evidence autoencoder-sizes -->\n")
    assert main(["--only", "sizes", "--workdir", str(tmp_path), "--page", str(readme_file)]) == 0
    made = json.loads((tmp_path / "bench_sizes.json").read_text())["made"]
    assert made["code_version"] == "0123456789abcdef"
    assert "- code: commit 0123456789ab\n" in readme_file.read_text()


def test_the_start_up_rounds_leave_no_sweep_behind(tmp_path, monkeypatch) -> None:
    """Each round's sweeps keep checkpoints and logged models (3 GB for the default 3 rounds): only
    the figures stay."""
    from btxrd.bench import cpu

    def sweep(data_root, folder, phase, prepare_data):
        (folder / "multirun" / phase).mkdir(parents=True)
        (folder / "multirun" / phase / "best.pt").write_bytes(b"x" * 1000)
        return {"job_process": 9.0 if prepare_data else 11.0, "total": 14.0 if prepare_data else 16.0}

    monkeypatch.setattr(cpu, "startup_round", sweep)
    monkeypatch.setattr(cpu, "import_floor", lambda: 4.0)
    results = cpu.startup(tmp_path / "data", tmp_path, rounds=2)
    assert results["prepare_data_difference"]["cold"]["total"]["median"] == -2.0
    assert list((tmp_path / "startup").iterdir()) == []


@pytest.mark.integration  # a minute of test suite, benchmark and sweep on the CPU: make test-integration
@pytest.mark.slow
def test_make_gpu_check_rehearses_every_step_on_the_cpu_and_writes_the_gpu_block(tmp_path) -> None:
    """What a lent GPU machine's few minutes go to, rehearsed: the suite, the benchmark (both feeds), the
    grid, one results file that --results turns into the bench-gpu block."""
    import json
    import subprocess
    import sys

    from btxrd.bench.__main__ import main

    from .conftest import PROJECT_ROOT

    out = tmp_path / "gpu_check.json"
    command = [sys.executable, "-m", "btxrd.bench.gpucheck", "run", "--dry-run", "--budget-s", "400", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["suite"]["tests"] >= 3 and results["suite"]["failures"] == results["suite"]["errors"] == 0
    feeds = results["throughput"]["b0@16"]
    assert feeds["device_feed_ips"]["median"] > 0 and feeds["end_to_end_ips"]["median"] > 0
    assert [job["status"] for job in results["grid"]["jobs"]] == ["FINISHED", "FINISHED"]
    readme = tmp_path / "README.md"
    readme.write_text("<!-- evidence bench-gpu -->\nold\n<!-- /evidence bench-gpu -->\n")
    assert main(["--results", str(out), "--page", str(readme)]) == 0
    block = readme.read_text()
    assert "Written by `make gpu-check GPU_CHECK_ARGS=--dry-run`" in block
    assert "The test suite (`make test`'s selection) on this machine:" in block
    assert "end-to-end img/s (device feed)" in block and "2 of 2 jobs finished in" in block
