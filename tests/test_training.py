"""A real training job, in-process; its checkpoint reproduces its predictions; evaluate.py reproduces its scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from btxrd.data.cache import cache_for
from btxrd.data.dataset import BTXRDImages
from btxrd.data.loaders import make_loader
from btxrd.data.reader import load_dataset
from btxrd.engine import InputPipeline, load_checkpoint
from btxrd.engine.checkpoint import RESUME_ONLY
from btxrd.engine.schedule import EarlyStopping, warmup_cosine
from btxrd.errors import DataError
from btxrd.jobs.evaluate import evaluate_job
from btxrd.jobs.train import train_job
from btxrd.models import build_model
from btxrd.tasks import make_task
from btxrd.tasks.classify import class_weights, predict

from .helpers import compose_config, settings, tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("train")
    # On the CPU, where results are bit-exact (the CUDA path: test_cuda)
    cfg = compose_config(tiny(synth_root, work, "tracking.enabled=false", "train.epochs=2", "train.device=cpu"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        best = train_job(cfg)
    [checkpoint] = (work / "checkpoints").glob("*/best.pt")
    return work / "outputs", {"best": best, "cfg": cfg, "checkpoint": checkpoint}


def test_outputs_of_a_run(trained) -> None:
    out, info = trained
    metrics = json.loads((out / "metrics_test.json").read_text())
    for key in (
        "test_accuracy",
        "test_balanced_accuracy",
        "test_macro_f1",
        "test_precision_benign",
        "test_recall_malignant",
        "test_f1_normal",
        "test_auroc_macro",
        "test_malignant_recall",
        "test_ece",
        "test_cam_energy",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["best_val_macro_f1"] == pytest.approx(info["best"])
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 2 and history["lr"].iloc[1] < history["lr"].iloc[0]
    assert metrics["best_val_macro_f1"] == pytest.approx(history["val_macro_f1"].max())
    split = pd.read_csv(out / "split.csv")
    assert set(split["part"]) == {"train", "val", "test"}
    predictions = pd.read_csv(out / "predictions_test.csv")
    assert len(predictions) == (split["part"] == "test").sum()
    assert metrics["test_accuracy"] == pytest.approx((predictions["label"] == predictions["predicted"]).mean())
    for picture in ("confusion_matrix_test.png", "roc_test.png", "reliability_test.png", "gradcam/gradcam_benign.png"):
        assert (out / picture).stat().st_size > 1000, picture
    # The start-up phases (make bench tables them): wall-clock marks in order, the same first step as the metrics
    startup = json.loads((out / "startup.json").read_text())
    marks = ["process_start", "job_start", "run_opened", "data_ready", "model_built", "first_step"]
    assert list(startup) == marks and [startup[m] for m in marks] == sorted(startup.values())
    assert startup["first_step"] - startup["job_start"] == pytest.approx(metrics["startup_seconds"])


def test_checkpoint_is_safe_to_load_and_reproduces_predictions(trained, synth_root: Path) -> None:
    out, info = trained
    state = load_checkpoint(info["checkpoint"])  # weights_only=True inside
    assert {"model", "epoch", "config", "class_names", "code_version", "operating_points", "temperature"} <= set(state)
    # What only resuming reads (from last.pt) is not kept: AdamW's moments would make the file 3x the weights
    assert not set(RESUME_ONLY) & set(state)
    weights = sum(tensor.numel() * tensor.element_size() for tensor in state["model"].values())
    assert Path(info["checkpoint"]).stat().st_size < 1.2 * weights
    run = settings(tiny(synth_root, out.parent, "tracking.enabled=false", "train.epochs=2", "train.device=cpu"))
    model = build_model(run.model)
    model.load_state_dict(state["model"])
    table = load_dataset(synth_root, read_annotations=False)
    split = pd.read_csv(out / "split.csv")
    test_rows = table[split["part"].to_numpy() == "test"].reset_index(drop=True)
    cache = cache_for(table, 64, run.data)
    loader = make_loader(
        BTXRDImages(test_rows, cache, 64, train=False), 16, train=False, workers=0, device=torch.device("cpu")
    )
    inputs = InputPipeline(torch.device("cpu"), make_task(run).input_spec())
    probs, labels, _ = predict(model, loader, inputs, amp=False, temperature=state["temperature"])
    saved = pd.read_csv(out / "predictions_test.csv")
    np.testing.assert_array_equal(saved["label"].to_numpy(), labels)
    np.testing.assert_allclose(saved[["p_normal", "p_benign", "p_malignant"]].to_numpy(), probs, atol=1e-6)


def test_training_is_deterministic_on_cpu(synth_root: Path, tmp_path: Path, trained, monkeypatch) -> None:
    out, _ = trained
    cfg = compose_config(tiny(synth_root, tmp_path, "tracking.enabled=false", "train.epochs=2", "train.device=cpu"))
    monkeypatch.chdir(tmp_path)
    train_job(cfg)
    a = pd.read_csv(out / "predictions_test.csv")
    b = pd.read_csv(tmp_path / "outputs" / "predictions_test.csv")
    pd.testing.assert_frame_equal(a, b)


def test_evaluate_reproduces_the_run_through_the_same_scoring(trained, tmp_path: Path) -> None:
    """(In process; by MLflow run id: test_sweep; evaluate.py as a process: test_integration.)"""
    out, info = trained
    cfg = compose_config(
        [f"checkpoint={info['checkpoint']}", "tracking.enabled=false", "device=cpu", f"paths.root={tmp_path}"],
        config_name="evaluate",
    )
    evaluated = evaluate_job(cfg)
    trained_metrics = json.loads((out / "metrics_test.json").read_text())
    job_only = {"startup_seconds", "process_startup_seconds", "best_epoch", "epochs_run", "best_val_macro_f1"}
    assert set(evaluated) == set(trained_metrics) - job_only  # the same metrics, all of them
    for key, value in evaluated.items():
        assert value == trained_metrics[key] or (np.isnan(value) and np.isnan(trained_metrics[key])), key
    written = next((tmp_path / "outputs").glob("predictions_test.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(out / "predictions_test.csv"), pd.read_csv(written))


def test_annotations_on_trains_with_the_attention_loss(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = compose_config(tiny(synth_root, tmp_path, "tracking.enabled=false", "annotations=on"))
    monkeypatch.chdir(tmp_path)
    train_job(cfg)
    history = pd.read_csv(tmp_path / "outputs" / "history.csv")
    assert 0 < history["train_cam_loss"].iloc[0] <= 1
    metrics = json.loads((tmp_path / "outputs" / "metrics_test.json").read_text())
    assert metrics["test_cam_n"] > 0 and 0 <= metrics["test_cam_energy_baseline"] < 0.5
    grids = sorted(p.name for p in (tmp_path / "outputs" / "gradcam").glob("*.png"))
    assert grids == ["gradcam_benign.png", "gradcam_malignant.png", "gradcam_normal.png"]


def test_class_weights_schedule_and_early_stopping() -> None:
    weights = class_weights(np.array([0, 0, 0, 1, 1, 2]), 3)
    np.testing.assert_allclose(weights.numpy(), [6 / 9, 1.0, 2.0])
    factor = warmup_cosine(total_steps=100, warmup_steps=10, min_ratio=0.01)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.505, abs=0.01) and factor(100) == pytest.approx(0.01)
    stopper = EarlyStopping(patience=2)
    improved = [stopper.update(score, epoch) for epoch, score in enumerate([0.5, 0.6, 0.6, 0.55], start=1)]
    assert improved == [True, True, False, False] and stopper.should_stop
    assert (stopper.best_epoch, stopper.best_score) == (2, 0.6)
    assert not EarlyStopping(patience=0, bad_epochs=99).should_stop  # 0: never stops early


def test_crafted_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("this code ran",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(DataError, match=r"refusing to load .*evil.pt: it is not a plain weights checkpoint"):
        load_checkpoint(path)
