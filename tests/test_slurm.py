"""Sweeps on a real Slurm cluster (slurmctld, slurmd, slurmdbd with MariaDB, munge; this machine,
loopback) through ``hydra/launcher=slurm``, logging to the shared MLflow server a team would run:
a grid as one job array, a requeued job, a cancelled job, a failing grid cell.

Run with `make test-integration` (it installs Debian's Slurm packages when missing).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from btxrd.jobs.train import train_job
from btxrd.runtime.slurm import LocalSlurm, local_slurm
from btxrd.tracking.server import MlflowServer

from .helpers import compose_config, run_script, runs, start_script, sweeps_in, tiny

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The slurm preset as a user points it at a small cluster: no GPUs, one CPU and 2 GB per job.
ON_SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=30",
]
# Long enough to act on a job while it trains; one thread in every process, so that results are
# equal to the bit between a Slurm job and the in-process reference (a CPU guarantee).
SLOW = ["train.epochs=8", "model.image_size=32", "train.device=cpu", "train.num_threads=1"]


@pytest.fixture(scope="module")
def slurm() -> Iterator[LocalSlurm]:
    folder = Path(tempfile.mkdtemp(prefix="btxrd-slurm-"))  # short: munge's socket lives in it
    with local_slurm(folder) as cluster:
        yield cluster
    assert cluster.processes == {}  # every daemon stopped, whether the tests passed or not
    assert not subprocess.run(["pgrep", "-f", str(folder)], capture_output=True).stdout
    shutil.rmtree(folder, ignore_errors=True)


def _slurm(cluster: LocalSlurm, *command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True, env=cluster._daemon_env()).stdout


def _wait_for(what: str, found, timeout_s: float = 240.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout_s:.0f} s")


def _trained_checkpoints(work: Path, at_least: int) -> list[Path]:
    """The last.pt files under ``work`` once at least ``at_least`` hold a finished epoch."""
    found = []
    for path in (work / "checkpoints").glob("*/last.pt"):
        try:
            if torch.load(path, weights_only=True)["epoch"] >= 1:
                found.append(path)
        except (RuntimeError, EOFError, OSError):  # being written
            pass
    return found if len(found) >= at_least else []


def test_a_2x2_grid_runs_as_one_job_array_into_the_shared_server(
    slurm: LocalSlurm, server: MlflowServer, synth_root: Path, tmp_path: Path
) -> None:
    args = [
        "-m",
        *tiny(synth_root, tmp_path, *ON_SLURM),
        "split=stratified,center",
        "annotations=on,off",
        f"tracking.uri={server.uri}",
        "sweep.register_best=true",
        "tracking.log_model=true",
    ]
    result = run_script("train.py", args, cwd=tmp_path, timeout=900, env=slurm.env)
    assert result.returncode == 0, result.stderr[-3000:]
    [(parent, children)] = sweeps_in(tmp_path, uri=server.uri)
    assert parent.info.status == "FINISHED" and len(children) == 4
    client = MlflowClient(server.uri)
    job_ids = set()
    for child in children:
        assert child.info.status == "FINISHED"
        assert 0 <= child.data.metrics["test_macro_f1"] <= 1 and "test_macro_f1_ci_low" in child.data.metrics
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.json", "confusion_matrix_test.png", "gradcam", "checkpoints"} <= artifacts
        assert client.list_artifacts(child.info.run_id, "gradcam")
        job_ids.add(child.data.tags["slurm.job_id"])
        assert child.data.tags["slurm.node"] == slurm.node
    # One job array, one task per job, and Slurm's accounting saw each complete.
    arrays = {job.split("_")[0] for job in job_ids}
    assert len(arrays) == 1 and sorted(job.split("_")[1] for job in job_ids) == ["0", "1", "2", "3"]
    states = _slurm(slurm, "sacct", "-n", "-P", "-X", "-j", arrays.pop(), "-o", "JobID,State").split()
    assert sorted(states) == sorted(f"{job}|COMPLETED" for job in job_ids)
    # Every run's logged model; the best by validation (never test) registered on the server
    logged = {client.get_logged_model(c.data.tags["logged_model_id"]).source_run_id for c in children}
    assert logged == {c.info.run_id for c in children}
    best = max(children, key=lambda c: c.data.metrics["best_val_macro_f1"])
    assert parent.data.tags["registered_model"] == "models:/btxrd-classifier/1"
    assert client.get_model_version("btxrd-classifier", "1").run_id == best.info.run_id
    assert "as models:/btxrd-classifier/1" in result.stderr
    sweep_dir = Path(parent.data.tags["sweep_dir"])
    assert "| 3 |" in (sweep_dir / "sweep_report.md").read_text()
    assert {"report/sweep_report.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


def test_a_requeued_job_resumes_its_run_and_ends_as_if_never_interrupted(
    slurm: LocalSlurm, synth_root: Path, tmp_path: Path
) -> None:
    # Uninterrupted reference, in this process (same code and data, one thread like the Slurm job).
    train_job(compose_config(tiny(synth_root, tmp_path / "reference", *SLOW)))
    expected = runs(tmp_path / "reference")[0].data.metrics

    work = tmp_path / "slurm"
    work.mkdir()
    args = ["-m", *tiny(synth_root, work, *ON_SLURM, *SLOW)]
    sweep = start_script(
        "train.py", args, cwd=work, env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    [checkpoint] = _wait_for("finished epoch", lambda: _trained_checkpoints(work, 1))
    [job] = slurm.jobs()
    # What a preemption does: Slurm stops the job and queues it again.
    _slurm(slurm, "scontrol", "requeue", job)
    requeued_at = torch.load(checkpoint, weights_only=True)["epoch"]
    # Slurm holds a requeued job for 2 minutes (its begin time); an administrator's release, to keep the test short.
    _wait_for("requeued job pending", lambda: "PENDING" in _slurm(slurm, "squeue", "-h", "-j", job, "-o", "%T"))
    _slurm(slurm, "scontrol", "update", f"JobId={job}", "StartTime=now")
    out, err = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, err[-3000:]

    [(parent, [run])] = sweeps_in(work)
    assert parent.info.status == "FINISHED" and run.info.status == "FINISHED"
    assert run.data.tags["slurm.job_id"] == job
    resumed_from = int(run.data.tags["resumed_from_epoch"])  # the same run, continued from its last checkpoint
    assert requeued_at <= resumed_from < 8
    history = MlflowClient(f"sqlite:///{work / 'mlflow.db'}").get_metric_history(run.info.run_id, "val_macro_f1")
    assert {m.step for m in history} == set(range(1, 9))  # every epoch (one cut short by the requeue is run again)
    for key in ("test_macro_f1", "test_accuracy", "test_auroc_macro", "best_val_macro_f1", "val_loss"):
        assert run.data.metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    states = _slurm(slurm, "sacct", "-n", "-P", "-X", "-D", "-j", job, "-o", "State").split()
    assert states == ["REQUEUED", "COMPLETED"]


def test_a_cancelled_job_ends_killed_and_the_rerun_completes_only_it(
    slurm: LocalSlurm, synth_root: Path, tmp_path: Path
) -> None:
    args = ["-m", *tiny(synth_root, tmp_path, *ON_SLURM, *SLOW), "annotations=on,off"]
    sweep = start_script(
        "train.py", args, cwd=tmp_path, env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for("two jobs training", lambda: _trained_checkpoints(tmp_path, 2))
    [cancelled] = [job for job in slurm.jobs() if job.endswith("_1")]  # job 1: annotations=off
    _slurm(slurm, "scancel", cancelled)
    out, err = sweep.communicate(timeout=900)
    assert sweep.returncode != 0

    [(parent, children)] = sweeps_in(tmp_path)
    by_job = {c.data.tags["job_num"]: c for c in children}
    finished, killed = by_job["0"], by_job["1"]
    assert finished.info.status == "FINISHED"
    assert killed.info.status == "KILLED"
    assert re.fullmatch(rf"Slurm job {cancelled} ended CANCELLED by \d+ without a result", killed.data.tags["error"])
    assert parent.info.status == "FAILED"
    assert parent.data.tags["not_finished"].endswith(killed.data.tags["error"])
    assert "annotations=off" in parent.data.tags["not_finished"]
    assert f"Slurm job {cancelled} ended CANCELLED" in err  # the sweep's last lines say it too

    # The same command with sweep.skip_finished=true: job 0 is not trained again, job 1 resumes its run.
    again = run_script("train.py", [*args, "sweep.skip_finished=true"], cwd=tmp_path, timeout=900, env=slurm.env)
    assert again.returncode == 0, again.stderr[-3000:]
    [_, (second, children)] = sweeps_in(tmp_path)
    by_job = {c.data.tags["job_num"]: c for c in children}
    assert second.info.status == "FINISHED"
    assert by_job["0"].data.tags["skipped_for"] == finished.info.run_id
    assert by_job["1"].info.run_id == killed.info.run_id and by_job["1"].info.status == "FINISHED"
    assert int(by_job["1"].data.tags["resumed_from_epoch"]) >= 1


def test_a_failing_grid_cell_fails_alone(slurm: LocalSlurm, synth_root: Path, tmp_path: Path) -> None:
    args = ["-m", *tiny(synth_root, tmp_path, *ON_SLURM), "model.weights=null,/no/such/weights.pt"]
    result = run_script("train.py", args, cwd=tmp_path, timeout=900, env=slurm.env)
    assert result.returncode != 0
    [(parent, children)] = sweeps_in(tmp_path)
    assert parent.info.status == "FAILED"
    status = {c.data.tags["overrides"].split("model.weights=")[1].split()[0]: c for c in children}
    assert status["null"].info.status == "FINISHED" and "test_macro_f1" in status["null"].data.metrics
    failed = status["/no/such/weights.pt"]
    assert failed.info.status == "FAILED"
    assert "model.weights=/no/such/weights.pt: file not found" in failed.data.tags["error"]
    assert "sweep: 1 of 2 job(s) failed" in result.stderr
    assert "model.weights=/no/such/weights.pt" in parent.data.tags["not_finished"]
