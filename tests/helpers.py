"""Helpers shared by tests: compose the real Hydra config, run the real entry points, read MLflow."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from btxrd.config import CONFIG_DIR, run_settings
from btxrd.settings import RunConfig

from .conftest import PROJECT_ROOT


def compose_config(
    overrides: list[str] | None = None, config_name: str = "config", with_hydra: bool = False
) -> DictConfig:
    """The composed config; ``with_hydra`` keeps the ``hydra`` node (launcher, sweeper, job)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides or [], return_hydra_config=with_hydra)


def settings(overrides: list[str] | None = None) -> RunConfig:
    """The typed settings of a composed config."""
    return run_settings(compose_config(overrides))


def tiny(data_root: Path, work: Path, *overrides: str) -> list[str]:
    """``debug=tiny`` (conf/debug/tiny.yaml) on ``data_root``, every output under ``work``."""
    return ["debug=tiny", f"data.root={data_root}", f"paths.root={work}", *overrides]


def runs(work: Path, experiment: str = "btxrd", uri: str | None = None) -> list:
    """Every run of the experiment in ``work``'s SQLite store (or at ``uri``), newest first."""
    client = MlflowClient(uri or f"sqlite:///{work / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def sweep_runs(work: Path, uri: str | None = None) -> tuple[list, list]:
    """(parent runs of sweeps, their children) in ``work``'s store (or at ``uri``)."""
    everything = runs(work, uri=uri)
    parents = [r for r in everything if r.data.tags.get("sweep") == "parent"]
    children = [r for r in everything if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def sweeps_in(work: Path, uri: str | None = None) -> list[tuple[Any, list]]:
    """(parent, its children) of each sweep whose folder is under ``work``, oldest first; the store
    is ``work``'s or the one at ``uri`` (a server that other tests write to as well)."""
    parents, children = sweep_runs(work, uri=uri)
    mine = sorted(
        (p for p in parents if p.data.tags["sweep_dir"].startswith(str(work))), key=lambda p: p.info.start_time
    )
    return [(p, [c for c in children if c.data.tags["mlflow.parentRunId"] == p.info.run_id]) for p in mine]


@contextlib.contextmanager
def mlflow_ui(store_uri: str) -> Iterator[Any]:
    """A test client of MLflow's own server app (the handlers `mlflow ui` serves the UI's pages with)
    over ``store_uri``; in this process, without the ~15 s a server process takes to start."""
    from mlflow.server import BACKEND_STORE_URI_ENV_VAR, app, handlers

    saved = os.environ.get(BACKEND_STORE_URI_ENV_VAR)
    os.environ[BACKEND_STORE_URI_ENV_VAR] = store_uri
    handlers._tracking_store = None  # the app keeps the store it opened first
    try:
        yield app.test_client()
    finally:
        handlers._tracking_store = None
        if saved is None:
            os.environ.pop(BACKEND_STORE_URI_ENV_VAR, None)
        else:
            os.environ[BACKEND_STORE_URI_ENV_VAR] = saved


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_a_user_starts_it() -> dict[str, str]:
    # No MLflow/btxrd variables, no allocator tunables (the scripts set those).
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BTXRD_"))}


def run_script(
    script: str, args: list[str], cwd: Path, timeout: int = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``script`` run as a user would, with ``env`` added to the environment (e.g. SLURM_CONF)."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**_as_a_user_starts_it(), **(env or {})},
    )


def start_script(
    script: str, args: list[str], cwd: Path, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen:
    """``run_script`` without waiting (to signal or kill it)."""
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / script), *args],
        cwd=cwd,
        env={**_as_a_user_starts_it(), **(env or {})},
        **popen,
    )


def run_python_at_once(code: str, n: int = 2, timeout: int = 120) -> list[str]:
    """Start ``n`` processes running ``code`` (with INFO logging to stdout) together; their outputs."""
    setup = "import sys, logging; logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", setup + code],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=PROJECT_ROOT,
        )
        for _ in range(n)
    ]
    return [p.communicate(timeout=timeout)[0] for p in procs]


def write_dicom(
    path: Path, pixels: Any, photometric: str = "MONOCHROME2", signed: bool = False, **attributes: Any
) -> Path:
    """A secondary-capture DICOM radiograph of 12-bit ``pixels`` (in 16), as a hospital export writes one;
    ``attributes`` add e.g. RescaleSlope, WindowCenter, VOILUTSequence."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "CR", photometric, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, int(signed)
    for name, value in attributes.items():
        setattr(ds, name, value)
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
