"""The tracking layer under concurrent writers, as in a parallel sweep on a fresh SQLite store."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

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


def test_four_concurrent_jobs_on_a_fresh_store_lose_nothing(tmp_path: Path) -> None:
    context = mp.get_context("spawn")  # fresh interpreters, like the joblib launcher's loky workers
    for repetition in range(3):
        work = tmp_path / f"rep{repetition}"
        work.mkdir()
        uri = f"sqlite:///{work / 'mlflow.db'}"
        # As the sweep callback does: the launching process creates store, experiment and parent first.
        launcher = Tracker(uri, "btxrd", work / "mlruns")
        parent_id = launcher.start_run("sweep", {"sweep": "parent"})
        with context.Pool(N_WORKERS) as pool:
            args = [(uri, str(work / "mlruns"), parent_id, job, str(work)) for job in range(N_WORKERS)]
            run_ids = pool.starmap(_job, args)
        launcher.end_run(parent_id)
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
