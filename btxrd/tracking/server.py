"""A shared MLflow tracking server: PostgreSQL backend store, local artifact root, loopback only.

    python -m btxrd.tracking.server                      # `make mlflow-server`
    python -m btxrd.tracking.server --backend-store-uri postgresql://user@dbhost/mlflow

Without ``--backend-store-uri`` it runs a PostgreSQL cluster of its own under ``--dir``
(created on first use, reused after) and stops it again on exit. Runs until Ctrl-C or
SIGTERM. The server listens on 127.0.0.1 only: MLflow has no authentication of its own,
so colleagues reach it through an SSH tunnel (docs/scaling-out.md).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from btxrd.errors import ConfigError
from btxrd.redaction import redact_text
from btxrd.runtime.daemons import log_tail, serve_until_stopped, start_daemon, stop_daemon, wait_while

HOST = "127.0.0.1"
DATABASE = "mlflow"
DB_USER = "btxrd"


def _postgres_bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise ConfigError(f"PostgreSQL's {name} was not found: install it (apt-get install postgresql)")
    return found


class PostgresCluster:
    """A PostgreSQL cluster in one folder, listening on 127.0.0.1:port only (no Unix socket).

    PostgreSQL refuses to run as root; as root, its commands run as the ``postgres`` system user.
    """

    def __init__(self, folder: str | Path, port: int) -> None:
        self.folder = Path(folder).resolve()
        self.data = self.folder / "pgdata"
        self.log = self.folder / "postgres.log"
        self.port = port
        self.as_postgres = os.geteuid() == 0

    @property
    def uri(self) -> str:
        return f"postgresql://{DB_USER}@{HOST}:{self.port}/{DATABASE}"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            raise ConfigError(f"{Path(command[0]).name} failed for {self.data}: {detail[0]} (log: {self.log})")

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.as_postgres:  # the postgres user must reach and own its folder
            for parent in self.folder.parents:
                if parent.stat().st_mode & 0o001 == 0:
                    raise ConfigError(f"{self.folder}: user postgres cannot enter {parent}; pick a folder it can reach")
            shutil.chown(self.folder, "postgres", "postgres")
        if not (self.data / "PG_VERSION").is_file():
            self._run(
                _postgres_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                DB_USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-instructions",
            )
        options = f"-h {HOST} -p {self.port} -c unix_socket_directories=''"
        self._run(
            _postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )
        try:
            self._run(_postgres_bin("createdb"), "-h", HOST, "-p", str(self.port), "-U", DB_USER, DATABASE)
        except ConfigError as exc:
            if "already exists" not in str(exc):
                raise

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")


class MlflowServer:
    """``mlflow server`` on 127.0.0.1:port serving artifacts from a local folder."""

    def __init__(self, backend_store_uri: str, artifacts: str | Path, port: int, log: str | Path) -> None:
        self.backend_store_uri = backend_store_uri
        self.artifacts = Path(artifacts).resolve()
        self.port = port
        self.log = Path(log)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout_s: float = 180.0) -> None:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "2",
        ]
        self.process = start_daemon(command, self.log, dict(os.environ))
        deadline = time.monotonic() + timeout_s  # the first start creates the schema: slow
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(f"mlflow server exited ({self.process.returncode}): {log_tail(self.log, 5)}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise ConfigError(f"mlflow server did not answer on {self.uri} within {timeout_s:.0f} s (log: {self.log})")

    def stop(self) -> None:
        stop_daemon(self.process)


@contextlib.contextmanager
def tracking_server(
    folder: str | Path, port: int = 5000, pg_port: int = 5433, backend_store_uri: str | None = None
) -> Iterator[MlflowServer]:
    """PostgreSQL (unless ``backend_store_uri`` is given) and the MLflow server; both stopped on exit."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    postgres = None if backend_store_uri else PostgresCluster(folder / "postgres", pg_port)
    try:
        if postgres is not None:
            postgres.start()
        store = backend_store_uri or postgres.uri
        server = MlflowServer(store, folder / "artifacts", port, folder / "mlflow-server.log")
        try:
            server.start()
            yield server
        finally:
            server.stop()
    finally:
        if postgres is not None:
            postgres.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m btxrd.tracking.server", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=".mlflow-server", help="PostgreSQL data, artifacts and logs")
    parser.add_argument("--port", type=int, default=5000, help="the MLflow server's port on 127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5433, help="the port of the server's own PostgreSQL")
    parser.add_argument("--backend-store-uri", help="an existing PostgreSQL database instead of our own")
    args = parser.parse_args(argv)

    def serve() -> int:
        with tracking_server(args.dir, args.port, args.pg_port, args.backend_store_uri) as server:
            backend = redact_text(server.backend_store_uri)
            print(f"MLflow server at {server.uri} (backend {backend}, artifacts {server.artifacts})")
            print(f"point sweeps at it: python train.py -m tracking.uri={server.uri} ...   (Ctrl-C stops it)")
            sys.stdout.flush()
            wait_while(lambda: server.process is not None and server.process.poll() is None)
            print(f"mlflow server exited: {log_tail(server.log, 5)}", file=sys.stderr)
            return 1

    return serve_until_stopped(serve)


if __name__ == "__main__":
    sys.exit(main())
