"""Shared fixtures: a small generated BTXRD-format dataset, made once per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from btxrd.data.synth import generate

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Files of the real release (its metadata sheet, image sizes, annotation files) to test the reader on, kept
# outside the project: BTXRD_REFERENCE, else a shared folder beside the project.
REFERENCE = Path(os.environ.get("BTXRD_REFERENCE") or PROJECT_ROOT.parent / "shared" / "btxrd-reference")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 160-image synthetic release (read-only: copy it before changing anything)."""
    root = tmp_path_factory.mktemp("synth") / "BTXRD"
    generate(root, n=160, seed=7, size=160)
    return root


@pytest.fixture
def synth_copy(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic release that a test may break."""
    dest = tmp_path / "BTXRD"
    shutil.copytree(synth_root, dest)
    return dest


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Library calls outside Hydra write to ./outputs: keep every test out of the project folder."""
    monkeypatch.chdir(tmp_path)


# What a run writes into its project folder (a user's own runs may be there already)
RUN_OUTPUTS = ("outputs", "checkpoints", "mlruns", "multirun", "mlflow.db")


def _run_outputs_in_project() -> dict[str, float]:
    """Each run-time output of the project folder and its entries, with their modification times."""
    found = {}
    for name in RUN_OUTPUTS:
        path = PROJECT_ROOT / name
        for entry in [path, *(path.iterdir() if path.is_dir() else [])]:
            if entry.exists():
                found[str(entry.relative_to(PROJECT_ROOT))] = entry.stat().st_mtime
    return found


@pytest.fixture(scope="session", autouse=True)
def _project_folder_untouched() -> Iterator[None]:
    """No test writes run outputs into the project folder (a module-scoped fixture runs before the
    per-test chdir above, in the project folder: it must change folder itself)."""
    before = _run_outputs_in_project()
    yield
    after = _run_outputs_in_project()
    written = sorted(name for name, mtime in after.items() if before.get(name) != mtime)
    assert not written, f"tests wrote into the project folder: {', '.join(written)}"


@pytest.fixture(scope="session")
def _migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with its tables made: creating them (MLflow's migrations) takes
    ~1.8 s, copying this file a few ms."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def _existing_store(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Each test's project folder starts with an empty, ready store (as every sweep but a project's
    first finds it); tests marked ``fresh_store`` start without one (the store is created while
    they run, as in a new project)."""
    if request.node.get_closest_marker("fresh_store") is None:
        shutil.copyfile(request.getfixturevalue("_migrated_store"), tmp_path / "mlflow.db")


@pytest.fixture(scope="session")
def server() -> Iterator:
    """A shared MLflow tracking server on PostgreSQL, as a team would run it (integration tests)."""
    from btxrd.tracking.server import tracking_server

    from .helpers import free_port

    # Not pytest's tmp_path: its folders are private to root, and PostgreSQL runs as user postgres.
    folder = Path(tempfile.mkdtemp(prefix="btxrd-server-"))
    folder.chmod(0o755)
    with tracking_server(folder, port=free_port(), pg_port=free_port()) as running:
        yield running
    # Stopped by the context manager, whether the tests passed or not.
    assert running.process is not None and running.process.poll() is not None
    assert not (folder / "postgres" / "pgdata" / "postmaster.pid").exists()
    shutil.rmtree(folder, ignore_errors=True)
