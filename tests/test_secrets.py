"""Secrets in settings are stored nowhere and shown nowhere; stores that cannot be reached fail fast, in one line."""

from __future__ import annotations

import http.server
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from btxrd.entry import credentials_out_of_command_line
from btxrd.errors import ConfigError
from btxrd.jobs.train import train_job
from btxrd.redaction import (
    PASSWORD_ENV,
    PGPASSWORD_ENV,
    USERNAME_ENV,
    RedactingFilter,
    move_credentials,
    redact_config,
    redact_text,
)
from btxrd.tracking import Tracker

from .helpers import compose_config, free_port, run_script, runs, tiny

PLANTED = "Pl4nted-S3cret"  # grepped for in everything a sweep leaves behind


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://alice:pw@host:5000/x", "http://***@host:5000/x"),
        ("postgresql+psycopg://bob:p%40ss@db.example:5432/mlflow", "postgresql+psycopg://***@db.example:5432/mlflow"),
        ("https://TOKEN@host", "https://***@host"),
        (
            "postgresql://db/mlflow?user=bob&password=hunter2&sslmode=require",
            "postgresql://db/mlflow?user=bob&password=***&sslmode=require",
        ),
        (
            "s3://bucket/key?X-Amz-Signature=abc123&X-Amz-Credential=xyz",
            "s3://bucket/key?X-Amz-Signature=***&X-Amz-Credential=***",
        ),
        ("tracking.uri=http://u:p@h db.password=hunter2", "tracking.uri=http://***@h db.password=***"),
        ("sqlite:////abs/mlflow.db and http://127.0.0.1:5000", "sqlite:////abs/mlflow.db and http://127.0.0.1:5000"),
    ],
)
def test_secrets_in_text_are_hidden_and_nothing_else(text: str, shown: str) -> None:
    assert redact_text(text) == shown


def test_a_config_keeps_its_shape_and_says_which_keys_it_hid() -> None:
    config = {
        "tracking": {"uri": "http://al:pw@h", "ui_url": "http://h:5000"},
        "model": {"kwargs": {"api_token": "abc", "depth": 3}},
        "data": {"root": "/data"},
    }
    shown, hidden = redact_config(config)
    assert shown == {
        "tracking": {"uri": "http://***@h", "ui_url": "http://h:5000"},
        "model": {"kwargs": {"api_token": "***", "depth": 3}},
        "data": {"root": "/data"},
    }
    assert hidden == ["tracking.uri", "model.kwargs.api_token"]
    assert config["tracking"]["uri"] == "http://al:pw@h"  # the original is untouched


def test_credentials_move_to_the_variables_their_client_reads() -> None:
    assert move_credentials("https://al:p%40ss@h:5000/") == (
        "https://h:5000/",
        {USERNAME_ENV: "al", PASSWORD_ENV: "p@ss"},
    )
    assert move_credentials("postgresql://bob:pw@db/mlflow") == ("postgresql://bob@db/mlflow", {PGPASSWORD_ENV: "pw"})
    assert move_credentials("mysql://bob:pw@db/mlflow") == ("mysql://bob:pw@db/mlflow", {})  # no variable: kept
    assert move_credentials("sqlite:////a/b.db") == ("sqlite:////a/b.db", {})


def test_the_command_line_loses_its_credentials_before_hydra_reads_it(monkeypatch, capsys) -> None:
    for name in (USERNAME_ENV, PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    argv = [
        "train.py",
        "-m",
        f"tracking.uri='http://alice:{PLANTED}@127.0.0.1:5000'",
        f"tracking.ui_url=http://alice:{PLANTED}@h",
        "model=b0",
    ]
    credentials_out_of_command_line(argv)
    assert argv == ["train.py", "-m", "tracking.uri='http://127.0.0.1:5000'", "tracking.ui_url=http://h", "model=b0"]
    assert (os.environ[USERNAME_ENV], os.environ[PASSWORD_ENV]) == ("alice", PLANTED)
    assert PLANTED not in capsys.readouterr().err


def test_log_records_are_redacted_by_the_filter() -> None:
    record = logging.LogRecord(
        "hydra", logging.INFO, __file__, 1, "#%d : %s", (0, f"tracking.uri=http://a:{PLANTED}@h"), None
    )
    assert RedactingFilter().filter(record) and record.getMessage() == "#0 : tracking.uri=http://***@h"


class _AuthHealth(http.server.BaseHTTPRequestHandler):
    """A tracking server's /health that wants HTTP basic credentials (as behind a team's proxy)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        expected = "Basic " + __import__("base64").b64encode(f"alice:{PLANTED}".encode()).decode()
        self.send_response(200 if self.headers.get("Authorization") == expected else 500)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def auth_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthHealth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_the_health_check_sends_credentials_given_in_the_url_and_shows_none(auth_server: int, monkeypatch) -> None:
    for name in (USERNAME_ENV, PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    tracker = Tracker(f"http://alice:{PLANTED}@127.0.0.1:{auth_server}", "btxrd")
    assert tracker.uri == f"http://127.0.0.1:{auth_server}" and PLANTED not in tracker.shown_uri
    assert tracker.answers()  # before: urllib took 'alice:...@127.0.0.1' for a host name, and waited 900 s
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    assert not tracker.answers()


def test_a_run_stores_no_secret_of_its_config(synth_root: Path, tmp_path: Path) -> None:
    """A secret that reaches the config other than on the command line (a YAML file, an interpolated
    variable): params, tags, config.json and the checkpoint hold *** instead, and the run says so."""
    cfg = compose_config(
        tiny(synth_root, tmp_path, "model.image_size=32", f"tracking.ui_url=http://alice:{PLANTED}@127.0.0.1:5000")
    )
    train_job(cfg)
    [run] = runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.ui_url"] == "http://***@127.0.0.1:5000"
    assert "tracking.ui_url" in run.data.tags["redacted"]
    assert PLANTED not in str(run.data.params) + str(run.data.tags)
    for path in [*tmp_path.rglob("*.json"), *tmp_path.rglob("*.pt")]:
        assert PLANTED.encode() not in path.read_bytes(), path
    [best] = (tmp_path / "mlruns").rglob("best.pt")
    assert torch.load(best, weights_only=True)["config"]["tracking"]["ui_url"] == "http://***@127.0.0.1:5000"


@pytest.mark.integration  # a whole sweep with logged models, searched file by file: make test-integration
@pytest.mark.slow
def test_a_sweep_with_a_password_in_its_settings_leaves_it_nowhere(synth_root: Path, tmp_path: Path) -> None:
    """A password in a URL setting and one in a setting named so: the store, the artifacts (checkpoints,
    logged models), the sweep folder (Hydra's files, logs, the report) and the terminal hold neither."""
    args = [
        "-m",
        *tiny(synth_root, tmp_path, "model.image_size=32", "tracking.log_model=true"),
        "annotations=on,off",
        "sweep.register_best=true",  # the model card, in the store
        "tracking.system_metrics_interval_s=1",
        f"tracking.ui_url=http://alice:{PLANTED}@127.0.0.1:5000",
        f"+db.password={PLANTED}",
    ]
    result = run_script("train.py", args, cwd=tmp_path)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said[-3000:]
    assert "note: tracking.ui_url: the credentials in the link are dropped" in said
    assert PLANTED not in said
    leaked = [str(p) for p in tmp_path.rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()]
    assert leaked == []  # mlflow.db, mlruns/ (best.pt, logged models), multirun/ (.hydra, multirun.yaml, logs)
    children = [r for r in runs(tmp_path) if "mlflow.parentRunId" in r.data.tags]
    assert [c.data.params["db.password"] for c in children] == ["***", "***"]
    assert all(c.data.tags["redacted"].startswith("secrets hidden (***) in db.password") for c in children)
    assert len(list(tmp_path.rglob("MLmodel"))) == 2
    assert "as models:/btxrd-classifier/1" in said and len(list(tmp_path.rglob("requirements.txt"))) >= 4


@pytest.mark.integration  # four entry-point processes waiting out their budget: make test-integration
@pytest.mark.slow
@pytest.mark.parametrize(
    "uri", ["postgresql://alice:{pw}@127.0.0.1:{port}/mlflow", "http://alice:{pw}@127.0.0.1:{port}"]
)
def test_a_store_that_cannot_be_reached_fails_in_seconds_in_one_line(
    synth_root: Path, tmp_path: Path, uri: str
) -> None:
    """Before: PostgreSQL ~110 s of retries then a 200-line traceback echoing the password; now one line
    naming the store, its secret hidden, within tracking.connect_timeout_s; single run and sweep alike."""
    uri = uri.format(pw=PLANTED, port=free_port())
    for multirun in ([], ["-m"]):
        started = time.monotonic()
        result = run_script(
            "train.py",
            [*multirun, *tiny(synth_root, tmp_path), f"tracking.uri={uri}", "tracking.connect_timeout_s=2"],
            cwd=tmp_path,
        )
        seconds = time.monotonic() - started
        errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
        assert result.returncode == 2, result.stderr[-2000:]
        assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "tracking.uri=" in errors[0] and "tracking.connect_timeout_s" in errors[0]
        assert PLANTED not in result.stdout + result.stderr
        assert seconds < 40, seconds  # process start and imports included (~10 s here), not 110 s


def test_a_sqlite_store_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    tracker = Tracker(f"sqlite:///{tmp_path / 'a_file' / 'sub' / 'mlflow.db'}", "btxrd")
    with pytest.raises(ConfigError, match=r"cannot create the store's folder .*a_file/sub \(Not a directory\)"):
        tracker.start_run("x")


def test_a_database_password_travels_in_pgpassword_only(monkeypatch) -> None:
    monkeypatch.delenv(PGPASSWORD_ENV, raising=False)
    tracker = Tracker(f"postgresql://bob:{PLANTED}@127.0.0.1:{free_port()}/db", "btxrd", connect_timeout_s=1)
    assert PLANTED not in tracker.uri + tracker.shown_uri and os.environ[PGPASSWORD_ENV] == PLANTED
    with pytest.raises(ConfigError) as failed:
        tracker.start_run("x")
    assert PLANTED not in str(failed.value) and "cannot connect to the database within 1 s" in str(failed.value)


def test_hydra_files_stay_yaml_with_their_secrets_hidden(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from btxrd.sweep.secrets import redact_yaml_file

    path = tmp_path / "config.yaml"
    path.write_text(
        f"db:\n  password: '123456'\n  user: bob\ntracking:\n  uri: http://al:{PLANTED}@h\n"
        "callbacks:\n  hidden_secrets:\n    _target_: x.Y\nmax_tokens: 5\n"
    )
    assert redact_yaml_file(path)
    assert OmegaConf.to_container(OmegaConf.load(path)) == {
        "db": {"password": "***", "user": "bob"},
        "tracking": {"uri": "http://***@h"},
        "callbacks": {"hidden_secrets": {"_target_": "x.Y"}},
        "max_tokens": 5,
    }
    assert not redact_yaml_file(path)  # nothing left to hide: not rewritten


def test_redaction_stays_linear_on_hostile_text() -> None:
    """A sheet can put any text into an error message: 'a.a.a...' of 40,000 characters took 80 s before."""
    started = time.monotonic()
    for text in ("a." * 100_000, "http://" + "a" * 200_000, "?" + "a." * 100_000 + "=x", "x" * 200_000 + "password="):
        redact_text(text)
    assert time.monotonic() - started < 30  # a hang guard, not a speed claim: milliseconds here


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://bob:pa/ss@host/x", "http://***@host/x"),
        ("http://bob:p@ss@host", "http://***@host"),
        ("http://bob:it's@host", "http://***@host"),
    ],
)
def test_passwords_with_reserved_characters_are_hidden_whole(text: str, shown: str) -> None:
    assert redact_text(text) == shown


def test_a_url_whose_user_info_cannot_be_read_is_refused_without_showing_it() -> None:
    argv = ["train.py", f"tracking.uri=http://bob:{PLANTED}/x@h"]  # an unencoded '/' in the password
    with pytest.raises(ConfigError, match=r"^tracking.uri: the user-info of this URL cannot be read") as refused:
        credentials_out_of_command_line(argv)
    assert PLANTED not in str(refused.value)


def test_what_a_server_that_does_not_answer_is_called_holds_no_token() -> None:
    from mlflow.exceptions import MlflowException

    from btxrd.tracking.reach import unreachable

    said = unreachable(
        MlflowException(
            f"API request to https://{PLANTED}@mlflow.example/api/2.0/mlflow/runs/get "
            "failed with exception [Errno 111] Connection refused"
        )
    )
    assert str(said) == "the tracking server https://mlflow.example does not answer (Connection refused)"


class _Redirect(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(302)
        self.send_header("Location", self.target)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_the_health_check_follows_no_redirect_with_the_credentials(monkeypatch) -> None:
    received: list[str] = []

    class Elsewhere(_Redirect):
        def do_GET(self) -> None:  # noqa: N802
            received.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.end_headers()

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) for handler in (_Redirect, Elsewhere)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    _Redirect.target = f"http://localhost:{servers[1].server_address[1]}/health"
    for name in (USERNAME_ENV, PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    try:
        assert Tracker(f"http://alice:{PLANTED}@127.0.0.1:{servers[0].server_address[1]}", "btxrd").answers()
        assert received == []  # the redirect answered (a 3xx is an answer) and was not followed
    finally:
        for server in servers:
            server.shutdown()
