"""python -m btxrd.bench [--only cpu|sizes|gpu|allocator|startup]: writes bench/bench.json (CPU, start-up
included), bench/bench_sizes.json (the autoencoders' memory), bench/bench_gpu.json (GPU), and
bench/bench_startup.json / bench_allocator.json (when asked for alone); and each section's tables into
the blocks of docs/performance.md and docs/autoencoders.md (``--no-write``: not; ``--results FILE``: from a
saved file, measuring nothing)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from btxrd.bench import cpu, tables
from btxrd.cli import run_cli
from btxrd.config import project_root
from btxrd.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m btxrd.bench", description=cpu.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        choices=("cpu", "sizes", "gpu", "allocator", "startup"),
        default=None,
        help="one section (default: cpu, sizes and gpu)",
    )
    parser.add_argument("--n", type=int, default=160, help="generated images (real sizes)")
    parser.add_argument("--model", default="b0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="training steps per measurement and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per figure, each in a fresh process")
    parser.add_argument("--cache-rounds", type=int, default=3, help="image cache builds (~35 s each)")
    parser.add_argument("--startup-rounds", type=int, default=3, help="cold + warm 2-job sweeps")
    parser.add_argument("--workdir", default=str(Path(project_root()) / "bench"))
    parser.add_argument(
        "--page",
        type=Path,
        default=None,
        help="the file whose blocks the tables are written into (default: the project page holding each)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the tables, write no page")
    parser.add_argument(
        "--results", type=Path, default=None, help="measure nothing: write the blocks of a saved results file"
    )
    args = parser.parse_args(argv)
    pages = {} if args.no_write else tables.block_pages(args.page)
    if args.results is not None:
        try:
            results = json.loads(args.results.read_text())
            section = results["section"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"--results {args.results}: not a results file of this benchmark ({exc})") from None
        return 0 if _report(section, results, pages) else 1
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    sections: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
        "startup": ("bench_startup.json", lambda: cpu.startup(cpu.bench_data(args), work, args.startup_rounds)),
        "allocator": ("bench_allocator.json", lambda: cpu.allocator_ab(args)),
        "cpu": ("bench.json", lambda: cpu.cpu_section(args)),
        "sizes": ("bench_sizes.json", cpu.autoencoder_sizes),
        "gpu": ("bench_gpu.json", lambda: _gpu_section(work)),
    }
    code = tables.code_measured()
    for section in [args.only] if args.only else ["cpu", "sizes", "gpu"]:
        if section == "gpu" and not torch.cuda.is_available():
            print("no CUDA GPU here: GPU section skipped")
            return 0 if args.only is None else 1
        file_name, measure = sections[section]
        started = time.time()
        results = measure()
        device = torch.device("cuda" if section == "gpu" else "cpu")
        results.update(section=section, made=tables.made_by(argv, started, device, code))
        (work / file_name).write_text(json.dumps(results, indent=2))
        print(f"\nwritten {work / file_name}")
        if not _report(section, results, pages):
            return 1
    return 0


def _gpu_section(work: Path) -> dict[str, Any]:
    from btxrd.bench import gpu  # CUDA only

    return gpu.gpu_section(work)


def _report(section: str, results: dict[str, Any], pages: dict[str, Path]) -> bool:
    """Print the section's tables and write them into their pages (none: only print); False (nothing
    written) when a figure is physically impossible."""
    flagged = cpu.implausible(results) if section == "cpu" else []
    if flagged:  # never a table
        print(
            f"error: physically impossible figures (end-to-end faster than model-only in every round): "
            f"{', '.join(flagged)}; the measurement is wrong, not the loader",
            file=sys.stderr,
        )
        return False
    for text in tables.blocks(section, results).values():
        print(f"\n{text}")
    if pages:
        tables.write(pages, section, results)
    return True


if __name__ == "__main__":
    sys.exit(run_cli(main))
