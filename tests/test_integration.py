"""Beyond one process pool: a PostgreSQL-backed MLflow server, submitit's launcher, an Optuna search.

Run with `make test-integration` (left out of `make test`): they start servers and many processes.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from btxrd.tracking.server import MlflowServer

from .helpers import run_script, start_script, sweeps_in, tiny

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.fresh_store]  # the server is the store


def test_2x2_sweep_with_2_jobs_logs_every_run_metric_and_artifact_to_the_postgres_server(
    server: MlflowServer, synth_root: Path, tmp_path: Path
) -> None:
    assert server.backend_store_uri.startswith("postgresql://")
    with urllib.request.urlopen(f"{server.uri}/health", timeout=5) as answer:
        assert answer.read().strip() == b"OK"
    args = [
        "-m",
        *tiny(synth_root, tmp_path),
        "split=stratified,center",
        "annotations=on,off",
        "hydra.launcher.n_jobs=2",
        f"tracking.uri={server.uri}",
    ]
    result = run_script("train.py", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()

    client = MlflowClient(server.uri)
    [(parent, children)] = sweeps_in(tmp_path, uri=server.uri)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert sorted(c.info.run_name for c in children) == sorted(
        f"b0 | {s} | ann-{a}" for s in ("stratified", "center") for a in ("on", "off")
    )
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.info.artifact_uri.startswith("mlflow-artifacts:/")  # served by the server, not a local path
        assert child.data.params["split.name"] in ("stratified", "center")
        history = client.get_metric_history(child.info.run_id, "val_macro_f1")
        assert len(history) == 1 and 0 <= history[0].value <= 1
        assert 0 <= child.data.metrics["test_macro_f1"] <= 1
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.json", "split.csv", "confusion_matrix_test.png", "predictions_test.csv"} <= artifacts
        checkpoint = Path(client.download_artifacts(child.info.run_id, "checkpoints/best.pt", str(tmp_path)))
        assert checkpoint.stat().st_size > 1_000_000  # b0 weights
    # The files landed in the server's own artifact folder.
    stored = list((server.artifacts).rglob("confusion_matrix_test.png"))
    assert len(stored) == 4
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/sweep_report.csv"}

    # evaluate.py, as a user starts it, re-scores a child by its run id: the checkpoint comes from the
    # server's artifacts, the evaluation is a nested run there with the child's test metrics.
    child = children[0]
    result = run_script(
        "evaluate.py",
        [f"run_id={child.info.run_id}", f"paths.root={tmp_path}", f"tracking.uri={server.uri}"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [evaluation] = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{child.info.run_id}'")
    assert evaluation.info.status == "FINISHED"
    for key in ("test_accuracy", "test_macro_f1", "test_auroc_macro", "test_macro_f1_ci_low"):
        assert evaluation.data.metrics[key] == pytest.approx(child.data.metrics[key], abs=1e-9), key


def test_a_job_whose_server_stops_and_comes_back_trains_on_and_loses_nothing(
    server: MlflowServer, synth_root: Path, tmp_path: Path
) -> None:
    """The server stopped after the first epoch and started again once training is over: the job
    trains on, keeps its writes, sends them when the server answers, and closes its run FINISHED."""
    args = ["-m", *tiny(synth_root, tmp_path, "model.image_size=32", "train.epochs=6"), f"tracking.uri={server.uri}"]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        sweep = start_script("train.py", args, tmp_path, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            assert wait_for(lambda: list((tmp_path / "checkpoints").glob("*/last.pt")), 180)
            server.stop()
            # It trains on without the server to the end, then waits for it (tracking.outage_patience_s).
            assert wait_for(lambda: list((tmp_path / "multirun").glob("*/*/0/metrics_test.json")), 300)
            assert sweep.poll() is None
        finally:
            server.start()
        assert sweep.wait(timeout=300) == 0
    [said] = [log.read_text() for log in (tmp_path / "multirun").glob("*/*/0/train.log")]  # the job's log
    assert f"the tracking server {server.uri} does not answer (Connection refused): the job goes on" in said
    assert "the tracking server answers again after" in said
    [(parent, [child])] = sweeps_in(tmp_path, uri=server.uri)
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert child.data.tags["tracking_outage"].startswith("cut off from the tracking server 1 time(s)")
    client = MlflowClient(server.uri)
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_macro_f1")] == [1, 2, 3, 4, 5, 6]
    assert "test_macro_f1" in child.data.metrics
    assert {"confusion_matrix_test.png", "predictions_test.csv"} <= {
        a.path for a in client.list_artifacts(child.info.run_id)
    }


def wait_for(found: Callable[[], Any], seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := found()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return result


def test_submitit_local_launcher_logs_both_jobs_under_one_parent(synth_root: Path, tmp_path: Path) -> None:
    args = ["-m", *tiny(synth_root, tmp_path), "hydra/launcher=local", "annotations=on,off"]
    result = run_script("train.py", args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [(parent, children)] = sweeps_in(tmp_path)
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == [f"b0 | stratified | ann-{a}" for a in ("off", "on")]
    assert all(c.info.status == "FINISHED" and "test_macro_f1" in c.data.metrics for c in children)
    # Each job ran in a process of its own started by submitit (its logs are in the sweep folder),
    # with the CPUs the preset gives it.
    sweep_dir = Path(parent.data.tags["sweep_dir"])
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2
    assert {c.data.params["runtime.threads"] for c in children} == {"1"}
    assert os.environ.get("BTXRD_PARENT_RUN_ID") is None  # nothing leaked into this process


def test_optuna_search_runs_3_trials_and_reports_the_best(synth_root: Path, tmp_path: Path) -> None:
    args = ["-m", *tiny(synth_root, tmp_path), "hparams_search=optuna", "hydra.sweeper.n_trials=3"]
    result = run_script("train.py", args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [(parent, children)] = sweeps_in(tmp_path)
    assert parent.info.status == "FINISHED" and len(children) == 3
    names = sorted(c.info.run_name for c in children)
    assert names == [f"b0 | stratified | ann-off | trial {n}" for n in range(3)]
    best_f1 = {c.data.tags["trial_params"]: c.data.metrics["best_val_macro_f1"] for c in children}
    assert len(best_f1) == 3 and all("train.lr=" in p and "model.dropout=" in p for p in best_f1)
    # The sweeper's result is the best trial's best validation macro-F1, tagged on the parent.
    results = OmegaConf.load(Path(parent.data.tags["sweep_dir"]) / "optimization_results.yaml")
    assert results.best_value == pytest.approx(max(best_f1.values()))
    assert float(parent.data.tags["best_value"]) == pytest.approx(results.best_value)
    assert "train.lr=" in parent.data.tags["best_params"]
    report = (Path(parent.data.tags["sweep_dir"]) / "sweep_report.md").read_text()
    assert report.startswith(f"Search result: best value {results.best_value:.4f} with ")
    assert "| job | run | status | params |" in report
    lrs = [float(p.split("train.lr=")[1].split()[0]) for p in best_f1]
    assert len(set(lrs)) == 3 and all(1e-5 <= lr <= 3e-3 for lr in lrs)


def test_a_sweep_against_a_server_with_credentials_in_its_url_closes_and_keeps_them_nowhere(
    server: MlflowServer, synth_root: Path, tmp_path: Path
) -> None:
    """Before: every run's params, tags and checkpoints held the password, and the sweep's health check
    took 'alice:...@127.0.0.1' for a host name, waited 900 s and left the parent RUNNING."""
    password = "Srv-Pl4nted-S3cret"
    uri = server.uri.replace("http://", f"http://alice:{password}@")
    args = [
        "-m",
        *tiny(synth_root, tmp_path, "model.image_size=32"),
        "annotations=on,off",
        "hydra.launcher.n_jobs=2",
        f"tracking.uri={uri}",
    ]
    result = run_script("train.py", args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert password not in result.stdout + result.stderr
    [(parent, children)] = sweeps_in(tmp_path, uri=server.uri)
    assert parent.info.status == "FINISHED" and [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    for run in (parent, *children):
        assert password not in str(run.data.params) + str(run.data.tags)
    written = [*tmp_path.rglob("*"), *server.artifacts.rglob("*")]
    assert [str(p) for p in written if p.is_file() and password.encode() in p.read_bytes()] == []
