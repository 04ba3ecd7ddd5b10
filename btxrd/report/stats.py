"""What a sweep's numbers support: seeds and folds aggregated per configuration, and tested differences.

- A configuration is a job's choices apart from its seed and cross-validation fold (``split.fold``): its
  replicates are aggregated (n seeds, n folds, mean, sd), never compared with each other.
- Two configurations that differ in exactly one choice are compared, for each metric the task
  names (``Task.compared``): the difference A - B with a 95% interval and a p-value from the
  bootstrap over the test part's patient groups. Scored on the same test images (same split),
  both runs are resampled together (paired); otherwise each on its own (unpaired, labelled so).
- Several replicates: runs are paired by seed and fold, and the difference averaged over the pairs; its
  bootstrap draws the pairs with replacement too (a two-level bootstrap), so the interval holds the
  spread between seeds and folds as well as the test part's sampling.
- Paired, one seed: DeLong's test of the macro AUROC and McNemar's of accuracy as well (the task's
  ``paired_tests``).
- Holm's adjustment over the report's bootstrap p-values (and separately over its DeLong and
  McNemar p-values): several comparisons, one verdict each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from btxrd.metrics.comparison import Difference, bootstrap_difference, holm
from btxrd.metrics.uncertainty import percentile_interval
from btxrd.report.runs import SEED, RunRecord
from btxrd.settings import EvalConfig
from btxrd.tasks import resample

ALPHA = 0.05


@dataclass
class Configuration:
    choices: tuple[tuple[str, str], ...]
    runs: list[RunRecord] = field(default_factory=list)  # usable runs, one per seed and fold

    def label(self, shown: list[str]) -> str:
        values = dict(self.choices)
        return " ".join(f"{k}={values[k]}" for k in shown if k in values) or "all"

    @property
    def by_replicate(self) -> dict[str, RunRecord]:
        return {r.replicate: r for r in self.runs}

    @property
    def folds(self) -> list[str]:
        return sorted({r.fold for r in self.runs if r.fold}, key=int)


def configurations(records: list[RunRecord]) -> list[Configuration]:
    """Usable runs grouped by everything but their seed and fold, in the order the sweep ran them."""
    found: dict[tuple, Configuration] = {}
    for record in records:
        if record.usable:
            found.setdefault(record.configuration, Configuration(record.configuration)).runs.append(record)
    return list(found.values())


class Replicates:
    """Each run's metrics on its test part, and their bootstrap replicates (resampled once per run,
    from its per-image table: the same images give the same resamples, hence paired comparisons)."""

    def __init__(self, evaluation: EvalConfig) -> None:
        self.evaluation = evaluation
        self._cache: dict[str, tuple[dict[str, float], dict[str, np.ndarray]]] = {}

    def of(self, run: RunRecord) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        if run.run_id not in self._cache:
            table = run.per_image
            ones = np.ones((1, len(table)), dtype=np.float32)
            point = {k: float(v[0]) for k, v in run.task.replicates(table, ones).items()}
            self._cache[run.run_id] = point, run.task.replicates(table, resample(table, self.evaluation))
        return self._cache[run.run_id]


def _over_seeds(points: list[float], replicates: list[np.ndarray], seed: int) -> tuple[float, np.ndarray]:
    """The mean over seeds (and folds) and its two-level bootstrap: each replicate averages the runs drawn
    with replacement, each at that replicate's resample of the test part."""
    if len(points) == 1:
        return points[0], replicates[0]
    stacked = np.stack(replicates)  # (seeds, resamples)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(points), size=(stacked.shape[1], len(points)))
    return float(np.mean(points)), stacked[drawn, np.arange(stacked.shape[1])[:, None]].mean(axis=1)


def seed_summary(
    configs: list[Configuration], columns: dict[str, str], shown: list[str], replicates: Replicates
) -> pd.DataFrame:
    """Per configuration: n seeds and folds, and per report metric mean, sd over them and the 95% interval of
    the mean."""
    rows = []
    for config in configs:
        seeds = sorted({r.seed for r in config.runs})
        row = {
            "configuration": config.label(shown),
            "n_seeds": len(seeds),
            "n_folds": len(config.folds),
            "n_runs": len(config.runs),
            "seeds": " ".join(seeds),
        }
        for key in columns:
            name = key.removeprefix("test_")
            values = [r.metrics.get(key, np.nan) for r in config.runs]
            row[f"{key}_mean"] = float(np.nanmean(values)) if np.isfinite(values).any() else np.nan
            row[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else np.nan
            available = [replicates.of(r) for r in config.runs if r.per_image is not None]
            if available and all(name in reps for _, reps in available):
                _, combined = _over_seeds(
                    [p[name] for p, _ in available],
                    [reps[name] for _, reps in available],
                    replicates.evaluation.bootstrap_seed,
                )
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = percentile_interval(
                    combined, replicates.evaluation.ci_level
                )
        rows.append(row)
    return pd.DataFrame(rows)


def comparisons(configs: list[Configuration], replicates: Replicates, shown: list[str]) -> pd.DataFrame:
    """Every pair of configurations that differ in exactly one choice, every compared metric
    (``shown``: the choices the sweep varies, to say what else the pair shares)."""
    rows = []
    for a, b in combinations(configs, 2):
        differing = [k for k in dict(a.choices) | dict(b.choices) if dict(a.choices).get(k) != dict(b.choices).get(k)]
        task = a.runs[0].task
        if len(differing) != 1 or task is not b.runs[0].task:
            continue
        key = differing[0]
        shared = sorted(set(a.by_replicate) & set(b.by_replicate))  # same seed and fold: paired
        pairs = [
            (a.by_replicate[k], b.by_replicate[k])
            for k in shared
            if a.by_replicate[k].per_image is not None and b.by_replicate[k].per_image is not None
        ]
        if not pairs:
            continue
        paired = all(list(x.per_image["image_id"]) == list(y.per_image["image_id"]) for x, y in pairs)
        fixed = ", ".join(f"{k}={v}" for k, v in a.choices if k != key and k in shown)
        # "seeds": how many replicate pairs (same seed, same fold) the difference is averaged over
        common = {
            "choice": key,
            "a": dict(a.choices)[key],
            "b": dict(b.choices)[key],
            "other choices": fixed,
            "seeds": len(pairs),
            "paired": paired,
        }
        for title, result in _bootstrap_differences(task.compared, pairs, replicates):
            rows.append(
                {
                    **common,
                    "metric": title,
                    "test": "bootstrap",
                    "delta": result.delta,
                    "ci_low": result.ci_low,
                    "ci_high": result.ci_high,
                    "p": result.p_value,
                }
            )
        if paired and len(pairs) == 1:
            x, y = pairs[0]
            for name, value in task.paired_tests(x.per_image, y.per_image).items():
                if name.endswith("_p"):
                    test, _, metric = name.removesuffix("_p").partition("_")
                    rows.append(
                        {
                            **common,
                            "metric": metric.replace("_", " "),
                            "test": test,
                            "delta": np.nan,
                            "ci_low": np.nan,
                            "ci_high": np.nan,
                            "p": value,
                        }
                    )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = np.nan
    for test in table["test"].unique():  # one family of tests per method
        chosen = table["test"] == test
        table.loc[chosen, "p_holm"] = holm(table.loc[chosen, "p"].tolist())
    table["real"] = table["p_holm"] < ALPHA
    return table


def _bootstrap_differences(
    compared: dict[str, str], pairs: list[tuple[RunRecord, RunRecord]], replicates: Replicates
) -> list[tuple[str, Difference]]:
    """Each compared metric's difference A - B over the replicate pairs, with its bootstrap interval and p;
    a metric that a run lacks (no Grad-CAM scores, say) or that is not finite is left out."""
    evaluation, found = replicates.evaluation, []
    for metric, title in compared.items():
        points, reps = [], []
        for x, y in pairs:
            (px, rx), (py, ry) = replicates.of(x), replicates.of(y)
            if metric not in px or metric not in py:
                break
            points.append(px[metric] - py[metric])
            reps.append(rx[metric] - ry[metric])  # paired: the same resamples; else independent ones
        if len(points) < len(pairs) or not np.isfinite(points).all():
            continue
        delta, combined = _over_seeds(points, reps, evaluation.bootstrap_seed)
        found.append((title, bootstrap_difference(delta, combined, evaluation.ci_level)))
    return found


def seeds_varied(records: list[RunRecord]) -> bool:
    return len({r.choices.get(SEED, r.seed) for r in records}) > 1
