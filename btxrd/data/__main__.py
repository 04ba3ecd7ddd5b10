"""``python -m btxrd.data check ROOT [--json]`` and ``python -m btxrd.data synth OUT --n N --seed S``."""

from __future__ import annotations

import argparse
import json
import sys

from btxrd.cli import run_cli
from btxrd.data.check import format_summary, summarise
from btxrd.data.limits import InputLimits
from btxrd.data.synth import generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m btxrd.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="summarise a BTXRD-format dataset and list its problems")
    check.add_argument("root", help="dataset root holding dataset.xlsx, images/ and Annotations/")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument("--on-bad-image", choices=("error", "skip"), default="error")
    check.add_argument(
        "--duplicate-distance",
        type=int,
        default=None,
        help="near-duplicate threshold in perceptual-hash bits (default: data.duplicate_distance "
        "in conf/data/btxrd.yaml); -1: identical files only",
    )
    synth = sub.add_parser("synth", help="generate a synthetic dataset in the release's format")
    synth.add_argument("out", help="output folder (created)")
    synth.add_argument("--n", type=int, required=True, help="number of images")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=256, help="long image side in pixels (centre 1)")
    args = parser.parse_args(argv)

    if args.command == "check":
        from btxrd.config import compose_run  # the configured values, so check and training agree

        data = compose_run().data
        distance = data.duplicate_distance if args.duplicate_distance is None else args.duplicate_distance
        summary = summarise(
            args.root,
            on_bad_image=args.on_bad_image,
            duplicate_distance=None if distance is not None and distance < 0 else distance,
            limits=InputLimits.of(data),
        )
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        return 0 if summary["usable"] else 1
    sheet = generate(args.out, n=args.n, seed=args.seed, size=args.size)
    print(f"wrote {len(sheet)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
