"""python -m btxrd.tracking close-stale [--tracking-uri URI] [--experiment NAME]: close runs left RUNNING."""

from __future__ import annotations

import argparse
import sys

from btxrd.cli import run_cli
from btxrd.tracking.mlflow_store import Tracker, default_tracking_uri
from btxrd.tracking.stale import __doc__ as stale_doc
from btxrd.tracking.stale import close_stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m btxrd.tracking", description=stale_doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    close = sub.add_parser("close-stale", help="close RUNNING runs whose process on this host is gone")
    close.add_argument("--tracking-uri", default=None, help="default: sqlite:///<project root>/mlflow.db")
    close.add_argument("--experiment", default=None, help="default: tracking.experiment of conf/")
    args = parser.parse_args(argv)
    from btxrd.config import compose_run, project_root

    experiment = args.experiment or compose_run().tracking.experiment
    tracker = Tracker(args.tracking_uri or default_tracking_uri(project_root()), experiment)
    closed = close_stale(tracker)
    for run in closed:
        print(f"closed KILLED: {run.info.run_id} {run.info.run_name} (pid {run.data.tags.get('btxrd.pid')})")
    print(f"{len(closed)} stale run(s) closed in {tracker.shown_uri}, experiment {experiment}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
