"""Sweep report: every job with its intervals, seeds aggregated, and which differences are real.

Written when a multirun ends (by the sweep callback) and on demand:

    python -m btxrd.report multirun/2026-11-22/10-00-00     # a sweep folder
    python -m btxrd.report <parent run id> [--tracking-uri URI]

Files (in the sweep folder, and logged to the parent run under ``report/``):
``sweep_report.md`` (the tables), ``sweep_report.csv`` (one row per job, every metric
with its interval), ``sweep_configurations.csv`` (seeds aggregated), ``sweep_comparisons.csv``
(every tested difference), ``sweep_subgroups.csv`` (every job's metrics per subgroup of its test part),
``sweep_report.png`` (the chart, with error bars); of a cross-validation sweep, ``sweep_crossvalidation.csv``
(the fold ensemble and the out-of-fold results, ``report/crossval.py``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from btxrd.errors import ConfigError
from btxrd.report import render
from btxrd.report.crossval import cross_validation, parent_metrics
from btxrd.report.runs import (
    REPLICATE_AXES,
    collect_runs,
    load_per_image,
    load_subgroups,
    report_columns,
    runs_table,
    varied_choices,
)
from btxrd.report.stats import Replicates, comparisons, configurations, seed_summary
from btxrd.settings import EvalConfig
from btxrd.tracking import Tracker

FILES = (
    "sweep_report.md",
    "sweep_report.csv",
    "sweep_configurations.csv",
    "sweep_comparisons.csv",
    "sweep_subgroups.csv",
)


def write_report(tracker: Tracker, parent_id: str, out_dir: str | Path, evaluation: EvalConfig) -> pd.DataFrame:
    """Write the report's files to ``out_dir`` and log them to the parent run; the runs table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = collect_runs(tracker, parent_id)
    missing = load_per_image(tracker, records)
    load_subgroups(tracker, records, evaluation)
    columns = report_columns(records)
    varied = varied_choices(records)
    shown = [k for k in varied if k not in REPLICATE_AXES]
    runs = runs_table(records)
    configs = configurations(records)
    replicates = Replicates(evaluation)
    summary = seed_summary(configs, columns, shown, replicates)
    tested = comparisons(configs, replicates, shown)

    level = f"{evaluation.ci_level:.0%}"
    parent = tracker.find_run(parent_id)
    overrides = parent.data.tags.get("overrides", "") if parent is not None else ""
    markdown = [
        f"# Sweep report\n\nValues are test-part metrics with their {level} bootstrap intervals over "
        f"patient-proxy groups ({evaluation.n_bootstrap} resamples).\n",
        render.provenance_markdown(f"python train.py -m {overrides}".strip(), records),
        "## Runs\n",
        render.runs_markdown(runs, columns, varied),
        render.chance_markdown(records, columns, shown),
    ]
    if len(configs) < len(records) or any(len(c.runs) > 1 for c in configs):
        markdown += ["\n## Configurations (seeds aggregated)\n", render.seeds_markdown(summary, columns)]
    markdown += ["\n## Comparisons\n", render.comparisons_markdown(tested)]
    crossval, not_pooled = cross_validation(tracker, configs, columns, shown, evaluation)
    if not crossval.empty or not_pooled:
        markdown.append("\n## Cross-validation\n")
        if not crossval.empty:
            markdown.append(render.crossval_markdown(crossval, summary, columns))
            tracker.log_metrics(parent_id, parent_metrics(crossval))
        markdown += [f"- {problem}\n" for problem in not_pooled]
    subgroups = render.subgroup_rows(records)
    if not subgroups.empty:
        markdown += ["\n## Subgroups\n", render.subgroups_markdown(subgroups)]
    if missing:
        markdown += [
            "\nLeft out of the statistics (their per-image results could not be read):\n",
            *[f"- {problem}\n" for problem in missing],
        ]
    tasks = dict.fromkeys(r.task for r in records if r.task is not None)
    markdown += [f"\n{task.report_notes}" for task in tasks if task.report_notes]

    search = out_dir / "optimization_results.yaml"  # written by the Optuna sweeper when it ends
    paths = [out_dir / name for name in FILES]
    if search.is_file():
        best = OmegaConf.to_container(OmegaConf.load(search))
        if "best_value" in best:
            params = " ".join(f"{k}={v}" for k, v in best["best_params"].items())
            tracker.set_tags(parent_id, {"best_value": str(best["best_value"]), "best_params": params})
            markdown.insert(0, f"Search result: best value {best['best_value']:.4f} with {params}\n\n")
        paths.append(search)
    (out_dir / "sweep_report.md").write_text("\n".join(markdown))
    runs.to_csv(out_dir / "sweep_report.csv", index=False)
    summary.to_csv(out_dir / "sweep_configurations.csv", index=False)
    tested.to_csv(out_dir / "sweep_comparisons.csv", index=False)
    subgroups.to_csv(out_dir / "sweep_subgroups.csv", index=False)
    if not crossval.empty:
        crossval.to_csv(out_dir / "sweep_crossvalidation.csv", index=False)
        paths.append(out_dir / "sweep_crossvalidation.csv")
    chart_metrics = tuple(dict.fromkeys(m for task in tasks for m in task.chart_metrics))
    unit = " / ".join(dict.fromkeys(task.chart_unit for task in tasks)) or "test score"
    chart = render.plot(summary, records, chart_metrics, unit, out_dir / "sweep_report.png")
    for path in [*paths, *([chart] if chart else [])]:
        tracker.log_artifact(parent_id, path, "report")
    return runs


def find_parent(tracker: Tracker, target: str) -> tuple[str, Path]:
    """(parent run id, folder for the report) from a sweep folder or a parent run id."""
    folder = Path(target).expanduser()
    if folder.is_dir():
        sweep_dir = str(folder.resolve())
        runs = tracker.client.search_runs(
            [tracker.experiment_id], filter_string=f"tags.sweep = 'parent' and tags.sweep_dir = '{sweep_dir}'"
        )
        if not runs:
            raise ConfigError(f"no parent run for sweep folder {sweep_dir} in {tracker.shown_uri}")
        return runs[0].info.run_id, folder
    run = tracker.find_run(target)
    if run is None:
        raise ConfigError(f"{target} is neither a sweep folder nor a run id in {tracker.shown_uri}")
    return target, Path(run.data.tags.get("sweep_dir") or ".")
