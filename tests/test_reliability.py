"""A sweep never loses a run: non-finite loss, resume after SIGKILL, skip finished jobs, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from btxrd import runtime
from btxrd.engine.training import NonFiniteLossError, TrainSettings, fit
from btxrd.entry import hydra_task
from btxrd.errors import BTXRDError
from btxrd.pipeline import evaluate_task, train_task

from .conftest import PROJECT_ROOT
from .helpers import compose_config, start_script, tiny_overrides


class _Labelled(TensorDataset):
    @property
    def labels(self) -> np.ndarray:
        return self.tensors[1].numpy()


def test_non_finite_loss_stops_at_once_without_a_checkpoint(tmp_path: Path) -> None:
    class Exploding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            out = self.linear(x.flatten(1)[:, :4])
            return out * float("nan") if self.calls == 3 else out

    n = 12
    data = _Labelled(
        torch.randint(0, 255, (n, 1, 2, 2), dtype=torch.uint8),
        torch.arange(n) % 3,
        torch.zeros(n, 1, 2, 2, dtype=torch.uint8),
        torch.zeros(n, dtype=torch.bool),
        torch.arange(n),
    )
    loader = DataLoader(data, batch_size=4)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at epoch 1, step 3"):
        fit(Exploding(), loader, loader, TrainSettings(epochs=2), torch.device("cpu"), tmp_path)
    assert not list(tmp_path.glob("*.pt"))


def _runs(work: Path):
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("btxrd")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_resume_after_sigkill_continues_the_same_run_and_matches(synth_root: Path, tmp_path: Path) -> None:
    small = {"train.epochs": "3", "model.image_size": "32"}
    # Uninterrupted reference, in its own project folder (in-process: same code, no start-up cost).
    train_task(compose_config(tiny_overrides(synth_root, tmp_path / "a", **small)))
    expected = _runs(tmp_path / "a")[0].data.metrics

    args = tiny_overrides(synth_root, tmp_path / "b", **small)
    proc = start_script("train.py", args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    last = None
    while time.time() < deadline and last is None:
        found = list((tmp_path / "b" / "checkpoints").glob("*/last.pt"))
        if found and torch.load(found[0], weights_only=True)["epoch"] >= 1:
            last = found[0]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last is not None, "no epoch finished before the deadline"
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert killed_at < 3
    [interrupted] = _runs(tmp_path / "b")
    assert interrupted.info.status == "RUNNING"  # killed: nobody closed it

    train_task(compose_config(args))  # started again with the same overrides: resumes automatically
    [run] = _runs(tmp_path / "b")
    assert run.info.run_id == interrupted.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_epoch"] == str(killed_at)
    for key in ("test_macro_f1", "test_accuracy", "test_auroc_macro", "best_val_macro_f1", "val_loss"):
        assert run.data.metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert not last.exists()  # finished: nothing left to resume


def test_sigterm_ends_the_run_killed_and_keeps_its_checkpoint(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(runtime, "_stop_signals_received", [])  # this process's record of stop signals
    cfg = compose_config(tiny_overrides(synth_root, tmp_path, **{"train.epochs": "50", "model.image_size": "32"}))

    def stop_after_the_first_epoch() -> None:  # as `kill PID` would, from outside the training loop
        deadline = time.time() + 120
        while time.time() < deadline:
            if list((tmp_path / "checkpoints").glob("*/last.pt")):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.1)

    threading.Thread(target=stop_after_the_first_epoch, daemon=True).start()
    with pytest.raises(SystemExit) as stopped:
        hydra_task(train_task, cfg)
    assert stopped.value.code == 143  # 128 + SIGTERM, as the signal itself would give
    [run] = _runs(tmp_path)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == (
        "interrupted by SIGTERM; its last checkpoint is kept: the same command resumes it"
    )
    assert len(list((tmp_path / "checkpoints").glob("*/last.pt"))) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler lived only as long as the task


def test_a_stopped_evaluation_ends_its_run_killed(tmp_path: Path, monkeypatch) -> None:
    from btxrd import pipeline

    def stopped(*args, **kwargs):
        raise runtime.Terminated(143)  # what the SIGTERM handler raises

    monkeypatch.setattr(runtime, "_stop_signals_received", ["SIGTERM"])
    monkeypatch.setattr(pipeline, "evaluate_checkpoint", stopped)
    with pytest.raises(runtime.Terminated):
        evaluate_task(compose_config([f"checkpoint={tmp_path / 'best.pt'}", f"paths.root={tmp_path}"], "evaluate"))
    [run] = _runs(tmp_path)
    assert (run.info.status, run.data.tags["error"]) == ("KILLED", "interrupted by SIGTERM")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], r"^give exactly one of run_id=<mlflow run id> or checkpoint=PATH$"),
        (["run_id=0123456789abcdef"], r"^run_id=0123456789abcdef: no such run in sqlite:///{tmp}/mlflow.db$"),
        (["run_id=0123456789abcdef", "tracking.enabled=false"], r"^run_id=\.\.\. needs tracking.enabled=true"),
        (["checkpoint=/no/such.pt", "tracking.enabled=false"], r"^checkpoint not found: /no/such.pt$"),
    ],
)
def test_bad_evaluate_input_is_named(tmp_path: Path, overrides: list[str], message: str) -> None:
    cfg = compose_config([*overrides, f"paths.root={tmp_path}"], config_name="evaluate")
    with pytest.raises(BTXRDError, match=message.replace("{tmp}", re.escape(str(tmp_path)))):
        evaluate_task(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.root": "{tmp}/empty"}, r"images folder not found"),
        ({"data.root": "{tmp}/nowhere"}, r"dataset root not found: .*nowhere"),
        ({"split": "center", "split.test_centers": "[4]"}, r"split.test_centers: centre\(s\) \[4\] not in the data"),
        ({"split.val": "0"}, r"split.val=0.0 is out of range"),
        ({"split": "kfold", "split.fold": "7"}, r"split.fold=7 is out of range"),
        (
            {"model.name": "vgg"},
            r"model.name='vgg' is not a registered model; "
            r"registered: ae_attention, ae_residual, b0, b3, resnet50_cbam$",
        ),
        ({"model.image_size": "16"}, r"model.image_size=16 is too small"),
        ({"model.weights": "/no/such/file.pt"}, r"model.weights=/no/such/file.pt: file not found"),
        ({"train.device": "tpu"}, r"train.device='tpu' is not a device"),
        ({"data.on_bad_image": "ignore"}, r"data.on_bad_image must be one of"),
        ({"train.resume": "true"}, r"train.resume=true: no last checkpoint"),
        ({"train.monitor": "val_fun"}, r"train.monitor='val_fun'"),
    ],
)
def test_bad_input_is_named_and_leaves_a_failed_run(synth_root: Path, tmp_path: Path, overrides, message) -> None:
    (tmp_path / "empty").mkdir()
    settings = {k: v.format(tmp=tmp_path) for k, v in overrides.items()}
    cfg = compose_config(tiny_overrides(synth_root, tmp_path, **settings))
    with pytest.raises(BTXRDError, match=message):
        train_task(cfg)
    runs = _runs(tmp_path)
    assert [r.info.status for r in runs] in ([], ["FAILED"])
    assert all(not r.info.status == "RUNNING" for r in runs)


def test_documented_servers_bind_to_loopback() -> None:
    texts = [(PROJECT_ROOT / name).read_text() for name in ("README.md", "Makefile")]
    commands = [line for text in texts for line in text.splitlines() if "mlflow ui" in line or "mlflow server" in line]
    commands = [c for c in commands if ".venv/bin/mlflow" in c or c.strip().startswith(("mlflow", "$(VENV)"))]
    assert commands and all("--host 127.0.0.1" in c for c in commands), commands


def test_checkpoints_logged_by_default_are_best_only(synth_root: Path, tmp_path: Path) -> None:
    cfg = compose_config(tiny_overrides(synth_root, tmp_path))
    train_task(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = _runs(tmp_path)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert json.loads(json.dumps(run.data.tags))["config_hash"]


def test_a_skipped_job_returns_the_earlier_best_value(synth_root: Path, tmp_path: Path) -> None:
    cfg = compose_config(tiny_overrides(synth_root, tmp_path, **{"sweep.skip_finished": "true"}))
    first = train_task(cfg)
    assert train_task(cfg) == first  # the value Hydra sweepers optimise, not NaN
    assert [r.data.tags.get("skipped") for r in _runs(tmp_path)].count("true") == 1


def test_a_checkpoint_of_other_code_is_not_resumed_silently(synth_root: Path, tmp_path: Path) -> None:
    """Same config, other code (another commit or uncommitted change): auto starts afresh and closes
    the interrupted run; forcing it into a model it does not fit is a one-line error."""
    from btxrd.config import config_hash, to_dict
    from btxrd.engine.checkpoint import save_checkpoint
    from btxrd.errors import ConfigError
    from btxrd.pipeline import code_version, find_resume
    from btxrd.tracking import Tracker

    cfg = compose_config(tiny_overrides(synth_root, tmp_path))
    folder = Path(cfg.train.checkpoint_dir) / config_hash(to_dict(cfg))
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    interrupted = tracker.start_run("demo | b0 | stratified | ann-off")
    stale = {"model": {"stale.weight": torch.zeros(1)}, "epoch": 1, "mlflow_run_id": interrupted,
             "code_version": "0123abc"}  # fmt: skip
    save_checkpoint(stale, folder / "last.pt")
    state, reason = find_resume("auto", folder, code_version())
    assert state["epoch"] == 1 and reason.startswith("its last checkpoint was written by code version 0123abc")
    assert find_resume("true", folder, code_version())[1] == ""

    train_task(cfg)  # auto: trains afresh in a new run and closes the interrupted one
    runs = {r.info.run_id: r for r in MlflowClient(tracker.uri).search_runs([tracker.experiment_id])}
    assert runs[interrupted].info.status == "KILLED"
    assert (
        "not resumed: its last checkpoint was written by code version 0123abc" in runs[interrupted].data.tags["error"]
    )
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED", "KILLED"]

    save_checkpoint(stale, folder / "last.pt")
    with pytest.raises(ConfigError, match=r"train.resume: the last checkpoint in .* does not fit this model"):
        train_task(compose_config(tiny_overrides(synth_root, tmp_path, **{"train.resume": "true"})))


def test_a_resumed_job_moves_under_the_sweep_that_finishes_it(tmp_path: Path) -> None:
    from btxrd.pipeline import _resumed_run
    from btxrd.sweep.context import JobContext
    from btxrd.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "btxrd", tmp_path / "mlruns")
    old_parent, new_parent = tracker.start_run("sweep 1"), tracker.start_run("sweep 2")
    interrupted = tracker.start_run("b0 | stratified | ann-on", {"job_num": "3"}, parent_id=old_parent)
    tracker.set_tags(interrupted, {"error": "the sweep was stopped by SIGTERM"})
    tracker.end_run(interrupted, "KILLED")
    ctx = JobContext(job_num=1, sweep_dir=str(tmp_path / "sweep2"), output_dir=tmp_path / "sweep2" / "1")
    assert _resumed_run(tracker, {"mlflow_run_id": interrupted, "epoch": 2}, new_parent, ctx) == interrupted
    run = tracker.get_run(interrupted)
    assert run.info.status == "RUNNING" and run.data.tags["mlflow.parentRunId"] == new_parent
    assert (run.data.tags["job_num"], run.data.tags["resumed_from_epoch"]) == ("1", "2")
    # Why it stopped stays on record, but not as an error of a run that goes on to finish.
    assert "error" not in run.data.tags and run.data.tags["interruption"] == "the sweep was stopped by SIGTERM"
    # A checkpoint whose run lives in another experiment (or store) gets a new run instead.
    elsewhere = Tracker(uri, "other", tmp_path / "mlruns")
    assert _resumed_run(elsewhere, {"mlflow_run_id": interrupted, "epoch": 2}, None, ctx) is None
