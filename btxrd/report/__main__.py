"""python -m btxrd.report SWEEP_FOLDER | PARENT_RUN_ID [--tracking-uri URI] [--experiment NAME]"""

from __future__ import annotations

import argparse
import sys

from btxrd.cli import run_cli
from btxrd.config import compose_run, project_root
from btxrd.report import __doc__ as report_doc
from btxrd.report.sweep import find_parent, write_report
from btxrd.tracking import Tracker, default_tracking_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m btxrd.report", description=report_doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", help="sweep folder (multirun/DATE/TIME) or parent run id")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///<project root>/mlflow.db")
    parser.add_argument("--experiment", default=None, help="default: tracking.experiment of conf/")
    args = parser.parse_args(argv)
    settings = compose_run()  # intervals and experiment as conf/ sets them
    tracker = Tracker(
        args.tracking_uri or default_tracking_uri(project_root()), args.experiment or settings.tracking.experiment
    )
    parent_id, folder = find_parent(tracker, args.target)
    write_report(tracker, parent_id, folder, settings.eval)
    print((folder / "sweep_report.md").read_text())
    print(
        f"written to {folder}/ (sweep_report.md, .csv, .png, sweep_configurations.csv, sweep_comparisons.csv) "
        f"and logged to run {parent_id}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
