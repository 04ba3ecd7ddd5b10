"""Sweep report: one row per job of a multirun, as CSV, Markdown and a bar chart.

Written when a multirun ends (by the sweep callback) and on demand:

    python -m btxrd.report multirun/2026-11-22/10-00-00     # a sweep folder
    python -m btxrd.report <parent run id> [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from btxrd.cli import run_cli
from btxrd.errors import ConfigError
from btxrd.tasks import task_names, task_type
from btxrd.tracking import Tracker


def _columns() -> dict[str, str]:
    """Test metric -> column title, over every task."""
    return {key: title for name in task_names() for key, title in task_type(name).report_columns.items()}


def report_rows(tracker: Tracker, parent_id: str) -> pd.DataFrame:
    columns = _columns()
    rows = []
    for run in tracker.children(parent_id):
        metrics, tags = run.data.metrics, run.data.tags
        end = run.info.end_time or run.info.start_time
        row = {
            "job": int(tags.get("job_num", -1)),
            "run": run.info.run_name,
            "model": tags.get("model", ""),
            "split": tags.get("split", ""),
            "annotations": tags.get("annotations", ""),
            "task": tags.get("task", ""),
            "status": "SKIPPED" if tags.get("skipped") == "true" else run.info.status,
        }
        for key in columns:
            row[key] = metrics.get(key, math.nan)
        row["params"] = tags.get("trial_params", "")  # the values a search (Optuna) picked
        row["epochs"] = metrics.get("epochs_run", math.nan)
        row["minutes"] = round((end - run.info.start_time) / 60000, 2)
        row["error"] = tags.get("error", "").splitlines()[0][:200] if tags.get("error") else ""
        if tags.get("skipped_for"):
            row["error"] = f"finished earlier as run {tags['skipped_for']}"
        row["run_id"] = run.info.run_id
        rows.append(row)
    order = ["job", "run", "model", "split", "annotations", "task", "status", *columns, "params", "epochs", "minutes",
             "error", "run_id"]  # fmt: skip
    return pd.DataFrame(rows, columns=order).sort_values("job").reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """A Markdown table of the report (metric columns that are empty for every job are left out)."""
    metric_names = _columns()
    shown = [c for c in metric_names if c in table and table[c].notna().any()]
    searched = bool(table["params"].fillna("").astype(bool).any())
    headers = ["job", "run", "status", *(["params"] if searched else []), *[metric_names[c] for c in shown]]
    headers += ["epochs", "minutes", "error"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in table.iterrows():
        cells = [str(row["job"]), row["run"], row["status"], *([row["params"]] if searched else [])]
        cells += ["" if pd.isna(row[c]) else f"{row[c]:.3f}" for c in shown]
        cells += ["" if pd.isna(row["epochs"]) else str(int(row["epochs"])), f"{row['minutes']:.1f}", row["error"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_report(table: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [task_type(name) for name in table["task"].unique() if name in task_names()]
    metrics = list(dict.fromkeys(m for task in tasks for m in task.chart_metrics))
    unit = " / ".join(dict.fromkeys(task.chart_unit for task in tasks)) or "test score"
    labels = [f"{j}: {r}" for j, r in zip(table["job"], table["run"], strict=True)]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(table) + 3), 4.5), dpi=110)
    width = 0.8 / len(metrics)
    for k, metric in enumerate(metrics):
        values = table[metric].fillna(0).to_numpy()
        ax.bar([i + k * width for i in range(len(table))], values, width=width, label=metric.removeprefix("test_"))
    for i, status in enumerate(table["status"]):
        if status not in ("FINISHED", "SKIPPED"):
            ax.text(i, 0.02, status, rotation=90, color="red", fontsize=8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(table))])
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(unit)
    ax.legend(fontsize=8)
    ax.set_title("sweep report")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(tracker: Tracker, parent_id: str, out_dir: str | Path) -> pd.DataFrame:
    """Write sweep_report.{csv,md,png} to ``out_dir`` and log them to the parent run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = report_rows(tracker, parent_id)
    table.to_csv(out_dir / "sweep_report.csv", index=False)
    markdown = to_markdown(table)
    for name in table["task"].unique():
        if name in task_names() and task_type(name).report_notes:
            markdown += "\n" + task_type(name).report_notes
    paths = [out_dir / "sweep_report.csv", out_dir / "sweep_report.md"]
    search = out_dir / "optimization_results.yaml"  # written by the Optuna sweeper when it ends
    if search.is_file():
        best = OmegaConf.to_container(OmegaConf.load(search))
        if "best_value" in best:
            params = " ".join(f"{k}={v}" for k, v in best["best_params"].items())
            tracker.set_tags(parent_id, {"best_value": str(best["best_value"]), "best_params": params})
            markdown = f"Search result: best value {best['best_value']:.4f} with {params}\n\n" + markdown
        paths.append(search)
    (out_dir / "sweep_report.md").write_text(markdown)
    if len(table):
        paths.append(plot_report(table, out_dir / "sweep_report.png"))
    for path in paths:
        tracker.log_artifact(parent_id, path, "report")
    return table


def find_parent(tracker: Tracker, target: str) -> tuple[str, Path]:
    """(parent run id, folder for the report) from a sweep folder or a parent run id."""
    folder = Path(target).expanduser()
    if folder.is_dir():
        sweep_dir = str(folder.resolve())
        runs = tracker.client.search_runs(
            [tracker.experiment_id], filter_string=f"tags.sweep = 'parent' and tags.sweep_dir = '{sweep_dir}'"
        )
        if not runs:
            raise ConfigError(f"no parent run for sweep folder {sweep_dir} in {tracker.uri}")
        return runs[0].info.run_id, folder
    run = tracker.find_run(target)
    if run is None:
        raise ConfigError(f"{target} is neither a sweep folder nor a run id in {tracker.uri}")
    return target, Path(run.data.tags.get("sweep_dir") or ".")


def main(argv: list[str] | None = None) -> int:
    from btxrd.config import project_root
    from btxrd.tracking import default_tracking_uri

    parser = argparse.ArgumentParser(prog="python -m btxrd.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("target", help="sweep folder (multirun/DATE/TIME) or parent run id")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///<project root>/mlflow.db")
    parser.add_argument("--experiment", default="btxrd")
    args = parser.parse_args(argv)
    tracker = Tracker(args.tracking_uri or default_tracking_uri(project_root()), args.experiment)
    parent_id, folder = find_parent(tracker, args.target)
    write_report(tracker, parent_id, folder)
    print((folder / "sweep_report.md").read_text())
    print(f"written to {folder}/sweep_report.{{csv,md,png}} and logged to run {parent_id}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
