"""Subgroup results: each subgroup's metrics against an independent computation, intervals only where the
subgroup is large enough, and every run's subgroups_test.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from btxrd.metrics.subgroups import MIN_GROUPS, age_band, subgroup_table
from btxrd.settings import EvalConfig
from btxrd.tasks import resample
from btxrd.tasks.classify import ClassifyTask
from btxrd.tasks.classify_metrics import SUBGROUP_METRICS

EVALUATION = EvalConfig(
    ci_level=0.95, n_bootstrap=300, bootstrap_seed=0, specificities=[0.9], calibrate=True, age_bands=[18, 40, 65]
)


def _per_image(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    probs = rng.dirichlet(np.ones(3), n) * 0.5 + np.eye(3)[labels] * 0.5 * (rng.random(n) < 0.7)[:, None]
    probs /= probs.sum(axis=1, keepdims=True)
    centre = np.where(rng.random(n) < 0.9, 1, 2)
    centre[:6] = 3  # a centre of 3 patients: too small for an interval
    return pd.DataFrame(
        {
            "image_id": [f"IMG{i:06d}" for i in range(n)],
            "center": centre,
            "group": np.arange(n) // 2,
            "label": labels,
            "predicted": probs.argmax(1),
            "p_normal": probs[:, 0],
            "p_benign": probs[:, 1],
            "p_malignant": probs[:, 2],
            "age": rng.integers(3, 90, n),
            "gender": rng.choice(["M", "F"], n),
            "region": rng.choice(["upper limb", "lower limb", ""], n),
            "site": rng.choice(["femur", "femur;knee-joint", "humerus", ""], n),
        }
    )


def _table(per_image: pd.DataFrame) -> pd.DataFrame:
    return subgroup_table(
        per_image,
        SUBGROUP_METRICS,
        EVALUATION.age_bands,
        EVALUATION.ci_level,
        ClassifyTask.replicates,
        lambda t: resample(t, EVALUATION),
    )


def test_each_subgroups_estimate_is_its_images_metric() -> None:
    per_image = _per_image()
    table = _table(per_image).set_index(["attribute", "value", "metric"])
    for centre in (1, 2):
        subset = per_image[per_image["center"] == centre]
        row = table.loc[("centre", str(centre), "accuracy")]
        assert row["estimate"] == pytest.approx(accuracy_score(subset["label"], subset["predicted"]))
        assert row["n_images"] == len(subset) and row["n_groups"] == subset["group"].nunique()
        assert row["ci_low"] <= row["estimate"] <= row["ci_high"]
        macro = f1_score(subset["label"], subset["predicted"], average="macro")
        assert table.loc[("centre", str(centre), "macro-F1"), "estimate"] == pytest.approx(macro)
    # an image showing two sites counts in both
    femur = per_image["site"].str.split(";").map(lambda sites: "femur" in sites)
    assert table.loc[("site", "femur", "accuracy"), "n_images"] == femur.sum()
    small = table.loc[("centre", "3", "accuracy")]
    assert small["n_groups"] < MIN_GROUPS and np.isnan(small["ci_low"]) and small["note"].startswith("too small")


def test_a_metric_a_subgroup_cannot_define_says_so() -> None:
    per_image = _per_image()
    per_image.loc[per_image["center"] == 2, "label"] = 0  # no malignant image in centre 2
    table = _table(per_image).set_index(["attribute", "value", "metric"])
    row = table.loc[("centre", "2", "malignant recall")]
    assert np.isnan(row["estimate"]) and row["note"].startswith("not defined")


def test_age_bands_are_in_order_and_unknown_ages_named() -> None:
    bands = age_band(pd.Series([3, 18, 39, 40, 64, 65, None]), [18, 40, 65])
    assert bands.tolist() == ["<18", "18-39", "18-39", "40-64", "40-64", ">=65", "unknown"]
    values = _table(_per_image()).query("attribute == 'age band'")["value"].unique().tolist()
    assert values == ["<18", "18-39", "40-64", ">=65"]


@pytest.mark.slow
def test_every_run_writes_its_subgroups(synth_root: Path, tmp_path: Path) -> None:
    from btxrd.jobs.train import train_job

    from .helpers import compose_config, runs, tiny

    train_job(compose_config(tiny(synth_root, tmp_path, "model.image_size=32")))
    [run] = runs(tmp_path)
    [csv] = (tmp_path / "outputs").rglob("subgroups_test.csv")
    table = pd.read_csv(csv)
    assert {"centre", "sex", "age band", "region", "site"} <= set(table["attribute"])
    assert list(table.columns)[:8] == [
        "attribute",
        "value",
        "n_images",
        "n_groups",
        "metric",
        "estimate",
        "ci_low",
        "ci_high",
    ]
    logged = {
        a.path
        for a in __import__("mlflow")
        .tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        .list_artifacts(run.info.run_id)
    }
    assert {"subgroups_test.csv", "subgroups_test.png"} <= logged
