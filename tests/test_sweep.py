"""Real multiruns through `python train.py -m` in a subprocess, checked in MLflow."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from btxrd.jobs.evaluate import evaluate_job
from btxrd.runtime.environment import cpu_model
from btxrd.runtime.software import environment_digest

from .helpers import compose_config, mlflow_ui, run_script, runs, start_script, sweep_runs, tiny

pytestmark = pytest.mark.slow


def runs_by_role(work: Path):
    return MlflowClient(f"sqlite:///{work / 'mlflow.db'}"), *sweep_runs(work)


def test_multirun_logs_parent_and_its_finished_children(synth_root: Path, tmp_path: Path) -> None:
    # Two jobs at once (more writers at once, on a new store: test_tracking; a 2x2 grid on a server, and
    # logged and registered models: test_integration and test_slurm, make test-integration).
    args = ["-m", *tiny(synth_root, tmp_path), "split=center", "annotations=on,off", "hydra.launcher.n_jobs=2"]
    result = run_script("train.py", args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client, parents, children = runs_by_role(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    names = sorted(c.info.run_name for c in children)
    assert names == ["b0 | center | ann-off", "b0 | center | ann-on"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["model.name"] == "b0" and "split.name" in child.data.params
        assert {"model", "split", "annotations", "sweep_dir", "mlflow.source.git.commit"} <= set(child.data.tags)
        assert child.data.tags["machine.cpu"] == cpu_model() and child.data.tags["machine.torch"] == torch.__version__
        assert child.data.tags["code_version"].startswith(child.data.tags["mlflow.source.git.commit"])
        for key in ("test_macro_f1", "test_accuracy", "test_auroc_macro", "val_macro_f1", "train_loss", "lr"):
            assert key in child.data.metrics, key
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.json", "split.csv", "confusion_matrix_test.png", "predictions_test.csv"} <= artifacts
        assert "environment" in artifacts and child.data.tags["environment.digest"] == environment_digest()
        assert [a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert "sweep: all 2 job(s) finished" in result.stderr

    # The sweep report: one row per job, written to the sweep folder and logged to the parent.
    sweep_dir = Path(parents[0].data.tags["sweep_dir"])
    # The parent id reached each job through its own Hydra config (hydra.job.env_set), not inheritance.
    job_hydra = OmegaConf.load(sweep_dir / "0" / ".hydra" / "hydra.yaml").hydra
    assert job_hydra.job.env_set.BTXRD_PARENT_RUN_ID == parents[0].info.run_id
    assert job_hydra.job.env_set.BTXRD_TRACKING_URI == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert "- machine: " + cpu_model() in (sweep_dir / "sweep_report.md").read_text()
    # The dataset was probed and decoded once: by the process the sweep started for it (or a job first)
    prepared = (sweep_dir / "prepare_data.log").read_text()
    assert "ready: 160 images" in prepared
    logs = prepared + "".join((sweep_dir / str(job) / "train.log").read_text() for job in (0, 1))
    assert logs.count("probing 160 images") == 1 and logs.count("px, decoding)") == 1, logs
    report = pd.read_csv(sweep_dir / "sweep_report.csv")
    assert len(report) == 2 and set(report["status"]) == {"FINISHED"}
    by_run = {c.info.run_id: c for c in children}
    for _, row in report.iterrows():
        assert row["test_macro_f1"] == pytest.approx(by_run[row["run_id"]].data.metrics["test_macro_f1"])
        assert 0 <= row["test_cam_pointing"] <= 1 and 0 <= row["test_cam_energy"] <= 1
    for child in children:  # every test metric has its interval, in MLflow and in the report
        m = child.data.metrics
        assert m["test_macro_f1_ci_low"] <= m["test_macro_f1"] <= m["test_macro_f1_ci_high"]
        assert "test_malignant_sensitivity_at_spec90_ci_high" in m and "malignant_threshold_at_spec95" in m
    assert report["test_macro_f1_ci_low"].notna().all()
    markdown = (sweep_dir / "sweep_report.md").read_text()
    assert "| macro-F1 |" in markdown.replace("macro-F1 | malig", "macro-F1 |") and "## Comparisons" in markdown
    tested = pd.read_csv(sweep_dir / "sweep_comparisons.csv")
    # on vs off on the same test images: paired, 5 bootstrap + DeLong + McNemar (unpaired: test_report)
    assert list(tested["choice"]) == ["annotations"] * 7 and tested["paired"].all()
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")} == {
        "report/sweep_report.csv",
        "report/sweep_report.md",
        "report/sweep_report.png",
        "report/sweep_configurations.csv",
        "report/sweep_comparisons.csv",
        "report/sweep_subgroups.csv",
    }

    # What the MLflow UI's runs page asks its server for: the experiment in model-training mode, the
    # sweep's runs with their datasets (train / val / test) and source.
    assert "runs?workflowType=machine_learning&searchFilter=tags.sweep_dir" in result.stderr
    assert "report/sweep_report.md" in parents[0].data.tags["mlflow.note.content"]
    with mlflow_ui(f"sqlite:///{tmp_path / 'mlflow.db'}") as ui:
        experiment_id = parents[0].info.experiment_id
        answer = ui.get(f"/ajax-api/2.0/mlflow/experiments/get?experiment_id={experiment_id}").get_json()
        tags = {t["key"]: t["value"] for t in answer["experiment"]["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        query = {"experiment_ids": [experiment_id], "filter": f"tags.sweep_dir = '{sweep_dir}'", "max_results": 50}
        shown = ui.post("/ajax-api/2.0/mlflow/runs/search", json=query).get_json()["runs"]

    def run_tags(run: dict) -> dict:
        return {t["key"]: t["value"] for t in run["data"]["tags"]}

    shown = [r for r in shown if run_tags(r).get("sweep") != "parent"]  # the parent run shows too, above them
    assert len(shown) == 2
    for run in shown:
        contexts = {
            t["value"] for d in run["inputs"]["dataset_inputs"] for t in d["tags"] if t["key"] == "mlflow.data.context"
        }
        assert contexts == {"train", "val", "test"}
        assert {d["dataset"]["name"] for d in run["inputs"]["dataset_inputs"]} == {"BTXRD"}
        assert run_tags(run)["mlflow.source.name"] == "train.py" and run_tags(run)["mlflow.user"]

    # evaluate.py's job re-scores a child's checkpoint as a nested run with the same test metrics (in
    # process; evaluate.py as a process, against a tracking server: test_integration).
    child = children[0]
    evaluate_job(compose_config([f"run_id={child.info.run_id}", f"paths.root={tmp_path}"], "evaluate"))
    _, _, nested = runs_by_role(tmp_path)
    evaluation = [r for r in nested if r.data.tags["mlflow.parentRunId"] == child.info.run_id]
    assert len(evaluation) == 1 and evaluation[0].info.status == "FINISHED"
    for key in ("test_accuracy", "test_macro_f1", "test_auroc_macro", "test_cam_pointing", "test_cam_energy"):
        assert evaluation[0].data.metrics[key] == pytest.approx(child.data.metrics[key], abs=1e-9), key
    assert "test_ece" in evaluation[0].data.metrics
    eval_artifacts = {a.path for a in client.list_artifacts(evaluation[0].info.run_id)}
    assert {"roc_test.png", "reliability_test.png", "confusion_matrix_test.png", "gradcam"} <= eval_artifacts
    assert evaluation[0].data.metrics["test_macro_f1_ci_low"] == child.data.metrics["test_macro_f1_ci_low"]


@pytest.mark.integration  # end-to-end fault injection: make test-integration (CI runs it)
def test_a_failing_job_does_not_sink_the_sweep(synth_root: Path, tmp_path: Path) -> None:
    args = ["-m", *tiny(synth_root, tmp_path), "model.weights=null,/no/such/weights.pt", "hydra.launcher.n_jobs=2"]
    result = run_script("train.py", args, cwd=tmp_path)
    assert result.returncode != 0
    _, parents, children = runs_by_role(tmp_path)
    assert parents[0].info.status == "FAILED"
    status = {c.data.tags["overrides"].split("model.weights=")[1].split()[0]: c for c in children}
    assert status["null"].info.status == "FINISHED" and "test_macro_f1" in status["null"].data.metrics
    failed = status["/no/such/weights.pt"]
    assert failed.info.status == "FAILED"
    assert "model.weights=/no/such/weights.pt: file not found" in failed.data.tags["error"]
    assert "sweep: 1 of 2 job(s) failed" in result.stderr
    assert "model.weights=/no/such/weights.pt" in result.stderr
    report = pd.read_csv(Path(parents[0].data.tags["sweep_dir"]) / "sweep_report.csv")
    assert sorted(report["status"]) == ["FAILED", "FINISHED"]
    assert "file not found" in report.loc[report["status"] == "FAILED", "error"].iloc[0]

    # The same command with sweep.skip_finished=true skips the finished job and reruns the failed one.
    again = run_script("train.py", [*args, "sweep.skip_finished=true"], cwd=tmp_path)
    assert again.returncode != 0
    _, parents, children = runs_by_role(tmp_path)
    newest = max(parents, key=lambda r: r.info.start_time)
    second = [c for c in children if c.data.tags["mlflow.parentRunId"] == newest.info.run_id]
    skipped = [c for c in second if c.data.tags.get("skipped") == "true"]
    assert len(second) == 2 and len(skipped) == 1
    assert skipped[0].data.tags["skipped_for"] == status["null"].info.run_id
    assert skipped[0].data.metrics["test_macro_f1"] == status["null"].data.metrics["test_macro_f1"]
    assert "model.weights" not in skipped[0].data.params  # nothing was trained again
    report = pd.read_csv(Path(newest.data.tags["sweep_dir"]) / "sweep_report.csv")
    assert sorted(report["status"]) == ["FAILED", "SKIPPED"]


@pytest.mark.integration  # end-to-end fault injection: make test-integration (CI runs it)
def test_a_sweep_stopped_by_sigterm_closes_every_run_killed(synth_root: Path, tmp_path: Path) -> None:
    # SIGTERM to the launching process only (kill PID, a scheduler's cancel): joblib then kills its
    # workers outright, so the jobs' runs are closed by the launcher's exit hook.
    args = [
        "-m",
        *tiny(synth_root, tmp_path, "model.image_size=32", "train.epochs=50"),
        "annotations=on,off",
        "hydra.launcher.n_jobs=2",
    ]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        sweep = start_script("train.py", args, tmp_path, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + 180
        while time.time() < deadline and len(list((tmp_path / "checkpoints").glob("*/last.pt"))) < 2:
            time.sleep(0.2)
        sweep.send_signal(signal.SIGTERM)  # both jobs are past their first epoch
        assert sweep.wait(timeout=120) == 143
    _, parents, children = runs_by_role(tmp_path)
    assert parents[0].info.status == "KILLED" and parents[0].data.tags["error"] == "stopped by SIGTERM"
    assert [c.info.status for c in children] == ["KILLED", "KILLED"]
    assert {c.data.tags["error"] for c in children} == {"the sweep was stopped by SIGTERM"}
    assert len(list((tmp_path / "checkpoints").glob("*/last.pt"))) == 2  # both can resume
    assert "sweep: stopped by SIGTERM; 2 of 2 launched job(s) did not finish." in (tmp_path / "stderr.txt").read_text()


@pytest.mark.integration  # 5-13 s: make test-integration (make test's 5 minutes; CI runs both)
def test_a_user_error_ends_in_one_line_and_a_failed_run(synth_root: Path, tmp_path: Path) -> None:
    # The entry point's handling; the messages of every other user error: test_reliability (in-process).
    message = "error: dataset root not found: /no/such/dataset (set data.root)"
    result = run_script("train.py", [*tiny(synth_root, tmp_path), "data.root=/no/such/dataset"], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    found = runs(tmp_path)
    assert [r.info.status for r in found] == ["FAILED"]
    assert message.removeprefix("error: ")[:30] in found[0].data.tags["error"]


@pytest.mark.integration  # a real multirun subprocess (make test's time budget)
def test_a_sweep_value_that_does_not_compose_stops_the_sweep_before_any_job(synth_root: Path, tmp_path: Path) -> None:
    result = run_script("train.py", ["-m", *tiny(synth_root, tmp_path), "train.lr=0.01,abc"], cwd=tmp_path)
    assert result.returncode == 2
    assert "error: Error merging override train.lr=abc: Value 'abc'" in result.stderr
    assert "sweep: no job was launched; the parent run ended FAILED" in result.stderr
    _, parents, children = runs_by_role(tmp_path)
    assert [p.info.status for p in parents] == ["FAILED"] and children == []
    assert parents[0].data.tags["error"] == "no job was launched"
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.integration  # end-to-end fault injection: make test-integration (CI runs it)
def test_a_killed_launcher_leaves_no_worker_and_no_run_running(synth_root: Path, tmp_path: Path) -> None:
    """SIGKILL (the OOM killer, a lost ssh session): nothing can close the runs from the launcher. Its
    workers notice it is gone, stop their jobs (runs KILLED, checkpoints kept) and exit; the parent run
    is closed by close-stale (or the next sweep on the store)."""
    import sys

    args = [
        "-m",
        *tiny(synth_root, tmp_path, "model.image_size=32", "train.epochs=50"),
        "annotations=on,off",
        "hydra.launcher.n_jobs=2",
    ]
    sweep = start_script("train.py", args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Deadlines are generous and waited on conditions, never on a time: a loaded machine (the whole
    # integration suite beside other work) takes minutes where an idle one takes seconds.
    both_training = _wait_for(lambda: len(list((tmp_path / "checkpoints").glob("*/last.pt"))) >= 2, 600)
    assert both_training, "the two jobs did not both finish an epoch within 10 minutes"
    workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent_of(p) == sweep.pid]
    assert workers, "no worker processes found"
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()

    def alive() -> list[int]:
        return [pid for pid in workers if Path(f"/proc/{pid}").exists() and _parent_of(Path(f"/proc/{pid}"))]

    _wait_for(lambda: not alive(), 300)
    assert not alive(), workers
    parents, children = sweep_runs(tmp_path)
    assert [c.info.status for c in children] == ["KILLED", "KILLED"]
    assert all(c.data.tags["error"].startswith("stopped: the sweep's launcher is gone") for c in children)
    assert parents[0].info.status == "RUNNING"  # killed: nobody closed it
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    closed = subprocess.run(
        [sys.executable, "-m", "btxrd.tracking", "close-stale", "--tracking-uri", store],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"closed KILLED: {parents[0].info.run_id}" in closed.stdout
    assert sweep_runs(tmp_path)[0][0].info.status == "KILLED"


def _wait_for(condition, seconds: float) -> bool:
    """Whether ``condition()`` came true within ``seconds`` (asked every 0.2 s)."""
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


def _parent_of(proc: Path) -> int:
    """The parent pid of a /proc/<pid> entry (0 when it is gone or a zombie)."""
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return 0 if fields[0] == "Z" else int(fields[1])


@pytest.mark.integration  # a real 2-job multirun with logged models (make test's time budget)
def test_a_sweep_registers_its_best_model_with_a_card_and_alias_when_artifacts_live_elsewhere(
    synth_root: Path, tmp_path: Path
) -> None:
    # Started from another folder than the store's, with the artifacts in a third: registering failed
    # ("Logged model with ID ... not found": MLflow looked in the default store, ./mlflow.db), and the sweep
    # still exited 0.
    elsewhere, started_in = tmp_path / "artifact-store", tmp_path / "elsewhere"
    started_in.mkdir()
    args = [
        "-m",
        *tiny(synth_root, tmp_path),
        "seed=0,1",
        "hydra.launcher.n_jobs=2",  # jobs in worker processes: the launching one never logs a model itself
        "sweep.register_best=true",
        "tracking.log_model=true",
        f"tracking.artifact_root={elsewhere}",
        "tracking.system_metrics_interval_s=1",
    ]
    result = run_script("train.py", args, cwd=started_in)
    assert result.returncode == 0, result.stderr[-3000:]
    client, [parent], children = runs_by_role(tmp_path)
    best = max(children, key=lambda c: c.data.metrics["best_val_macro_f1"])
    assert not list(started_in.iterdir())  # no MLflow default store made where the sweep started
    version = client.get_model_version_by_alias("btxrd-classifier", "champion")
    assert version.version == 1 and version.run_id == best.info.run_id
    assert version.source.startswith(elsewhere.as_uri()) and "## Test results" in version.description
    assert parent.info.status == "FINISHED" and parent.data.tags["registered_model"] == "models:/btxrd-classifier/1"
    assert "models:/btxrd-classifier@champion now names version 1" in result.stderr
    # Every run: its machine's use over time, and its software
    digests = set()
    for child in children:
        assert client.get_metric_history(child.info.run_id, "system/cpu_utilization_percentage")
        assert "system/system_memory_usage_megabytes" in child.data.metrics
        [listed] = client.list_artifacts(child.info.run_id, "environment")
        assert listed.path == "environment/requirements.txt"
        digests.add(child.data.tags["environment.digest"])
    [digest] = digests
    report = (Path(parent.data.tags["sweep_dir"]) / "sweep_report.md").read_text()
    assert f"- environment: packages {digest} (each run's environment/requirements.txt)" in report


def test_a_registration_that_fails_ends_the_sweep_failed_with_exit_code_1(tmp_path: Path, capsys) -> None:
    from btxrd.sweep import MLflowSweepCallback
    from btxrd.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    parent = tracker.start_run("sweep", {"sweep": "parent"})
    tags = {"job_num": "0", "monitor": "val_macro_f1", "logged_model_id": "m-0123456789abcdef0123456789abcdef"}
    child = tracker.start_run("job 0", tags, parent_id=parent)  # its logged model is gone
    tracker.log_metrics(child, {"best_val_macro_f1": 0.5})
    tracker.end_run(child, "FINISHED")
    callback = MLflowSweepCallback()
    callback.tracker, callback.parent_id, callback.sweep_dir = tracker, parent, str(tmp_path / "sweep")
    callback.register_as = "btxrd-classifier"
    with pytest.raises(SystemExit) as stopped:
        callback.on_multirun_end(config=None)
    assert stopped.value.code == 1
    ended = tracker.get_run(parent)
    assert ended.info.status == "FAILED" and ended.data.tags["error"].startswith("registering the best model failed: ")
    assert "error: sweep: all 1 job(s) finished, but registering the best model failed: " in capsys.readouterr().err

    # A sweep in which a job failed registers nothing: the best of the others may not be the sweep's best.
    parent = tracker.start_run("sweep", {"sweep": "parent"})
    for job, status in (("0", "FINISHED"), ("1", "FAILED")):
        child = tracker.start_run(f"job {job}", {**tags, "job_num": job}, parent_id=parent)
        tracker.log_metrics(child, {"best_val_macro_f1": 0.5})
        tracker.end_run(child, status)
    callback.parent_id = parent
    with pytest.raises(SystemExit):
        callback.on_multirun_end(config=None)
    error = tracker.get_run(parent).data.tags["error"]
    assert error.startswith("sweep.register_best: nothing registered, since 1 job(s) did not finish")
    assert f"error: sweep: 1 of 2 job(s) finished, but {error}" in capsys.readouterr().err


def test_loky_replacing_a_worker_that_grew_is_not_reported_as_a_leak_and_other_warnings_still_are() -> None:
    import warnings

    from btxrd.sweep.launch import WORKER_REPLACED, quiet_worker_replacement

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        quiet_worker_replacement()
        warnings.warn(f"{WORKER_REPLACED}. This can be caused by a too short worker timeout.", stacklevel=1)
        warnings.warn("a worker crashed", stacklevel=1)
    assert [str(w.message) for w in said] == ["a worker crashed"]
