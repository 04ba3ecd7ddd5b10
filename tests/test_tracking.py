"""The tracking layer under concurrent writers, as in a parallel sweep on a fresh SQLite store."""

from __future__ import annotations

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
        for repetition in range(3):
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
