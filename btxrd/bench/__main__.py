"""python -m btxrd.bench [--only cpu|gpu|allocator]: writes bench/bench.json (CPU), bench/bench_gpu.json (GPU),
bench/bench_allocator.json (the allocator A/B, only when asked for)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from btxrd.bench import cpu
from btxrd.config import project_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m btxrd.bench", description=cpu.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--only", choices=("cpu", "gpu", "allocator", "startup"), default=None,
                        help="one section (default: cpu and gpu)")
    parser.add_argument("--n", type=int, default=160, help="generated images (real sizes)")
    parser.add_argument("--model", default="b0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="training steps per measurement and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per figure, each in a fresh process")
    parser.add_argument("--cache-rounds", type=int, default=3, help="image cache builds (~35 s each)")
    parser.add_argument("--startup-rounds", type=int, default=3, help="cold + warm 2-job sweeps")
    parser.add_argument("--workdir", default=str(Path(project_root()) / "bench"))
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.only == "startup":
        results = cpu.startup(cpu.bench_data(args), work, args.startup_rounds)
        cpu.print_startup(results)
        _write(results, work / "bench_startup.json")
        return 0
    if args.only == "allocator":
        results = cpu.allocator_ab(args)
        cpu.print_allocator(results)
        _write(results, work / "bench_allocator.json")
        return 0
    if args.only in (None, "cpu"):
        results = cpu.cpu_section(args)
        _write(results, work / "bench.json")
        flagged = cpu.implausible(results)
        if flagged:
            print(f"error: physically impossible figures (end-to-end faster than model-only in every round): "
                  f"{', '.join(flagged)}; the measurement is wrong, not the loader", file=sys.stderr)  # fmt: skip
            return 1
    if args.only in (None, "gpu"):
        if not torch.cuda.is_available():
            print("no CUDA GPU here: GPU section skipped")
            return 0 if args.only is None else 1
        from btxrd.bench import gpu

        results = gpu.gpu_section(work)
        gpu.print_gpu(results)
        _write(results, work / "bench_gpu.json")
    return 0


def _write(results: dict, out: Path) -> None:
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    sys.exit(main())
