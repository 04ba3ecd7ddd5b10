"""The tracking layer under concurrent writers, as in a parallel sweep on a fresh SQLite store."""

from __future__ import annotations

import io
import multiprocessing as mp
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from btxrd.tracking import Tracker, flatten

N_WORKERS = 4


def _job(uri: str, artifact_root: str, parent_id: str, job: int, scratch: str) -> str:
    tracker = Tracker(uri, "btxrd", artifact_root)
    run_id = tracker.start_run(f"job {job}", {"job_num": str(job)}, parent_id=parent_id)
    tracker.log_params(
        run_id, flatten({"model": {"name": "b0", "size": job}, "train": {f"k{i}": i for i in range(60)}})
    )
    for step in range(25):
        tracker.log_metrics(run_id, {"train_loss": 1 / (step + 1), "val_macro_f1": step / 25}, step=step)
    path = Path(scratch) / f"best_{job}.pt"
    path.write_bytes(b"x" * 200_000)
    tracker.log_artifact(run_id, path, "checkpoints")
    tracker.end_run(run_id)
    return run_id


@pytest.mark.slow
def test_four_concurrent_jobs_on_a_fresh_store_lose_nothing(tmp_path: Path) -> None:
    context = mp.get_context("spawn")  # fresh interpreters, like the joblib launcher's loky workers
    # One pool for the three stores, as loky reuses its workers from one sweep's jobs to the next.
    with context.Pool(N_WORKERS) as pool:
        for repetition in range(1):
            work = tmp_path / f"rep{repetition}"
            work.mkdir()
            uri = f"sqlite:///{work / 'mlflow.db'}"
            # As the sweep callback does: the launching process creates store, experiment and parent first.
            launcher = Tracker(uri, "btxrd", work / "mlruns")
            parent_id = launcher.start_run("sweep", {"sweep": "parent"})
            args = [(uri, str(work / "mlruns"), parent_id, job, str(work)) for job in range(N_WORKERS)]
            run_ids = pool.starmap(_job, args)
            launcher.end_run(parent_id)
            _check_runs(uri, run_ids, parent_id)


def _check_runs(uri: str, run_ids: list[str], parent_id: str) -> None:
    client = MlflowClient(uri)
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent_id
        assert len(run.data.params) == 62
        assert len(client.get_metric_history(run_id, "train_loss")) == 25
        assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == [
            f"checkpoints/best_{run.data.tags['job_num']}.pt"
        ]
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_a_launched_job_without_a_run_fails_the_sweep(tmp_path: Path, capsys) -> None:
    from btxrd.sweep.callback import MLflowSweepCallback

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    sweep_dir = tmp_path / "multirun"
    for job in ("0", "1"):  # Hydra made both job folders
        (sweep_dir / job).mkdir(parents=True)
    callback = MLflowSweepCallback()
    callback.tracker, callback.sweep_dir = tracker, str(sweep_dir)
    callback.parent_id = tracker.start_run("sweep", {"sweep": "parent"})
    tracker.end_run(tracker.start_run("job 0", {"job_num": "0"}, parent_id=callback.parent_id))
    parent_id = callback.parent_id
    callback.finish()  # job 1 died before it could open its run
    parent = tracker.get_run(parent_id)
    assert parent.info.status == "FAILED"
    assert (parent.data.tags["n_jobs"], parent.data.tags["n_failed"]) == ("2", "1")
    assert f"[job 1] no run of this job under the parent; see {sweep_dir}/1" in capsys.readouterr().err


@pytest.mark.parametrize("launcher", ["joblib", "submitit"])
def test_a_stopped_sweep_ends_killed_and_closes_only_runs_whose_jobs_died_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, launcher: str
) -> None:
    from btxrd.runtime import process as runtime
    from btxrd.sweep.callback import MLflowSweepCallback

    monkeypatch.setattr(runtime, "_stop_signals_received", ["SIGTERM"])  # this process was sent SIGTERM
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    callback = MLflowSweepCallback()
    callback.tracker, callback.sweep_dir = tracker, str(tmp_path / "multirun")
    callback.jobs_outlive_launcher = launcher == "submitit"
    parent_id = callback.parent_id = tracker.start_run("sweep", {"sweep": "parent"})
    done = tracker.start_run("job 0", {"job_num": "0"}, parent_id=parent_id)
    tracker.end_run(done)
    open_run = tracker.start_run("job 1", {"job_num": "1"}, parent_id=parent_id)
    callback.finish()
    parent = tracker.get_run(parent_id)
    assert (parent.info.status, parent.data.tags["error"]) == ("KILLED", "stopped by SIGTERM")
    assert tracker.get_run(done).info.status == "FINISHED"
    if launcher == "joblib":  # its workers were killed with the launcher
        assert tracker.get_run(open_run).info.status == "KILLED"
        assert tracker.get_run(open_run).data.tags["error"] == "the sweep was stopped by SIGTERM"
        assert "sweep: stopped by SIGTERM; 1 of 2 launched job(s) did not finish." in capsys.readouterr().err
    else:  # submitit's job runs on and closes its own run
        assert tracker.get_run(open_run).info.status == "RUNNING"
        assert "1 of 2 launched job(s) did not finish (1 still running under the launcher" in capsys.readouterr().err


def test_the_experiment_opens_in_model_training_mode_and_runs_record_their_dataset(tmp_path: Path) -> None:
    from btxrd.tracking.mlflow_store import EXPERIMENT_KIND_TAG, ui_base

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    client = MlflowClient(tracker.uri)
    assert client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    older = client.create_experiment("made-before")  # an experiment without the tag gets it when used
    assert Tracker(tracker.uri, "made-before").experiment_id == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    url = tracker.runs_url("http://127.0.0.1:5000", "/work/multirun/x")
    assert url == (f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
                   "&searchFilter=tags.sweep_dir%20%3D%20%27%2Fwork%2Fmultirun%2Fx%27")  # fmt: skip
    assert ui_base("http://host:5001", "http://127.0.0.1:5000") == "http://host:5001"  # a server shows its runs
    run_id = tracker.start_run("job")
    tracker.log_dataset(run_id, "demo", "0123abcd", "/data/demo", "train", {"images": 10}, {"split": "center"})
    [logged] = client.get_run(run_id).inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == ("demo", "0123abcd")
    assert {t.key: t.value for t in logged.tags} == {"mlflow.data.context": "train", "split": "center"}


def test_the_sweep_progress_line() -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from btxrd.sweep.progress import SweepProgress, planned_jobs, status_line

    def config(overrides, sweeper=None):
        return OmegaConf.create({"hydra": {"overrides": {"task": overrides}, "sweeper": sweeper or {}}})

    assert planned_jobs(config(["model=b0,b3,resnet50_cbam", "split=stratified,center", "train.lr=0.1"])) == 6
    assert planned_jobs(config(["seed=range(0,4)"])) == 4
    assert planned_jobs(config(["train.lr=interval(0.1,1)"])) is None
    assert planned_jobs(config([], {"n_trials": 30})) == 30
    assert status_line(5, 1, 2, 12, 400) == "sweep: 5/12 done (1 failed), 2 running, 6m40s elapsed, about 9m20s left"
    assert status_line(0, 0, 2, None, 9) == "sweep: 0 done, 2 running, 9s elapsed"
    runs = [SimpleNamespace(info=SimpleNamespace(status=s)) for s in ("FINISHED", "FAILED", "RUNNING")]
    progress = SweepProgress(tracker=None, parent_id="x", total=3, stream=io.StringIO())
    assert progress.line(runs).startswith("sweep: 2/3 done (1 failed), 1 running")
    progress.start()  # not a terminal: no thread, no output
    assert not progress._thread.is_alive() and progress.stream.getvalue() == ""


@pytest.mark.integration  # fault injection with real processes, repeated: make test-integration
@pytest.mark.slow
def test_processes_opening_a_new_store_at_once_create_it_once(tmp_path: Path) -> None:
    """Two sweeps started together on a store that does not exist yet raced creating its tables."""
    from .helpers import run_python_at_once

    for trial in range(3):
        uri = f"sqlite:///{tmp_path / f'store{trial}' / 'mlflow.db'}"
        outputs = run_python_at_once("from btxrd.tracking import Tracker;"
                                     f"t = Tracker({uri!r}, 'btxrd'); t.end_run(t.start_run('sweep')); print('ok')",
                                     n=4)  # fmt: skip
        assert all(out.strip().endswith("ok") for out in outputs), outputs
        client = MlflowClient(uri)
        assert len(client.search_runs([client.get_experiment_by_name("btxrd").experiment_id])) == 4


def test_a_sweep_without_its_parent_run_or_with_a_launcher_that_cannot_work_stops_at_once(tmp_path: Path,
                                                                                          capsys) -> None:  # fmt: skip
    from omegaconf import open_dict

    from btxrd.sweep.callback import MLflowSweepCallback

    from .helpers import compose_config

    (tmp_path / "file").write_text("a file where the store's folder should be")
    for override, message in ((f"tracking.uri=sqlite:///{tmp_path / 'file' / 'mlflow.db'}", "error: sweep: "),
                              ("hydra.launcher.n_jobs=0", "error: sweep: hydra.launcher.n_jobs=0: give the jobs")):
        config = compose_config([override, f"paths.root={tmp_path}"], with_hydra=True)
        with open_dict(config):
            config.hydra.sweep.dir = str(tmp_path / "multirun")
        with pytest.raises(SystemExit) as stopped:  # Hydra turns a callback's Exception into a mere warning
            MLflowSweepCallback().on_multirun_start(config)
        assert stopped.value.code == 2
        line = capsys.readouterr().err.strip()
        assert line.startswith(message) and "\n" not in line, line


def test_a_job_that_fails_before_opening_its_run_leaves_a_failed_child(tmp_path: Path) -> None:
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import open_dict

    from btxrd.errors import ConfigError
    from btxrd.sweep.callback import MLflowSweepCallback

    from .helpers import compose_config

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    callback = MLflowSweepCallback()
    callback.tracker, callback.sweep_dir = tracker, str(tmp_path / "multirun")
    callback.parent_id = tracker.start_run("sweep", {"sweep": "parent"})
    config = compose_config(["train.lr=-1"], with_hydra=True)
    with open_dict(config):
        config.hydra.job.num = 3
        config.hydra.overrides.task = ["train.lr=-1"]
    failed = JobReturn(status=JobStatus.FAILED, _return_value=ConfigError("train.lr=-1.0: must be > 0"))
    callback.on_job_end(config, failed)
    callback.on_job_end(config, failed)  # once only
    [child] = tracker.children(callback.parent_id)
    assert (child.info.status, child.data.tags["job_num"]) == ("FAILED", "3")
    assert child.data.tags["error"] == "ConfigError: train.lr=-1.0: must be > 0"


def test_runs_whose_process_is_gone_are_closed_and_only_those(tmp_path: Path) -> None:
    import subprocess
    import sys

    from btxrd.tracking.stale import HOST, PID, STARTED, close_stale, owner_tags

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tracker.start_run("killed sweep", {**owner_tags(), PID: str(gone.pid)})
    reused = tracker.start_run("pid reused", {**owner_tags(), STARTED: "12345.00"})  # this pid, but not this process
    alive = tracker.start_run("still running", owner_tags())
    elsewhere = tracker.start_run("another host", {**owner_tags(), HOST: "other-host", PID: str(gone.pid)})
    closed = {run.info.run_id for run in close_stale(tracker)}
    assert closed == {dead, reused}
    status = {run_id: tracker.get_run(run_id).info.status for run_id in (dead, reused, alive, elsewhere)}
    assert status == {dead: "KILLED", reused: "KILLED", alive: "RUNNING", elsewhere: "RUNNING"}
    assert "its process (pid" in tracker.get_run(dead).data.tags["error"]
