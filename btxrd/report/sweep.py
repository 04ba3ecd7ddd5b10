"""The sweep report written (the package docstring lists its files) and a sweep's parent run found."""

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
    crossval, not_pooled = cross_validation(tracker, configs, columns, shown, evaluation)
    if not crossval.empty:
        tracker.log_metrics(parent_id, parent_metrics(crossval))
    subgroups = render.subgroup_rows(records)
    tasks = dict.fromkeys(r.task for r in records if r.task is not None)

    parent = tracker.find_run(parent_id)
    overrides = parent.data.tags.get("overrides", "") if parent is not None else ""
    markdown = [
        f"# Sweep report\n\nValues are test-part metrics with their {evaluation.ci_level:.0%} bootstrap intervals "
        f"over patient-proxy groups ({evaluation.n_bootstrap} resamples).\n",
        render.provenance_markdown(f"python train.py -m {overrides}".strip(), records),
        "## Runs\n",
        render.runs_markdown(runs, columns, varied),
        render.chance_markdown(records, columns, shown),
    ]
    if len(configs) < len(records) or any(len(c.runs) > 1 for c in configs):
        markdown += ["\n## Configurations (seeds aggregated)\n", render.seeds_markdown(summary, columns)]
    markdown += ["\n## Comparisons\n", render.comparisons_markdown(tested)]
    if not crossval.empty or not_pooled:
        markdown.append("\n## Cross-validation\n")
        if not crossval.empty:
            markdown.append(render.crossval_markdown(crossval, summary, columns))
        markdown += [f"- {problem}\n" for problem in not_pooled]
    if not subgroups.empty:
        markdown += ["\n## Subgroups\n", render.subgroups_markdown(subgroups)]
    if missing:
        markdown += [
            "\nLeft out of the statistics (their per-image results could not be read):\n",
            *[f"- {problem}\n" for problem in missing],
        ]
    markdown += [f"\n{task.report_notes}" for task in tasks if task.report_notes]
    search_file = out_dir / "optimization_results.yaml"  # written by the Optuna sweeper when it ends
    searched = search_file.is_file()
    if searched and (search := _search_result(tracker, parent_id, search_file)):
        markdown.insert(0, search)

    (out_dir / "sweep_report.md").write_text("\n".join(markdown))
    tables = {
        "sweep_report.csv": runs,
        "sweep_configurations.csv": summary,
        "sweep_comparisons.csv": tested,
        "sweep_subgroups.csv": subgroups,
    }
    if not crossval.empty:
        tables["sweep_crossvalidation.csv"] = crossval
    for name, table in tables.items():
        table.to_csv(out_dir / name, index=False)
    chart_metrics = tuple(dict.fromkeys(m for task in tasks for m in task.chart_metrics))
    unit = " / ".join(dict.fromkeys(task.chart_unit for task in tasks)) or "test score"
    chart = render.plot(summary, records, chart_metrics, unit, out_dir / "sweep_report.png")
    logged = ["sweep_report.md", *tables, *([search_file.name] if searched else [])]
    for path in [*(out_dir / name for name in logged), *([chart] if chart else [])]:
        tracker.log_artifact(parent_id, path, "report")
    return runs


def _search_result(tracker: Tracker, parent_id: str, search_file: Path) -> str:
    """A hyper-parameter search's best value and parameters (``search_file``: the Optuna sweeper's
    ``optimization_results.yaml``), tagged on the parent run; the report's first line, or ''."""
    best = OmegaConf.to_container(OmegaConf.load(search_file))
    if "best_value" not in best:
        return ""
    params = " ".join(f"{k}={v}" for k, v in best["best_params"].items())
    tracker.set_tags(parent_id, {"best_value": str(best["best_value"]), "best_params": params})
    return f"Search result: best value {best['best_value']:.4f} with {params}\n\n"


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
