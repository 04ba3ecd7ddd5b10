"""Cross-validation in the sweep report: folds pooled like seeds, the fold ensemble and out-of-fold results
checked against an independent computation, never a fold tested against a fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from btxrd.data.schema import CLASS_NAMES
from btxrd.report.sweep import write_report
from btxrd.tracking import Tracker

from .helpers import settings

PROBS = [f"p_{name}" for name in CLASS_NAMES]


def _predictions(rng: np.random.Generator, ids: list[str], labels: np.ndarray, strength: float) -> pd.DataFrame:
    logits = rng.normal(size=(len(ids), 3)) + strength * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return pd.DataFrame(
        {
            "image_id": ids,
            "center": 1,
            "group": np.arange(len(ids)) // 2,
            "label": labels,
            "predicted": probs.argmax(1),
            **{p: probs[:, i] for i, p in enumerate(PROBS)},
        }
    )


@pytest.fixture
def cv_sweep(tmp_path: Path) -> tuple[Tracker, str, Path, dict]:
    """model=b0,b3 x split.fold=0,1,2: a fixed test part of 120 images, 3 validation folds of 60 images."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    parent = tracker.start_run("sweep", {"sweep": "parent", "overrides": "model=b0,b3 split.fold=0,1,2"})
    rng = np.random.default_rng(1)
    test_ids = [f"T{i:04d}" for i in range(120)]
    test_labels = rng.choice(3, 120, p=[0.5, 0.35, 0.15])
    fold_ids = [[f"V{f}{i:03d}" for i in range(60)] for f in range(3)]
    fold_labels = [rng.choice(3, 60, p=[0.5, 0.35, 0.15]) for _ in range(3)]
    kept: dict = {"test": {}, "val": {}}
    job = 0
    for model, strength in (("b0", 0.6), ("b3", 0.8)):
        for fold in range(3):
            choices = {"model": model, "split.fold": str(fold)}
            run = tracker.start_run(
                f"{model} | fold {fold}",
                {"task": "classify", "job_num": str(job), "seed": "0", "choices": json.dumps(choices)},
                parent_id=parent,
            )
            test = _predictions(rng, test_ids, test_labels, strength)
            val = _predictions(rng, fold_ids[fold], fold_labels[fold], strength)
            val["group"] += 1000 * (fold + 1)  # the folds hold different patients
            tracker.log_metrics(run, {"test_accuracy": float((test["predicted"] == test["label"]).mean())})
            folder = tmp_path / f"job{job}"
            folder.mkdir()
            for name, table in (("predictions_test.csv", test), ("predictions_val.csv", val)):
                table.to_csv(folder / name, index=False)
                tracker.log_artifact(run, folder / name)
            tracker.end_run(run)
            kept["test"].setdefault(model, []).append(test)
            kept["val"].setdefault(model, []).append(val)
            job += 1
    return tracker, parent, tmp_path / "report", kept


def test_folds_are_pooled_like_seeds_and_never_tested_against_each_other(cv_sweep) -> None:
    tracker, parent, out, _ = cv_sweep
    write_report(tracker, parent, out, settings(["eval.n_bootstrap=300"]).eval)
    configurations = pd.read_csv(out / "sweep_configurations.csv")
    assert configurations["configuration"].tolist() == ["model=b0", "model=b3"]
    assert configurations["n_folds"].tolist() == [3, 3] and configurations["n_runs"].tolist() == [3, 3]
    tested = pd.read_csv(out / "sweep_comparisons.csv")
    assert set(tested["choice"]) == {"model"}  # before: ten fold-vs-fold tests per configuration
    assert (tested["seeds"] == 3).all() and tested["paired"].all()  # b0 and b3 paired fold by fold


def test_the_fold_ensemble_and_out_of_fold_results_against_an_independent_computation(cv_sweep) -> None:
    tracker, parent, out, kept = cv_sweep
    write_report(tracker, parent, out, settings(["eval.n_bootstrap=300"]).eval)
    table = pd.read_csv(out / "sweep_crossvalidation.csv").set_index(["configuration", "kind", "metric"])
    for model in ("b0", "b3"):
        tests = kept["test"][model]
        mean = sum(t[PROBS].to_numpy() for t in tests) / len(tests)  # the three models' probabilities, averaged
        labels = tests[0]["label"].to_numpy()
        ensemble = table.loc[(f"model={model}", "ensemble_test", "accuracy")]
        assert ensemble["estimate"] == pytest.approx(accuracy_score(labels, mean.argmax(1)))
        assert ensemble["n_images"] == 120 and ensemble["ci_low"] < ensemble["estimate"] < ensemble["ci_high"]
        pooled = pd.concat(kept["val"][model])
        oof = table.loc[(f"model={model}", "oof", "macro_f1")]
        assert oof["estimate"] == pytest.approx(f1_score(pooled["label"], pooled["predicted"], average="macro"))
        assert oof["n_images"] == 180  # every non-test image once
    metrics = tracker.get_run(parent).data.metrics
    assert metrics["ensemble_test_accuracy/model:b0"] == pytest.approx(
        table.loc[("model=b0", "ensemble_test", "accuracy"), "estimate"]
    )
    assert "oof_macro_f1_ci_low/model:b3" in metrics
    markdown = (out / "sweep_report.md").read_text()
    assert "## Cross-validation" in markdown and "| model=b0 | 3 folds, mean ± sd |" in markdown
    assert "| model=b0 | fold ensemble (test part), 120 images |" in markdown
    assert "| model=b3 | out-of-fold (every non-test image), 180 images |" in markdown


@pytest.mark.integration  # a real 3-fold sweep (3 trainings): make test-integration
@pytest.mark.slow
def test_a_3_fold_sweep_reports_its_folds_ensemble_and_out_of_fold_results(synth_root: Path, tmp_path: Path) -> None:
    from .helpers import run_script, sweeps_in, tiny

    args = [
        "-m",
        "experiment=cv5",
        "split.k=3",
        "split.fold=0,1,2",  # the command line's folds, not the preset's
        *tiny(synth_root, tmp_path, "model.image_size=32"),
    ]
    result = run_script("train.py", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [(parent, children)] = sweeps_in(tmp_path)
    assert sorted(json.loads(c.data.tags["choices"])["split.fold"] for c in children) == ["0", "1", "2"]
    assert {"ensemble_test_accuracy", "oof_accuracy", "oof_accuracy_ci_high"} <= set(parent.data.metrics)
    text = (Path(parent.data.tags["sweep_dir"]) / "sweep_report.md").read_text()
    assert "## Cross-validation" in text and "3 folds, mean ± sd" in text and "split.fold:" not in text
