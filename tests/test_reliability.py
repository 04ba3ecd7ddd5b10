"""A sweep never loses a run: non-finite loss, resume after SIGKILL, skip finished jobs, bad input."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
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

from btxrd.data.loaders import collate_batch
from btxrd.engine import NonFiniteLossError, fit
from btxrd.entry import hydra_task
from btxrd.errors import BTXRDError
from btxrd.jobs.evaluate import evaluate_job
from btxrd.jobs.train import train_job
from btxrd.runtime import process as runtime
from btxrd.runtime.environment import machine_tags
from btxrd.sweep.slurm import LostJob
from btxrd.tasks import make_task

from .conftest import PROJECT_ROOT
from .helpers import compose_config, runs, settings, start_script, tiny

fit_module = importlib.import_module("btxrd.engine.fit")  # the module (btxrd.engine.fit is the function)

# Where a test is about a run's life, not its numbers: a quarter of debug=tiny's pixels
SMALLEST = "model.image_size=32"
# A resumed run matches an uninterrupted one to the bit: a CPU guarantee
RESUMABLE = [SMALLEST, "train.device=cpu"]


def _reference_and_interrupted_projects(tmp_path: Path, store: Path) -> None:
    """Project folders a (the uninterrupted reference) and b (the run interrupted, then resumed),
    each with a ready store (tests/conftest.py)."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copyfile(store, tmp_path / folder / "mlflow.db")


pytestmark = pytest.mark.slow


class _Labelled(TensorDataset):
    @property
    def labels(self) -> np.ndarray:
        return self.tensors[1].numpy()


def test_non_finite_loss_stops_at_once_without_a_checkpoint(tmp_path: Path) -> None:
    class Exploding(nn.Module):
        cam_target_name = ""

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
    loader = DataLoader(data, batch_size=4, collate_fn=collate_batch)
    run = settings(["debug=tiny", "train.epochs=2"])
    model = Exploding()
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at epoch 1, step 3"):
        fit(
            model,
            loader,
            loader,
            make_task(run).objective(model),
            run.train,
            monitor="val_macro_f1",
            seed=0,
            device=torch.device("cpu"),
            out_dir=tmp_path,
        )
    assert not list(tmp_path.glob("*.pt"))


@pytest.mark.integration  # a real process killed: make test-integration (in-process resume: below)
def test_resume_after_sigkill_continues_the_same_run_and_matches(
    synth_root: Path, tmp_path: Path, _migrated_store: Path
) -> None:
    small = ["train.epochs=4", *RESUMABLE]
    _reference_and_interrupted_projects(tmp_path, _migrated_store)
    args = tiny(synth_root, tmp_path / "b", *small)
    proc = start_script("train.py", args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints: list[Path] = []

    def kill_after_its_first_epoch() -> None:
        deadline = time.time() + 180
        while time.time() < deadline and not checkpoints:
            found = list((tmp_path / "b" / "checkpoints").glob("*/last.pt"))
            if found and torch.load(found[0], weights_only=True)["epoch"] >= 1:
                checkpoints.append(found[0])
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)

    watcher = threading.Thread(target=kill_after_its_first_epoch, daemon=True)
    watcher.start()
    # Meanwhile, the uninterrupted reference in its own project folder (in-process: same code, no
    # start-up cost; it overlaps the process's start-up)
    train_job(compose_config(tiny(synth_root, tmp_path / "a", *small)))
    expected = runs(tmp_path / "a")[0].data.metrics
    watcher.join()
    proc.wait()
    assert checkpoints, "no epoch finished before the deadline"
    last = checkpoints[0]
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert killed_at < 4
    [interrupted] = runs(tmp_path / "b")
    assert interrupted.info.status == "RUNNING"  # killed: nobody closed it

    train_job(compose_config(args))  # started again with the same overrides: resumes automatically
    [run] = runs(tmp_path / "b")
    assert run.info.run_id == interrupted.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_epoch"] == str(killed_at)
    for key in ("test_macro_f1", "test_accuracy", "test_auroc_macro", "best_val_macro_f1", "val_loss"):
        assert run.data.metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert not last.exists()  # finished: nothing left to resume


@pytest.mark.integration  # 5-13 s: make test-integration (make test's 5 minutes; CI runs both)
def test_a_job_stopped_by_sigterm_ends_killed_and_the_same_command_resumes_it_to_the_same_numbers(
    synth_root: Path, tmp_path: Path, _migrated_store: Path, monkeypatch
) -> None:
    monkeypatch.setattr(runtime, "_stop_signals_received", [])  # this process's record of stop signals
    small = ["train.epochs=2", *RESUMABLE]
    _reference_and_interrupted_projects(tmp_path, _migrated_store)
    train_job(compose_config(tiny(synth_root, tmp_path / "a", *small)))  # the uninterrupted reference
    expected = runs(tmp_path / "a")[0].data.metrics

    save = fit_module.save_checkpoint

    def stop_after_the_first_epoch(state: dict, path: Path) -> None:  # a real SIGTERM, as `kill PID` sends
        save(state, path)
        if path.name == "last.pt" and state["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    args = tiny(synth_root, tmp_path / "b", *small)
    monkeypatch.setattr(fit_module, "save_checkpoint", stop_after_the_first_epoch)
    with pytest.raises(SystemExit) as stopped:
        hydra_task(train_job, compose_config(args))
    monkeypatch.setattr(fit_module, "save_checkpoint", save)
    assert stopped.value.code == 143  # 128 + SIGTERM, as the signal itself would give
    [interrupted] = runs(tmp_path / "b")
    assert interrupted.info.status == "KILLED"
    assert interrupted.data.tags["error"] == (
        "interrupted by SIGTERM; its last checkpoint is kept: the same command resumes it"
    )
    [last] = (tmp_path / "b" / "checkpoints").glob("*/last.pt")
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler lived only as long as the task

    train_job(compose_config(args))  # started again with the same overrides: resumes automatically
    [run] = runs(tmp_path / "b")
    assert run.info.run_id == interrupted.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_epoch"] == "1" and "error" not in run.data.tags
    assert "SIGTERM" in run.data.tags["interruption"]
    for key in ("test_macro_f1", "test_accuracy", "test_auroc_macro", "best_val_macro_f1", "val_loss"):
        assert run.data.metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert not last.exists()  # finished: nothing left to resume


def test_a_stopped_evaluation_ends_its_run_killed(tmp_path: Path, monkeypatch) -> None:
    from btxrd.jobs import evaluate

    def stopped(*args, **kwargs):
        raise runtime.Terminated(143)  # what the SIGTERM handler raises

    monkeypatch.setattr(runtime, "_stop_signals_received", ["SIGTERM"])
    monkeypatch.setattr(evaluate, "load_checkpoint", stopped)
    with pytest.raises(runtime.Terminated):
        evaluate_job(compose_config([f"checkpoint={tmp_path / 'best.pt'}", f"paths.root={tmp_path}"], "evaluate"))
    [run] = runs(tmp_path)
    assert (run.info.status, run.data.tags["error"]) == ("KILLED", "interrupted by SIGTERM")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], r"^give exactly one of run_id=<mlflow run id>, checkpoint=PATH or model_uri=models:/NAME/VERSION$"),
        (["model_uri=models:/no-such-model/1"], r"^model_uri=models:/no-such-model/1: .*no-such-model"),
        (["run_id=0123456789abcdef"], r"^run_id=0123456789abcdef: no such run in sqlite:///{tmp}/mlflow.db$"),
        (["run_id=0123456789abcdef", "tracking.enabled=false"], r"^run_id=\.\.\. needs tracking.enabled=true"),
        (["checkpoint=/no/such.pt", "tracking.enabled=false"], r"^checkpoint not found: /no/such.pt$"),
    ],
)
def test_bad_evaluate_input_is_named(tmp_path: Path, overrides: list[str], message: str) -> None:
    cfg = compose_config([*overrides, f"paths.root={tmp_path}"], config_name="evaluate")
    with pytest.raises(BTXRDError, match=message.replace("{tmp}", re.escape(str(tmp_path)))):
        evaluate_job(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.root={tmp}/empty"], r"images folder not found"),
        (["data.root={tmp}/nowhere"], r"dataset root not found: .*nowhere"),
        (["split=center", "split.test_centers=[4]"], r"split.test_centers: centre\(s\) \[4\] not in the data"),
        (["model.weights=/no/such/file.pt"], r"model.weights=/no/such/file.pt: file not found"),
        (["train.resume=true"], r"train.resume=true: no last checkpoint"),
    ],
)
def test_bad_input_is_named_and_leaves_no_run_running(synth_root: Path, tmp_path: Path, overrides, message) -> None:
    """Errors found by reading (data, files): one named error; a run if one was opened, FAILED. (Bad
    settings fail before any work, with no run: test_config.)"""
    (tmp_path / "empty").mkdir()
    cfg = compose_config(tiny(synth_root, tmp_path, *(o.format(tmp=tmp_path) for o in overrides)))
    with pytest.raises(BTXRDError, match=message):
        train_job(cfg)
    found = runs(tmp_path)
    assert [r.info.status for r in found] in ([], ["FAILED"])
    assert all(re.search(message, r.data.tags["error"]) for r in found)


def test_documented_servers_bind_to_loopback() -> None:
    from btxrd.report.blocks import pages

    texts = [path.read_text() for path in (*pages(PROJECT_ROOT), PROJECT_ROOT / "Makefile")]
    commands = [line for text in texts for line in text.splitlines() if "mlflow ui" in line or "mlflow server" in line]
    commands = [c for c in commands if ".venv/bin/mlflow" in c or c.strip().startswith(("mlflow", "$(VENV)"))]
    assert commands and all("--host 127.0.0.1" in c for c in commands), commands


def test_checkpoints_logged_by_default_are_best_only(synth_root: Path, tmp_path: Path) -> None:
    cfg = compose_config(tiny(synth_root, tmp_path, SMALLEST))
    train_job(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = runs(tmp_path)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert json.loads(json.dumps(run.data.tags))["config_hash"]


def test_a_skipped_job_returns_the_earlier_best_value(synth_root: Path, tmp_path: Path) -> None:
    cfg = compose_config(tiny(synth_root, tmp_path, SMALLEST, "sweep.skip_finished=true"))
    first = train_job(cfg)
    assert train_job(cfg) == first  # the value Hydra sweepers optimise, not NaN
    assert [r.data.tags.get("skipped") for r in runs(tmp_path)].count("true") == 1


@pytest.mark.integration  # 5-13 s: make test-integration (make test's 5 minutes; CI runs both)
def test_a_checkpoint_of_other_code_is_not_resumed_silently(synth_root: Path, tmp_path: Path) -> None:
    """Same config, other code (another commit or uncommitted change): auto starts afresh and closes
    the interrupted run; forcing it into a model it does not fit is a one-line error."""
    from btxrd.config import config_hash, to_dict
    from btxrd.engine.checkpoint import find_resume, save_checkpoint
    from btxrd.errors import ConfigError
    from btxrd.runtime.provenance import code_version
    from btxrd.tracking import Tracker

    cfg = compose_config(tiny(synth_root, tmp_path, SMALLEST))
    folder = Path(cfg.train.checkpoint_dir) / config_hash(to_dict(cfg))
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    interrupted = tracker.start_run("demo | b0 | stratified | ann-off")
    stale = {
        "model": {"stale.weight": torch.zeros(1)},
        "epoch": 1,
        "mlflow_run_id": interrupted,
        "code_version": "0123abc",
    }
    save_checkpoint(stale, folder / "last.pt")
    point = find_resume(folder, None, code_version())
    assert point.epoch == 1 and point.not_resumed.startswith("its last checkpoint was written by code version 0123abc")
    assert find_resume(folder, True, code_version()).not_resumed == ""

    train_job(cfg)  # auto: trains afresh in a new run and closes the interrupted one
    runs = {r.info.run_id: r for r in MlflowClient(tracker.uri).search_runs([tracker.experiment_id])}
    assert runs[interrupted].info.status == "KILLED"
    assert (
        "not resumed: its last checkpoint was written by code version 0123abc" in runs[interrupted].data.tags["error"]
    )
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED", "KILLED"]

    save_checkpoint(stale, folder / "last.pt")
    with pytest.raises(ConfigError, match=r"train.resume: the last checkpoint in .* does not fit this model"):
        train_job(compose_config(tiny(synth_root, tmp_path, SMALLEST, "train.resume=true")))


def test_a_resumed_job_moves_under_the_sweep_that_finishes_it(tmp_path: Path) -> None:
    from btxrd.tracking import Tracker, job_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "btxrd", tmp_path / "mlruns")
    old_parent, new_parent = tracker.start_run("sweep 1"), tracker.start_run("sweep 2")
    interrupted = tracker.start_run("b0 | stratified | ann-on", {"job_num": "3"}, parent_id=old_parent)
    tracker.set_tags(interrupted, {"error": "the sweep was stopped by SIGTERM"})
    tracker.end_run(interrupted, "KILLED")
    tags = {"job_num": "1", "sweep_dir": str(tmp_path / "sweep2"), "resumed_from_epoch": "2", "model": "b0"}
    with job_run(
        tracker, "b0 | stratified | ann-on", tags, output_dir=tmp_path, parent_id=new_parent, earlier_run_id=interrupted
    ) as recorder:
        assert recorder.run_id == interrupted
        run = tracker.get_run(interrupted)
        assert run.info.status == "RUNNING" and run.data.tags["mlflow.parentRunId"] == new_parent
        assert (run.data.tags["job_num"], run.data.tags["resumed_from_epoch"]) == ("1", "2")
        # Why it stopped stays on record, but not as an error of a run that goes on to finish.
        assert "error" not in run.data.tags and run.data.tags["interruption"] == "the sweep was stopped by SIGTERM"
    assert tracker.get_run(interrupted).info.status == "FINISHED"
    # A checkpoint whose run lives in another experiment (or store) gets a new run instead.
    elsewhere = Tracker(uri, "other", tmp_path / "mlruns")
    with job_run(elsewhere, "b0", tags, output_dir=tmp_path, earlier_run_id=interrupted) as recorder:
        assert recorder.run_id != interrupted


def test_a_failing_job_closes_its_run_even_when_its_folder_is_not_writable(tmp_path: Path) -> None:
    from btxrd.tracking import Tracker, job_run

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match="boom"):
        with job_run(tracker, "job", {}, output_dir=tmp_path / "file" / "out") as recorder:
            raise ValueError("boom")
    run = tracker.get_run(recorder.run_id)
    assert (run.info.status, run.data.tags["error"]) == ("FAILED", "ValueError: boom")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ([], "interrupted; not resumed: its last checkpoint cannot be read (cannot read checkpoint"),
        (["train.resume=false"], "interrupted; not resumed: train.resume=false"),
    ],
)
def test_an_interrupted_run_that_is_not_continued_is_closed_with_the_reason(
    synth_root: Path, tmp_path: Path, overrides, reason
) -> None:
    """A last checkpoint torn by a kill mid-write (no atomic rename on some filesystems), or train.resume=false:
    the job starts afresh, and the run it does not continue ends KILLED instead of RUNNING for ever."""
    from btxrd.config import config_hash, to_dict
    from btxrd.engine.checkpoint import remember_run
    from btxrd.tracking import Tracker

    cfg = compose_config(tiny(synth_root, tmp_path, SMALLEST, *overrides))
    folder = Path(cfg.train.checkpoint_dir) / config_hash(to_dict(cfg))
    folder.mkdir(parents=True)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    interrupted = tracker.start_run("b0 | stratified | ann-off")
    remember_run(folder, interrupted)
    (folder / "last.pt").write_bytes(b"torn")
    train_job(cfg)
    run = tracker.get_run(interrupted)
    assert run.info.status == "KILLED" and run.data.tags["error"].startswith(reason)
    statuses = sorted(r.info.status for r in runs(tmp_path))
    assert statuses == ["FINISHED", "KILLED"]


def test_unwritable_folders_are_named_in_one_line(synth_root: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    cfg = compose_config(tiny(synth_root, tmp_path, f"train.checkpoint_dir={tmp_path / 'file' / 'checkpoints'}"))
    with pytest.raises(BTXRDError, match=rf"^train.checkpoint_dir: cannot write checkpoints to {tmp_path}/file/"):
        train_job(cfg)
    assert runs(tmp_path) == []  # before any run: the folder is locked before its run is chosen
    (tmp_path / "outputs").write_text("not a folder")  # outside Hydra a job's outputs go to ./outputs (tmp_path)
    with pytest.raises(BTXRDError, match=rf"^cannot write the job's output folder {tmp_path}/outputs"):
        train_job(compose_config(tiny(synth_root, tmp_path)))
    [run] = runs(tmp_path)
    assert run.info.status == "FAILED" and "cannot write the job's output folder" in run.data.tags["error"]


def test_a_slurm_job_without_a_result_closes_its_run_as_slurm_says() -> None:
    """Stopped from outside (scancel, time limit, preemption): KILLED; broken (memory, node): FAILED."""
    assert LostJob("12_1", "CANCELLED by 1000").run_status == "KILLED"
    assert LostJob("12_1", "TIMEOUT").run_status == "KILLED"
    assert LostJob("12_1", "OUT_OF_MEMORY").run_status == "FAILED"
    assert LostJob("12_1", "NODE_FAIL").reason == "Slurm job 12_1 ended NODE_FAIL without a result"


def test_a_run_under_slurm_names_its_job_and_node(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURMD_NODENAME"):
        monkeypatch.delenv(name, raising=False)
    assert not [key for key in machine_tags(torch.device("cpu")) if key.startswith("slurm.")]
    monkeypatch.setenv("SLURM_JOB_ID", "57")
    monkeypatch.setenv("SLURMD_NODENAME", "gpu-07")
    assert machine_tags(torch.device("cpu"))["slurm.job_id"] == "57"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "55")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")  # an array task: named as squeue and sacct name it
    tags = machine_tags(torch.device("cpu"))
    assert tags["slurm.job_id"] == "55_2" and tags["slurm.node"] == "gpu-07"
