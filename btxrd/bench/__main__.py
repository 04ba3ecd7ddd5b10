"""python -m btxrd.bench [--only cpu|gpu]: writes bench/bench.json (CPU) and bench/bench_gpu.json (GPU)."""

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
    parser.add_argument("--only", choices=("cpu", "gpu"), default=None, help="one section (default: both)")
    parser.add_argument("--n", type=int, default=160, help="generated images (real sizes)")
    parser.add_argument("--model", default="b0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="training steps per measurement round")
    parser.add_argument("--workdir", default=str(Path(project_root()) / "bench"))
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "cpu"):
        out = work / "bench.json"
        out.write_text(json.dumps(cpu.cpu_section(args), indent=2))
        print(f"\nwritten {out}")
    if args.only in (None, "gpu"):
        if not torch.cuda.is_available():
            print("no CUDA GPU here: GPU section skipped")
            return 0 if args.only is None else 1
        from btxrd.bench import gpu

        results = gpu.gpu_section(work)
        gpu.print_gpu(results)
        out = work / "bench_gpu.json"
        out.write_text(json.dumps(results, indent=2))
        print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
