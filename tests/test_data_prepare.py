"""A local sweep probes and caches its dataset in a process of its own from its start (btxrd.data.prepare),
so its jobs find the work done when they reach their data step (the multirun itself: test_sweep)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from btxrd.data.cache import cache_for
from btxrd.data.reader import load_dataset
from btxrd.sweep.launch import prepare_data

from .helpers import compose_config, settings, tiny


def test_the_sweep_prepares_its_dataset_and_the_jobs_find_it_ready(
    synth_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = tiny(synth_root, tmp_path)
    config = compose_config(overrides, with_hydra=True)
    process = prepare_data(config)
    assert process is not None and process.wait(timeout=120) == 0
    log = (Path(config.hydra.sweep.dir) / "prepare_data.log").read_text()
    assert "probing 160 images" in log and "(160 images, 512 px, decoding)" in log and "ready: 160 images" in log
    # A job's data step (jobs/parts.py) afterwards: nothing left to probe or decode.
    run = settings(overrides)
    with caplog.at_level(logging.INFO):
        table = load_dataset(run.data.root, read_annotations=True, memo_dir=run.data.cache_dir)
        cache = cache_for(table, run.model.image_size, run.data)
    assert not [r.message for r in caplog.records if "probing" in r.message or "building image cache" in r.message]
    assert len(cache.image_ids) == len(table) == 160


@pytest.mark.parametrize(
    "override", ["sweep.prepare_data=false", "hydra/launcher=slurm", "data.root=/no/such/data", "data.canvas_scale=3"]
)
def test_no_preparing_when_switched_off_on_slurm_or_with_data_no_job_can_read(
    override: str, synth_root: Path, tmp_path: Path
) -> None:
    config = compose_config([*tiny(synth_root, tmp_path), override], with_hydra=True)
    assert prepare_data(config) is None
    assert not (Path(config.hydra.sweep.dir) / "prepare_data.log").exists()


def test_preparing_imports_no_torch() -> None:
    """Its point is to run beside the jobs' imports of torch: it must not pay them itself."""
    code = "import sys, btxrd.data.prepare; print(sorted({'torch', 'timm', 'mlflow'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_preparation_that_cannot_start_leaves_the_work_to_the_jobs(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_process(*args: object) -> None:
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr("btxrd.sweep.launch.start_preparing", no_process)
    assert prepare_data(compose_config(tiny(synth_root, tmp_path), with_hydra=True)) is None
