"""MLflow tracking through explicit run ids (``MlflowClient``), never the global active run.

Joblib's loky workers are reused between jobs, so MLflow's process-global
"active run" would leak from one job into the next; every call here names its
run id instead. SQLite allows one writer at a time: calls are retried when the
database is locked by another job of the sweep. A tracking server that does not answer (after
MLflow's own retries) raises ``TrackingUnreachable``, one line naming the server: a job's writes
are then kept and sent later (``lifecycle.RunRecorder``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from filelock import FileLock
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from btxrd.errors import ConfigError
from btxrd.redaction import move_credentials, redact_text, without_userinfo
from btxrd.tracking.reach import (
    StoreFull,
    TrackingUnreachable,
    auth_headers,
    database_problem,
    first_line,
    is_database_server,
    is_server,
    retry,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in logs and test output
# MLflow announces database creation and migrations at INFO on stderr; a user error should stay one line.
logging.getLogger("alembic").setLevel(logging.WARNING)
# Its database layer also logs every failed statement at ERROR with a page of traceback (a full disk: one
# per write). Each such error reaches the caller here as an exception, which is said in one line.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

# Our own variable: MLflow reads MLFLOW_RUN_ID from the environment as the run to resume, which would
# override the parent_run_id a job opens its run under.
PARENT_RUN_ENV = "BTXRD_PARENT_RUN_ID"
# MLflow 3's UI opens an experiment in its GenAI mode unless the experiment says it trains models.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
TRACKING_URI_ENV = "BTXRD_TRACKING_URI"
# The duplicate-key error of MLflow's datasets table as each store words it (lower case): SQLite,
# PostgreSQL (a server's usual backend; seen in CI), MySQL
DATASET_KEY_RACE = ("unique constraint failed: datasets", 'unique constraint "dataset_pk"', "for key 'datasets.")
_PARAM_LIMIT = 6000
# While a server does not answer, it is asked again (GET /health) at most this often.
PROBE_INTERVAL_S = 15.0


def default_tracking_uri(project_root: str | Path) -> str:
    """``sqlite:///<project root>/mlflow.db``, absolute (Hydra jobs run in their own folders)."""
    return f"sqlite:///{Path(project_root).resolve() / 'mlflow.db'}"


def tracker_for(tracking: Any, project_root: str | Path) -> Tracker | None:
    """The Tracker a ``tracking`` config section (TrackingConfig, or the composed node) asks for, or
    None when tracking is disabled.

    URI: ``tracking.uri``, else the one the sweep's launcher exported, else the project's SQLite store.
    """
    if not tracking.enabled:
        return None
    uri = tracking.uri or os.environ.get(TRACKING_URI_ENV) or default_tracking_uri(project_root)
    if is_server(uri):  # MLflow's own defaults (7 retries, 120 s) block a call for minutes
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(tracking.http_retries)
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(tracking.http_timeout_s)
    return Tracker(
        uri, tracking.experiment, tracking.artifact_root, tracking.outage_patience_s, tracking.connect_timeout_s
    )


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {'a.b.c': 'value'}; lists become their string form."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:_PARAM_LIMIT]
    return out


def _store_lock(uri: str, shown: str) -> FileLock | contextlib.nullcontext:
    """A lock beside a SQLite store's file (``<db>.lock``); nothing to lock for a server. The store's
    folder is created if missing (as MLflow does); one that cannot be is a ConfigError naming it.

    MLflow's SQL store is imported here, before the lock is taken, not under it: its modules take about
    1 s to import, and a sweep's other jobs, opening the store at the same moment, would wait for that too.
    """
    if uri.startswith("sqlite:///"):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

        path = Path(uri.removeprefix("sqlite:///"))  # sqlite:////abs/db -> /abs/db; sqlite:///rel/db -> rel/db
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"tracking.uri={shown}: cannot create the store's folder {path.parent} "
                f"({exc.strerror or exc}); check the path"
            ) from None
        if path.is_dir():
            raise ConfigError(f"tracking.uri={shown}: {path} is a folder, not a database file")
        return FileLock(f"{path}.lock")
    return contextlib.nullcontext()


class Tracker:
    """One tracking store and experiment; runs are addressed by id.

    ``uri`` is what MLflow connects with: credentials that MLflow or the database driver can read from
    the environment are moved there (``btxrd.redaction.move_credentials``); ``shown_uri`` is what any
    message shows, every secret hidden."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        artifact_root: str | Path | None = None,
        outage_patience_s: float = 0.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.uri, credentials = move_credentials(uri)
        os.environ.update(credentials)
        self.shown_uri = redact_text(self.uri)
        self.experiment_name = experiment
        self.artifact_root = Path(artifact_root).resolve() if artifact_root else None
        # How long a job, at its end, and a sweep, at its end, wait for a server that does not answer
        self.outage_patience_s = outage_patience_s
        # How long opening the store waits for a server (MLflow's or a database) to answer at all
        self.connect_timeout_s = connect_timeout_s
        self._experiment_id: str | None = None
        self._client: MlflowClient | None = None

    def _retry(self, call: Callable[[], T], also: tuple[str, ...] = ()) -> T:
        return retry(call, also, self.shown_uri)

    @property
    def client(self) -> MlflowClient:
        """The MLflow client; its first use creates (or migrates) a SQLite store under a file lock beside
        it: processes opening a new store at once (two sweeps started together) raced creating its
        tables. (A tracking server serialises this itself.) A store that cannot be opened is one
        ConfigError naming it, within ``connect_timeout_s`` for a server."""
        if self._client is None:
            with _store_lock(self.uri, self.shown_uri):
                self._wait_for_server()
                try:
                    client = MlflowClient(tracking_uri=self.uri)  # opens the store: creates or migrates its tables
                    self._retry(lambda: client.search_experiments(max_results=1))
                except TrackingUnreachable as exc:
                    raise ConfigError(f"tracking.uri={self.shown_uri}: {exc}") from None
                except Exception as exc:  # SQLAlchemy, OSError, MlflowException: the store cannot be opened
                    raise ConfigError(
                        f"tracking.uri={self.shown_uri}: cannot open the tracking store ({first_line(exc)})"
                    ) from None
            self._client = client
        return self._client

    def _wait_for_server(self) -> None:
        """A tracking server or database server answers within ``connect_timeout_s``, or ConfigError."""
        seconds = self.connect_timeout_s
        if is_server(self.uri) and not self.wait_until_answering(seconds, interval=1.0):
            raise ConfigError(
                f"tracking.uri={self.shown_uri}: the tracking server does not answer (waited "
                f"{seconds:g} s, tracking.connect_timeout_s); check that it runs and its address"
            )
        if is_database_server(self.uri) and (problem := database_problem(self.uri, seconds)):
            raise ConfigError(
                f"tracking.uri={self.shown_uri}: cannot connect to the database within {seconds:g} "
                f"s, tracking.connect_timeout_s ({problem}); check that it runs, its address and "
                "the credentials (PGPASSWORD, or the URL's)"
            )

    def answers(self) -> bool:
        """Whether the tracking server answers at all (a local store always does); quick: one
        request, no retries. Any HTTP answer below 500 counts (a proxy may refuse /health, or redirect
        it: a redirect is not followed, so the credentials never go to another host). The credentials
        and TLS settings are MLflow's own (``MLFLOW_TRACKING_*``): a server with a private certificate
        authority or self-signed certificate answers here as it does to MLflow."""
        if not is_server(self.uri):
            return True
        import requests
        from mlflow.environment_variables import (
            MLFLOW_TRACKING_CLIENT_CERT_PATH,
            MLFLOW_TRACKING_INSECURE_TLS,
            MLFLOW_TRACKING_SERVER_CERT_PATH,
        )

        verify = MLFLOW_TRACKING_SERVER_CERT_PATH.get() or not MLFLOW_TRACKING_INSECURE_TLS.get()
        try:
            answer = requests.get(
                f"{without_userinfo(self.uri).rstrip('/')}/health",
                headers=auth_headers(self.uri),
                timeout=5,
                allow_redirects=False,
                verify=verify,
                cert=MLFLOW_TRACKING_CLIENT_CERT_PATH.get(),
            )
        except (requests.RequestException, ValueError):  # refused, timed out, no route, a URL it cannot parse
            return False
        return answer.status_code < 500

    def wait_until_answering(self, seconds: float, interval: float = PROBE_INTERVAL_S) -> bool:
        """Ask the server every ``interval`` seconds until it answers, for at most ``seconds``."""
        deadline = time.monotonic() + seconds
        while not self.answers():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(interval, left))
        return True

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._ensure_experiment()
        return self._experiment_id

    def _ensure_experiment(self) -> str:
        try:
            found = self._retry(lambda: self.client.get_experiment_by_name(self.experiment_name))
        except (MlflowException, TrackingUnreachable) as exc:
            raise ConfigError(f"tracking.uri={self.shown_uri}: cannot reach the tracking store ({exc})") from None
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise ConfigError(
                    f"tracking.experiment={self.experiment_name!r} is deleted in {self.shown_uri}; "
                    "restore it or pick another"
                )
            if found.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:  # made by an older version
                kind = (EXPERIMENT_KIND_TAG, MODEL_TRAINING)
                self._retry(lambda: self.client.set_experiment_tag(found.experiment_id, *kind))
            return found.experiment_id
        location = None
        if self.artifact_root is not None and self.uri.startswith("sqlite:"):
            location = (self.artifact_root / self.experiment_name).as_uri()
        kind = {EXPERIMENT_KIND_TAG: MODEL_TRAINING}
        try:
            return self._retry(lambda: self.client.create_experiment(self.experiment_name, location, tags=kind))
        except MlflowException:  # created meanwhile by another process
            return self._retry(lambda: self.client.get_experiment_by_name(self.experiment_name)).experiment_id

    def runs_url(self, ui_url: str, sweep_dir: str | None = None) -> str:
        """The MLflow UI's runs table of this experiment in its model-training view (not the GenAI
        overview), showing one sweep's runs when ``sweep_dir`` is given. ``ui_url``: where ``mlflow ui``
        serves a local store; a tracking server serves its own UI."""
        base = without_userinfo(ui_base(self.uri, ui_url))
        query = "workflowType=machine_learning"
        if sweep_dir:
            query += "&searchFilter=" + quote(f"tags.sweep_dir = '{sweep_dir}'", safe="")
        return f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs?{query}"

    def log_dataset(
        self,
        run_id: str,
        name: str,
        digest: str,
        source: str,
        context: str,
        profile: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Record a dataset the run used (MLflow's dataset tracking: the UI's Dataset column, filters)."""
        dataset = Dataset(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": source}),
            profile=json.dumps(dict(profile)),
        )
        input_tags = [InputTag("mlflow.data.context", context), *(InputTag(k, v) for k, v in (tags or {}).items())]
        # Jobs of a sweep log the same dataset at once: MLflow looks it up, then inserts it, and the
        # second insert fails on its unique key; tried again, it finds the first one's row.
        self._retry(
            lambda: self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=input_tags)]),
            also=DATASET_KEY_RACE,
        )

    def start_run(self, name: str, tags: Mapping[str, str] | None = None, parent_id: str | None = None) -> str:
        all_tags = dict(tags or {})
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self._retry(lambda: self.client.create_run(self.experiment_id, run_name=name, tags=all_tags))
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k[:250], str(v)[:_PARAM_LIMIT]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            batch = items[i : i + 100]
            self._retry(lambda batch=batch: self.client.log_batch(run_id, params=batch))

    def log_metrics(
        self, run_id: str, metrics: Mapping[str, float], step: int = 0, timestamp_ms: int | None = None
    ) -> None:
        """``timestamp_ms``: when the values were measured (a write sent late keeps its time); default now."""
        now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            batch = items[i : i + 500]
            self._retry(lambda batch=batch: self.client.log_batch(run_id, metrics=batch))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._retry(lambda key=key, value=value: self.client.set_tag(run_id, key, str(value)[:5000]))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """A file into the run's artifacts; one that a full disk cut short is removed (it is sent again later)."""
        try:
            self._retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path))
        except StoreFull:
            artifacts = self._retry(lambda: self.client.get_run(run_id)).info.artifact_uri
            if artifacts.startswith("file:") or "://" not in artifacts:
                local = Path(unquote(urlsplit(artifacts).path), artifact_path or "", Path(path).name)
                local.unlink(missing_ok=True)
            raise

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._retry(lambda: self.client.set_terminated(run_id, status=status))

    def run_status(self, run_id: str) -> str:
        return self._retry(lambda: self.client.get_run(run_id)).info.status

    def children(self, parent_id: str) -> list:
        query = f"tags.mlflow.parentRunId = '{parent_id}'"
        return self._retry(lambda: self.client.search_runs([self.experiment_id], query, max_results=10_000))

    def get_run(self, run_id: str):
        return self._retry(lambda: self.client.get_run(run_id))

    def find_run(self, run_id: str):
        """The run, or None if this store has no run with that id (a server that does not answer is an error)."""
        try:
            return self._retry(lambda: self.client.get_run(run_id))
        except MlflowException:
            return None

    def finished_run_with_tag(self, key: str, value: str):
        """The newest FINISHED run of the experiment whose tag ``key`` equals ``value``, or None."""
        query = f"tags.{key} = '{value}' and attributes.status = 'FINISHED'"
        order = ["attributes.start_time DESC"]
        runs = self._retry(lambda: self.client.search_runs([self.experiment_id], query, order_by=order, max_results=1))
        return runs[0] if runs else None

    def reopen(self, run_id: str, tags: Mapping[str, Any] | None = None) -> None:
        """Mark an interrupted run RUNNING again (a resumed job continues in it).

        Its ``error`` tag (why it stopped) moves to ``interruption``: a run that then finishes
        must not show an error, but the interruption stays on record.
        """
        earlier_error = self._retry(lambda: self.client.get_run(run_id)).data.tags.get("error")
        self._retry(lambda: self.client.update_run(run_id, status="RUNNING"))
        if earlier_error is not None:
            self._retry(lambda: self.client.delete_tag(run_id, "error"))
        self.set_tags(run_id, {**({"interruption": earlier_error} if earlier_error else {}), **(tags or {})})

    def artifact_paths(self, run_id: str, folder: str | None = None) -> list[str]:
        return [a.path for a in self._retry(lambda: self.client.list_artifacts(run_id, folder))]

    def download_artifact(self, run_id: str, path: str, dest: str | Path) -> Path:
        return Path(self._retry(lambda: self.client.download_artifacts(run_id, path, str(dest))))


def ui_base(tracking_uri: str, ui_url: str) -> str:
    """Where the MLflow UI of a store is: a tracking server serves its own; ``mlflow ui`` a local one."""
    return tracking_uri if is_server(tracking_uri) else ui_url


def active_statuses() -> tuple[str, ...]:
    return (RunStatus.to_string(RunStatus.RUNNING), RunStatus.to_string(RunStatus.SCHEDULED))


def parent_from_env() -> str | None:
    """The sweep's parent run id, which the sweep callback has Hydra set in each job's environment."""
    return os.environ.get(PARENT_RUN_ENV) or None
