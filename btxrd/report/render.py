"""The sweep report as a reader sees it: Markdown tables and a chart with error bars."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from btxrd.report.runs import RunRecord
from btxrd.report.stats import ALPHA
from btxrd.runtime.software import ENVIRONMENT_DIGEST_TAG


def _value(value: float, low: float = math.nan, high: float = math.nan, digits: int = 3) -> str:
    if not np.isfinite(value):
        return ""
    text = f"{value:.{digits}f}"
    return f"{text} [{low:.{digits}f}, {high:.{digits}f}]" if np.isfinite(low) and np.isfinite(high) else text


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def utc(ms: float) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")


def _one_or_each(values: list[str]) -> str:
    """'x' when every job agrees; 'x (3 jobs), y (1 job)' when they do not."""
    counts = pd.Series(values).value_counts(sort=False)
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{v} ({n} job{'s' if n > 1 else ''})" for v, n in counts.items())


def code_line(made: dict[str, str]) -> str:
    """The commit of a run's tags (``mlflow.source.git.commit``, ``code_version``), and whether it had
    uncommitted changes."""
    commit, version = made.get("mlflow.source.git.commit", "unknown"), made.get("code_version", "")
    dirty = version.startswith(commit + "+")
    return f"{commit[:12]}{' with uncommitted changes (' + version.split('+')[1] + ')' if dirty else ''}"


def machine_line(made: dict[str, str]) -> str:
    """The machine of a run's ``machine.*`` tags (btxrd.runtime.environment.machine_tags)."""
    if "machine.cpu" not in made:
        return "not recorded (runs made before runs named their machine)"
    gpu = made.get("machine.accelerator", "none")
    # torch's CUDA build says nothing of numbers a CPU computed
    cuda = made.get("machine.cuda", "none") if gpu != "none" else "none"
    return (
        f"{made.get('machine.cpu', 'unknown CPU')}, {made.get('machine.cores', '?')} cores"
        f"{', ' + gpu if gpu != 'none' else ', no GPU'}; torch {made.get('machine.torch', '?')}"
        f"{', CUDA ' + cuda if cuda != 'none' else ''}"
    )


def environment_line(made: dict[str, str]) -> str:
    """The software of a run: the digest of its package list (``environment/requirements.txt``)."""
    digest = made.get(ENVIRONMENT_DIGEST_TAG)
    return f"packages {digest} (each run's environment/requirements.txt)" if digest else "not recorded"


def provenance_markdown(command: str, records: list[RunRecord]) -> str:
    """How the numbers were made, so a table copied elsewhere can be regenerated and diffed: the
    command, the code (commit, and whether it had uncommitted changes), the machine, the software, the dates."""
    made = [r.made_by for r in records if r.made_by]
    lines = [f"- command: `{command}`"]
    if made:
        lines += [
            f"- code: commit {_one_or_each([code_line(m) for m in made])}",
            f"- machine: {_one_or_each([machine_line(m) for m in made])}",
            f"- environment: {_one_or_each([environment_line(m) for m in made])}",
        ]
    times = [(r.started, r.ended) for r in records if np.isfinite(r.started)]
    if times:
        lines.append(f"- runs: {utc(min(t[0] for t in times))} to {utc(max(t[1] for t in times))}")
    return "\n".join(lines) + "\n"


def runs_markdown(runs: pd.DataFrame, columns: dict[str, str], varied: list[str]) -> str:
    """One row per job; each metric as value [95% interval] (metrics empty for every job are left out)."""
    shown = [c for c in columns if c in runs and runs[c].notna().any()]
    searched = bool(runs["params"].fillna("").astype(bool).any())
    headers = [
        "job",
        "run",
        "status",
        *(["params"] if searched else []),
        *[columns[c] for c in shown],
        "epochs",
        "minutes",
        "error",
    ]
    rows = []
    for _, r in runs.iterrows():
        cells = [str(r["job"]), r["run"], r["status"], *([r["params"]] if searched else [])]
        cells += [_value(r[c], r[f"{c}_ci_low"], r[f"{c}_ci_high"]) for c in shown]
        cells += ["" if pd.isna(r["epochs"]) else str(int(r["epochs"])), f"{r['minutes']:.1f}", r["error"]]
        rows.append(cells)
    return markdown_table(headers, rows)


def chance_markdown(records: list[RunRecord], columns: dict[str, str], shown: list[str]) -> str:
    """One line per distinct test part: what a model that learnt nothing scores on it, and how many of the
    runs scored on it clear that level by the whole of their interval (``Task.learnt_beyond``)."""
    parts: dict[tuple, list[RunRecord]] = {}
    for r in records:
        if r.per_image is not None and r.task is not None:
            parts.setdefault(tuple(r.per_image["image_id"]), []).append(r)
    lines = []
    for runs in parts.values():
        first = runs[0]
        levels = first.task.chance_levels(first.per_image)
        if not levels:
            continue
        part = ", ".join(f"{k}={v}" for k, v in first.choices.items() if k in shown and k.startswith("split")) or "the"
        values = ", ".join(f"{columns.get(k, k)} {v:.3f}" for k, v in levels.items())
        line = f"- {part} test part ({len(first.per_image)} images): {values}"
        judged = [k for k in first.task.learnt_beyond if k in levels]
        if judged:
            cleared = [r for r in runs if all(r.metrics.get(f"{k}_ci_low", math.nan) > levels[k] for k in judged)]
            missed = [r.name for r in runs if r not in cleared]
            line += (
                f". Runs whose whole interval lies above it on {', '.join(columns.get(k, k) for k in judged)}: "
                f"{len(cleared)} of {len(runs)}" + (f" (not: {', '.join(missed)})" if missed else "")
            )
        lines.append(line)
    if not lines:
        return ""
    return "Majority-class baseline (always the most frequent class):\n" + "\n".join(lines) + "\n"


def subgroup_rows(records: list[RunRecord]) -> pd.DataFrame:
    """Every usable run's subgroup results on its test part (``sweep_subgroups.csv``): job and run first."""
    tables = [
        r.subgroups.assign(job=r.job, run=r.name)[["job", "run", *r.subgroups.columns]]
        for r in records
        if r.subgroups is not None and not r.subgroups.empty
    ]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def subgroups_markdown(table: pd.DataFrame, metric: str = "macro-F1") -> str:
    """``metric`` per subgroup (rows) and job (columns): the estimate with its interval; '(n groups)'
    where the subgroup is too small for one; blank where the metric is not defined."""
    if table.empty:
        return ""
    chosen = table[table["metric"] == metric]
    jobs = list(dict.fromkeys(chosen["job"]))
    names = dict(zip(chosen["job"], chosen["run"], strict=False))
    rows = []
    for (attribute, value), by_job in chosen.groupby(["attribute", "value"], sort=False):
        cells = {}
        for _, row in by_job.iterrows():
            if not np.isfinite(row["estimate"]):
                cells[row["job"]] = ""
            elif np.isfinite(row["ci_low"]):
                cells[row["job"]] = f"{row['estimate']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
            else:
                cells[row["job"]] = f"{row['estimate']:.3f} ({row['n_groups']} groups)"
        n_images = sorted(set(by_job["n_images"]))
        rows.append([f"{attribute}: {value}", "/".join(map(str, n_images)), *(cells.get(j, "") for j in jobs)])
    header = ["subgroup", "images", *(f"job {j} ({names[j].replace(' | ', ', ')})" for j in jobs)]
    return (
        f"{metric} of each job's test part per subgroup, with its 95% interval over the subgroup's patient "
        "groups (a subgroup of fewer groups than 10 has none; every metric per subgroup in "
        "sweep_subgroups.csv):\n\n" + markdown_table(header, rows) + "\n"
    )


def crossval_markdown(table: pd.DataFrame, summary: pd.DataFrame, columns: dict[str, str]) -> str:
    """Per cross-validated configuration: its folds' mean ± sd, the fold ensemble and the out-of-fold results,
    each report metric with its 95% interval."""
    names = [key.removeprefix("test_") for key in columns]
    shown = [n for n in names if n in set(table["metric"])]
    rows = []
    for label, by_config in table.groupby("configuration", sort=False):
        k = int(by_config["folds"].iloc[0])
        matching = summary[summary["configuration"] == label]
        folds = matching.iloc[0] if len(matching) else pd.Series(dtype=float)
        spread = [(folds.get(f"test_{n}_mean", np.nan), folds.get(f"test_{n}_sd", np.nan)) for n in shown]
        rows.append(
            [
                label,
                f"{k} folds, mean ± sd",
                *(f"{m:.3f} ± {sd:.3f}" if np.isfinite(m) and np.isfinite(sd) else "" for m, sd in spread),
            ]
        )
        for kind in ("ensemble_test", "oof"):
            chosen = by_config[by_config["kind"] == kind].set_index("metric")
            if chosen.empty:
                continue
            what = "fold ensemble (test part)" if kind == "ensemble_test" else "out-of-fold (every non-test image)"
            rows.append(
                [
                    label,
                    f"{what}, {int(chosen['n_images'].iloc[0])} images",
                    *(
                        f"{chosen.loc[n, 'estimate']:.3f} [{chosen.loc[n, 'ci_low']:.3f}, "
                        f"{chosen.loc[n, 'ci_high']:.3f}]"
                        if n in chosen.index
                        else ""
                        for n in shown
                    ),
                ]
            )
    header = ["configuration", "estimate", *(columns[f"test_{n}"] for n in shown)]
    return (
        "Folds pooled like seeds: their mean ± sd; the fold ensemble averages the k models' probabilities on "
        "the shared test part; out-of-fold scores every non-test image once, by the model that did not train "
        "on it; intervals: 95% bootstrap over patient groups (also on the parent run: ensemble_test_*, oof_*)."
        "\n\n" + markdown_table(header, rows) + "\n"
    )


def seeds_markdown(summary: pd.DataFrame, columns: dict[str, str]) -> str:
    """Per configuration: mean ± sd over its seeds and folds (n), and the 95% interval of the mean."""
    shown = [c for c in columns if f"{c}_mean" in summary and summary[f"{c}_mean"].notna().any()]
    rows = []
    for _, r in summary.iterrows():
        folds = f" x {r['n_folds']} folds" if r.get("n_folds", 0) else ""
        cells = [r["configuration"], f"{r['n_seeds']}{folds}"]
        for c in shown:
            if not np.isfinite(r[f"{c}_mean"]):  # a metric this configuration has not (gates of a model without)
                cells.append("")
                continue
            sd = f" ± {r[f'{c}_sd']:.3f}" if np.isfinite(r.get(f"{c}_sd", np.nan)) else ""
            interval = (
                f" [{r[f'{c}_ci_low']:.3f}, {r[f'{c}_ci_high']:.3f}]"
                if np.isfinite(r.get(f"{c}_ci_low", np.nan))
                else ""
            )
            cells.append(f"{r[f'{c}_mean']:.3f}{sd}{interval}")
        rows.append(cells)
    return markdown_table(["configuration", "seeds", *[f"{columns[c]} mean ± sd [95% CI]" for c in shown]], rows)


def comparisons_markdown(table: pd.DataFrame) -> str:
    """The verdicts first, then every tested difference."""
    if table.empty:
        return "No two configurations of this sweep differ in exactly one choice: nothing to compare.\n"
    real = table[table["real"]]
    lines = [f"{len(table)} tests; {len(real)} difference(s) real after Holm's adjustment (p < {ALPHA}):"]
    for _, r in real.iterrows():
        lines.append(f"- {_sentence(r)}")
    if real.empty:
        lines.append("- none: every difference below is within what the test parts' sampling (and the seeds) explain.")
    rows = []
    for _, r in table.iterrows():
        delta = "" if not np.isfinite(r["delta"]) else signed(r["delta"], r["ci_low"], r["ci_high"])
        kind = ("paired" if r["paired"] else "UNPAIRED (different test images)") + (
            f", {r['seeds']} seeds" if r["seeds"] > 1 else ""
        )
        rows.append(
            [
                f"{r['choice']}: {r['a']} vs {r['b']}",
                r["other choices"] or "(all else equal)",
                r["metric"],
                r["test"],
                delta,
                f"{r['p']:.3g}",
                f"{r['p_holm']:.3g}",
                "**yes**" if r["real"] else "no",
                kind,
            ]
        )
    headers = [
        "comparison (A vs B)",
        "with",
        "metric",
        "test",
        "Δ = A − B [95% CI]",
        "p",
        "p (Holm)",
        "real?",
        "design",
    ]
    return "\n".join(lines) + "\n\n" + markdown_table(headers, rows)


def signed(delta: float, low: float, high: float) -> str:
    return f"{delta:+.3f} [{low:+.3f}, {high:+.3f}]"


def _sentence(r: pd.Series) -> str:
    """e.g. 'annotations on vs off (model=resnet50_cbam, split=stratified): Δ macro-F1 +0.031 [-0.012,
    0.074], p = 0.17 (Holm 0.51)'."""
    delta = f" {signed(r['delta'], r['ci_low'], r['ci_high'])}" if np.isfinite(r["delta"]) else ""
    return (
        f"{r['choice']} {r['a']} vs {r['b']} ({r['other choices'] or 'all else equal'}): {r['test']} "
        f"Δ {r['metric']}{delta}, p = {r['p']:.3g} (Holm {r['p_holm']:.3g})"
    )


def plot(summary: pd.DataFrame, records: list[RunRecord], chart: tuple[str, ...], unit: str, path: Path) -> Path | None:
    """Per configuration, the chart metrics' mean over seeds with its 95% interval as error bars;
    runs that did not finish are named in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in chart if f"{m}_mean" in summary and summary[f"{m}_mean"].notna().any()]
    if summary.empty or not metrics:
        return None
    n = len(summary)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * n + 3), 4.8), dpi=110)
    width = 0.8 / len(metrics)
    for k, metric in enumerate(metrics):
        means = summary[f"{metric}_mean"].to_numpy(dtype=float)
        low = summary.get(f"{metric}_ci_low", pd.Series(np.nan, index=summary.index)).to_numpy(dtype=float)
        high = summary.get(f"{metric}_ci_high", pd.Series(np.nan, index=summary.index)).to_numpy(dtype=float)
        errors = np.vstack([np.nan_to_num(means - low), np.nan_to_num(high - means)])
        ax.bar(
            np.arange(n) + k * width,
            np.nan_to_num(means),
            width=width,
            yerr=errors,
            capsize=3,
            label=metric.removeprefix("test_"),
        )
    runs = summary["n_runs"] if "n_runs" in summary else summary["n_seeds"]
    labels = [f"{c} (n={n})" for c, n in zip(summary["configuration"], runs, strict=True)]
    ax.set_xticks(np.arange(n) + 0.4 - width / 2)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    failed = [r for r in records if r.status not in ("FINISHED", "SKIPPED")]
    if failed:
        ax.text(
            0.01,
            0.98,
            "not finished: " + ", ".join(f"job {r.job}" for r in failed),
            color="red",
            fontsize=8,
            transform=ax.transAxes,
            va="top",
        )
    ax.set_ylabel(unit)
    ax.legend(fontsize=8)
    ax.set_title(
        "sweep report: mean over seeds, 95% interval (test-part bootstrap over patient groups, seeds)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
