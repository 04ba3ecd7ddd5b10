"""A cross-validation sweep's results beyond its folds: the fold ensemble and the out-of-fold predictions.

``split=kfold`` keeps one test part fixed and rotates the validation fold over the rest, so a sweep of
``split.fold=0..k-1`` gives, per configuration (the report pools its folds like seeds):

- the fold ensemble: the mean of the k models' calibrated probabilities on the shared test part, scored
  with its group-bootstrap interval (``ensemble_test_<metric>``);
- the out-of-fold results: every non-test image scored once, by the model that did not train on it (its
  fold's validation predictions, ``predictions_val.csv``), pooled and scored the same way (``oof_<metric>``).

Both are logged on the sweep's parent run and written to ``sweep_crossvalidation.csv``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from btxrd.metrics.uncertainty import percentile_interval
from btxrd.report.runs import RunRecord
from btxrd.report.stats import Configuration
from btxrd.settings import EvalConfig
from btxrd.tasks import resample
from btxrd.tracking import Tracker

KINDS = {"ensemble_test": "fold ensemble, test part", "oof": "out-of-fold, every non-test image"}


def cross_validation(
    tracker: Tracker, configs: list[Configuration], columns: dict[str, str], shown: list[str], evaluation: EvalConfig
) -> tuple[pd.DataFrame, list[str]]:
    """(one row per configuration of several folds, kind and report metric: n images, estimate, interval;
    what could not be pooled, said)."""
    rows, problems = [], []
    for config in configs:
        if len(config.folds) < 2:
            continue
        label, task = config.label(shown), config.runs[0].task
        tests = [r.per_image for r in config.runs if r.per_image is not None]
        if len({tuple(sorted(t["image_id"])) for t in tests}) != 1:
            problems.append(f"{label}: its folds were tested on different images: no fold ensemble")
            tests = []
        validations = _validation_tables(tracker, config.runs)
        if len(validations) < len(config.runs):
            problems.append(
                f"{label}: {len(config.runs) - len(validations)} fold run(s) logged no predictions_val.csv:"
                " no out-of-fold results"
            )
            validations = []
        for kind, tables in (("ensemble_test", tests), ("oof", validations)):
            pooled = task.pooled(tables) if tables else None
            if pooled is None:
                continue
            point = task.replicates(pooled, np.ones((1, len(pooled)), dtype=np.float32))
            reps = task.replicates(pooled, resample(pooled, evaluation))
            for key in columns:
                name = key.removeprefix("test_")
                if name not in point or not np.isfinite(point[name][0]):
                    continue
                low, high = percentile_interval(reps[name], evaluation.ci_level)
                rows.append(
                    {
                        "configuration": label,
                        "folds": len(config.folds),
                        "kind": kind,
                        "metric": name,
                        "n_images": len(pooled),
                        "estimate": float(point[name][0]),
                        "ci_low": low,
                        "ci_high": high,
                    }
                )
    return pd.DataFrame(rows), problems


def _validation_tables(tracker: Tracker, runs: list[RunRecord]) -> list[pd.DataFrame]:
    tables = []
    with tempfile.TemporaryDirectory(prefix="btxrd-report-") as scratch:
        for run in runs:
            try:
                tables.append(
                    pd.read_csv(
                        tracker.download_artifact(run.artifacts_of, "predictions_val.csv", Path(scratch) / run.run_id)
                    )
                )
            except Exception:  # not logged (a run of an older version): no out-of-fold results for this one
                continue
    return tables


def parent_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``ensemble_test_<metric>`` and ``oof_<metric>`` with their intervals, for the parent run; with several
    configurations, each name ends in ``/`` and the configuration (MLflow's names allow no '=')."""
    several = table["configuration"].nunique() > 1 if not table.empty else False
    out = {}
    for _, row in table.iterrows():
        suffix = "/" + row["configuration"].replace("=", ":") if several else ""
        base = f"{row['kind']}_{row['metric']}"
        out[f"{base}{suffix}"] = row["estimate"]
        out[f"{base}_ci_low{suffix}"], out[f"{base}_ci_high{suffix}"] = row["ci_low"], row["ci_high"]
    return out
