"""The tracking layer under concurrent writers, as in a parallel sweep on a fresh SQLite store."""

from __future__ import annotations

import io
import multiprocessing as mp
import re
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from btxrd.tracking import Tracker, flatten, job_run
from btxrd.tracking.reach import TrackingUnreachable, unreachable

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


@pytest.mark.integration  # 5-13 s: make test-integration (make test's 5 minutes; CI runs both)
@pytest.mark.slow
def test_four_concurrent_jobs_on_a_fresh_store_lose_nothing(tmp_path: Path) -> None:
    context = mp.get_context("spawn")  # fresh interpreters, like the joblib launcher's loky workers
    work = tmp_path / "project"  # a folder without a store (tmp_path has a ready one: tests/conftest.py)
    work.mkdir()
    uri = f"sqlite:///{work / 'mlflow.db'}"
    # As the sweep callback does: the launching process creates store, experiment and parent first.
    launcher = Tracker(uri, "btxrd", work / "mlruns")
    parent_id = launcher.start_run("sweep", {"sweep": "parent"})
    with context.Pool(N_WORKERS) as pool:
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
    assert url == (
        f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
        "&searchFilter=tags.sweep_dir%20%3D%20%27%2Fwork%2Fmultirun%2Fx%27"
    )
    assert ui_base("http://host:5001", "http://127.0.0.1:5000") == "http://host:5001"  # a server shows its runs
    run_id = tracker.start_run("job")
    tracker.log_dataset(run_id, "demo", "0123abcd", "/data/demo", "train", {"images": 10}, {"split": "center"})
    [logged] = client.get_run(run_id).inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == ("demo", "0123abcd")
    assert {t.key: t.value for t in logged.tags} == {"mlflow.data.context": "train", "split": "center"}


@pytest.mark.parametrize(
    "store_error",
    [
        "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest",
        'BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"',
        "(pymysql.err.IntegrityError) (1062, \"Duplicate entry '1-BTXRD-9d5a' for key 'datasets.PRIMARY'\")",
    ],
)
def test_two_jobs_logging_one_dataset_at_once_both_record_it(tmp_path: Path, store_error: str) -> None:
    # The second job's insert loses the race on the datasets table's key (a 2x2 sweep on a PostgreSQL
    # server failed a job this way); tried again, it links the row the first job made.
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    run_id = tracker.start_run("job")
    real_log_inputs, calls = tracker.client.log_inputs, []

    def loses_the_race_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise MlflowException(store_error)
        return real_log_inputs(*args, **kwargs)

    tracker.client.log_inputs = loses_the_race_once
    tracker.log_dataset(run_id, "BTXRD", "9d5a", "/data", "train", {"images": 10})
    assert len(calls) == 2
    [logged] = tracker.client.get_run(run_id).inputs.dataset_inputs
    assert logged.dataset.digest == "9d5a"


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


def test_the_sql_store_is_imported_before_the_store_lock_is_taken(tmp_path: Path) -> None:
    """A sweep's jobs open the store at the same moment: the job that waits for the lock must wait for
    the other's table check only, not for its import of MLflow's SQL store (about 1 s)."""
    from .helpers import run_python_at_once

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spy = (
        "import sys; from btxrd.tracking import mlflow_store as m; Lock = m.FileLock;"
        "m.FileLock = type('Spy', (Lock,), {'acquire': lambda self, *a, **k: print('imported at the lock:', "
        "'mlflow.store.tracking.sqlalchemy_store' in sys.modules) or Lock.acquire(self, *a, **k)});"
        f"m.Tracker({uri!r}, 'btxrd').client; print('opened')"
    )
    (output,) = run_python_at_once(spy, n=1)
    assert "imported at the lock: True" in output and output.strip().endswith("opened"), output


@pytest.mark.integration  # fault injection with real processes, repeated: make test-integration
@pytest.mark.slow
def test_processes_opening_a_new_store_at_once_create_it_once(tmp_path: Path) -> None:
    """Two sweeps started together on a store that does not exist yet raced creating its tables."""
    from .helpers import run_python_at_once

    for trial in range(3):
        uri = f"sqlite:///{tmp_path / f'store{trial}' / 'mlflow.db'}"
        outputs = run_python_at_once(
            "from btxrd.tracking import Tracker;"
            f"t = Tracker({uri!r}, 'btxrd'); t.end_run(t.start_run('sweep')); print('ok')",
            n=4,
        )
        assert all(out.strip().endswith("ok") for out in outputs), outputs
        client = MlflowClient(uri)
        assert len(client.search_runs([client.get_experiment_by_name("btxrd").experiment_id])) == 4


def test_a_sweep_without_its_parent_run_or_with_a_launcher_that_cannot_work_stops_at_once(
    tmp_path: Path, capsys
) -> None:
    from omegaconf import open_dict

    from btxrd.sweep.callback import MLflowSweepCallback

    from .helpers import compose_config

    (tmp_path / "file").write_text("a file where the store's folder should be")
    for override, message in (
        (f"tracking.uri=sqlite:///{tmp_path / 'file' / 'mlflow.db'}", "error: sweep: "),
        ("hydra.launcher.n_jobs=0", "error: sweep: hydra.launcher.n_jobs=0: give the jobs"),
    ):
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


# --------------------------------------------------------------- a tracking server that stops answering


class CutOffTracker(Tracker):
    """A real store behind a switch: while ``down``, every call fails as a server that does not answer."""

    down = False

    def answers(self) -> bool:
        return not self.down

    def _cut(self, name: str):
        real = getattr(super(), name)

        def call(*args, **kwargs):
            if self.down:
                raise TrackingUnreachable("the tracking server http://127.0.0.1:1 does not answer (Connection refused)")
            return real(*args, **kwargs)

        return call

    def __getattribute__(self, name: str):
        if name in ("log_params", "log_metrics", "set_tags", "log_artifact", "end_run"):
            return object.__getattribute__(self, "_cut")(name)
        return object.__getattribute__(self, name)


def test_a_job_cut_off_from_its_server_goes_on_and_sends_what_it_kept_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    from btxrd.tracking import lifecycle, mlflow_store

    monkeypatch.setattr(lifecycle, "PROBE_INTERVAL_S", 0.05)
    monkeypatch.setattr(mlflow_store, "PROBE_INTERVAL_S", 0.05)
    tracker = CutOffTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns", outage_patience_s=5)
    (tmp_path / "history.csv").write_text("epoch\n0\n")
    with job_run(tracker, "job", {}, output_dir=tmp_path) as recorder:
        recorder.log_metrics({"val_loss": 1.0}, step=1)
        tracker.down = True
        started = time.monotonic()
        for step in (2, 3, 4):  # training goes on: nothing waits for the server
            recorder.log_metrics({"val_loss": 1.0 / step}, step=step)
        recorder.artifact(tmp_path / "history.csv")
        recorder.set_tags({"code_version": "x"})
        assert time.monotonic() - started < 1.0 and len(recorder.kept) == 5
        assert "does not answer (Connection refused): the job goes on" in caplog.text
        tracker.down = False
        time.sleep(0.1)
        recorder.log_metrics({"val_loss": 0.2}, step=5)  # the first write once it answers sends the rest first
        assert recorder.kept == []
    run = tracker.get_run(recorder.run_id)
    assert run.info.status == "FINISHED"
    history = tracker.client.get_metric_history(run.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25), (5, 0.2)]
    assert sorted(m.timestamp for m in history) == [m.timestamp for m in history]  # measured, not sent, times
    assert tracker.artifact_paths(run.info.run_id) == ["history.csv"] and run.data.tags["code_version"] == "x"
    # The seconds are measured (well under 1 here, but this machine is shared): any whole number
    assert re.fullmatch(
        r"cut off from the tracking server 1 time\(s\), \d+ s in all; 6 write\(s\) were kept and "
        r"sent once it answered again",
        run.data.tags["tracking_outage"],
    )


def test_a_job_whose_server_stays_away_waits_its_patience_then_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from btxrd.tracking import lifecycle

    monkeypatch.setattr(lifecycle, "PROBE_INTERVAL_S", 0.05)
    tracker = CutOffTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns", outage_patience_s=0.3)
    started = time.monotonic()
    with pytest.raises(TrackingUnreachable) as lost:
        with job_run(tracker, "job", {}, output_dir=tmp_path) as recorder:
            tracker.down = True
            recorder.log_metrics({"val_loss": 1.0}, step=1)
    assert 0.3 <= time.monotonic() - started < 3
    message = str(lost.value)
    assert "\n" not in message and message.startswith("the tracking server http://127.0.0.1:1 does not answer")
    assert f"2 write(s) of run {recorder.run_id} were not sent; the run stays RUNNING until" in message
    tracker.down = False
    assert tracker.run_status(recorder.run_id) == "RUNNING"  # closed by close-stale once its process is gone

    # A job that fails meanwhile raises its own error, not the server's, and does not wait (stopped: SIGTERM)
    tracker.down = False
    with pytest.raises(ValueError, match="the job's own error"):
        with job_run(tracker, "job 2", {}, output_dir=tmp_path) as recorder:
            tracker.down = True
            raise ValueError("the job's own error")


def test_a_write_the_server_refuses_is_an_error_not_kept(tmp_path: Path) -> None:
    tracker = CutOffTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    with pytest.raises(Exception, match="Changing param values is not allowed"):
        with job_run(tracker, "job", {}, output_dir=tmp_path) as recorder:
            recorder.log_params({"lr": "0.1"})
            recorder.log_params({"lr": "0.2"})
    assert recorder.kept == [] and tracker.run_status(recorder.run_id) == "FAILED"


def test_what_mlflow_says_of_a_server_that_does_not_answer_is_one_line(tmp_path: Path, monkeypatch) -> None:
    import http.server
    import threading

    from mlflow.exceptions import MlflowException

    from .helpers import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(MlflowException) as failed:
        MlflowClient(closed).get_run("0" * 32)
    assert str(unreachable(failed.value)) == f"the tracking server {closed} does not answer (Connection refused)"
    assert unreachable(MlflowException("Run '00' not found")) is None  # an answer, not a missing server
    assert not Tracker(closed, "btxrd").answers()

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(int(self.path.split("/")[1]))
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    served = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=served.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{served.server_port}"
        assert Tracker(f"{base}/200", "btxrd").answers() and Tracker(f"{base}/403", "btxrd").answers()
        assert not Tracker(f"{base}/503", "btxrd").answers()  # the server is up, its store is not
    finally:
        served.shutdown()


def test_a_sweep_ending_while_its_server_is_away_waits_for_it_to_close_the_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import threading

    from btxrd.sweep.callback import MLflowSweepCallback
    from btxrd.tracking import mlflow_store

    monkeypatch.setattr(mlflow_store, "PROBE_INTERVAL_S", 0.05)
    tracker = CutOffTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns", outage_patience_s=5)
    callback = MLflowSweepCallback()
    callback.tracker, callback.sweep_dir = tracker, str(tmp_path / "multirun")
    parent_id = callback.parent_id = tracker.start_run("sweep", {"sweep": "parent"})
    tracker.end_run(tracker.start_run("job 0", {"job_num": "0"}, parent_id=parent_id))
    tracker.down = True
    threading.Timer(0.3, lambda: setattr(tracker, "down", False)).start()  # a restart
    callback.finish()
    assert tracker.run_status(parent_id) == "FINISHED"
    assert "sweep: the tracking server sqlite:" in capsys.readouterr().err

    # One that stays away: one line, exit code 1; the parent is left to close-stale
    tracker.outage_patience_s = 0.2
    parent_id = callback.parent_id = tracker.start_run("sweep", {"sweep": "parent"})
    tracker.down = True
    with pytest.raises(SystemExit) as stopped:
        callback.finish()
    assert stopped.value.code == 1
    said = capsys.readouterr().err.strip().splitlines()
    assert said[-1].startswith("error: sweep: the tracking server sqlite:") and "did not answer for 0.2 s" in said[-1]
    tracker.down = False
    assert tracker.run_status(parent_id) == "RUNNING"
