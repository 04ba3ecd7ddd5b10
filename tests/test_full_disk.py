"""A full disk: every write names its path and the room left, leaves no partial file, and no run RUNNING
that cannot say why. Each test mounts a small tmpfs (root only; skipped where it cannot)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from btxrd.data.cache import cache_images
from btxrd.engine.checkpoint import save_checkpoint
from btxrd.errors import StorageError
from btxrd.files import write_atomically
from btxrd.jobs.train import train_job
from btxrd.tracking import Tracker, job_run
from btxrd.tracking.stale import CLOSE_NOTE, PID, close_stale

from .helpers import compose_config, runs, tiny

MB = 2**20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB filesystem of its own."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Fill ``folder``'s filesystem to the last byte; the file that does it (delete it to free the room)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _temporary_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_a_checkpoint_that_does_not_fit_names_its_path_and_leaves_no_temporary_file(small_disk: Path) -> None:
    """Before: RuntimeError: [enforce fail at inline_container.cc:672] without the path, and a partial
    .last.pt.tmp that kept the disk full."""
    state = {"model": {"w": torch.zeros(2 * MB // 4)}}  # 2 MB of weights
    save_checkpoint(state, small_disk / "best.pt")
    with pytest.raises(StorageError, match=rf"^cannot write {small_disk}/last.pt: .*MB free on its filesystem"):
        save_checkpoint(state, small_disk / "last.pt")
    assert _temporary_files(small_disk) == [] and not (small_disk / "last.pt").exists()
    (small_disk / "best.pt").unlink()
    save_checkpoint(state, small_disk / "last.pt")  # room again: written whole
    assert torch.load(small_disk / "last.pt", weights_only=True)["model"]["w"].numel() == 2 * MB // 4


def test_any_atomic_write_that_fails_removes_its_temporary_file(small_disk: Path) -> None:
    fill(small_disk)
    with pytest.raises(StorageError, match=r"cannot write .*/memo.json: No space left on device; 0.0 MB free"):
        write_atomically(small_disk / "memo.json", lambda tmp: tmp.write_bytes(b"x" * 100_000))
    assert _temporary_files(small_disk) == []


def test_an_image_cache_that_does_not_fit_is_refused_before_decoding(synth_root: Path, small_disk: Path) -> None:
    """Its room is reserved first: a sparse memory-mapped file on a full disk would die of SIGBUS."""
    from btxrd.data.reader import load_dataset

    table = load_dataset(synth_root, read_annotations=False)
    with pytest.raises(StorageError, match=r"cannot build the image cache .*: it needs 4 MB \(No space left on device"):
        cache_images(table, 160, small_disk, source_size=None)  # 160 x 160 x 160 bytes
    assert _temporary_files(small_disk) == [] and not list(small_disk.glob("*.npy"))


@pytest.mark.integration  # 5-13 s: make test-integration (make test's 5 minutes; CI runs both)
@pytest.mark.slow
def test_a_job_whose_checkpoints_do_not_fit_fails_in_one_line(
    synth_root: Path, tmp_path: Path, small_disk: Path
) -> None:
    cfg = compose_config(
        tiny(synth_root, tmp_path / "work", "model.image_size=32", f"train.checkpoint_dir={small_disk}")
    )
    with pytest.raises(StorageError, match=rf"cannot write {small_disk}/.*\.pt: No space left on device; .*MB free"):
        train_job(cfg)
    [run] = runs(tmp_path / "work")
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["error"]
    assert _temporary_files(small_disk) == []


def _store_on(disk: Path, patience: float) -> Tracker:
    return Tracker(f"sqlite:///{disk / 'mlflow.db'}", "btxrd", disk / "mlruns", outage_patience_s=patience)


def test_a_run_whose_store_fills_up_is_closed_when_room_comes_back(
    small_disk: Path, tmp_path: Path, monkeypatch
) -> None:
    """The store itself is on the full disk: the job keeps its writes and waits (tracking.outage_patience_s);
    room comes back, the run closes FAILED with its error (before: RUNNING, its model PENDING)."""
    monkeypatch.setattr("btxrd.tracking.lifecycle.PROBE_INTERVAL_S", 0.5)  # asked again every 15 s otherwise
    tracker = _store_on(small_disk, patience=60)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="the job's own error"):
        with job_run(tracker, "job", {}, output_dir=out) as recorder:
            (out / CLOSE_NOTE).is_file() or pytest.fail("no close note while the run is open")
            filler = fill(small_disk)
            threading.Timer(2.0, filler.unlink).start()  # someone makes room
            recorder.log_metrics({"kept": 1.0})
            raise RuntimeError("the job's own error")
    run = tracker.get_run(recorder.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: the job's own error"
    assert run.data.metrics["kept"] == 1.0
    assert not (out / CLOSE_NOTE).exists()


def test_a_run_whose_store_stays_full_keeps_its_reason_for_close_stale(small_disk: Path, tmp_path: Path) -> None:
    """The disk stays full past the patience: the run stays RUNNING, but the reason is kept (in room the
    job reserved when it opened the run), and close-stale closes it with that reason, not 'process gone'."""
    tracker = _store_on(small_disk, patience=1)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="out of luck"):
        with job_run(tracker, "job", {}, output_dir=out) as recorder:
            filler = fill(small_disk)
            raise RuntimeError("out of luck")
    assert tracker.run_status(recorder.run_id) == "RUNNING"
    filler.unlink()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    tracker.set_tags(recorder.run_id, {PID: str(gone.pid)})  # as after the job's process ended
    assert [r.info.run_id for r in close_stale(tracker)] == [recorder.run_id]
    run = tracker.get_run(recorder.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"].startswith(
        "the job ended FAILED but could not close its run: RuntimeError: "
        "out of luck; then: the tracking store sqlite:///"
    )
    assert "cannot be written: no space left on device" in run.data.tags["error"]
    assert not (out / CLOSE_NOTE).exists()


def test_an_artifact_cut_short_by_a_full_disk_leaves_no_partial_file(small_disk: Path, tmp_path: Path) -> None:
    tracker = _store_on(small_disk, patience=0)
    run_id = tracker.start_run("job")
    big = tmp_path / "big.bin"
    big.write_bytes(np.zeros(4 * MB, dtype=np.uint8).tobytes())
    with pytest.raises(Exception, match="no space left on device"):
        tracker.log_artifact(run_id, big)
    assert list((small_disk / "mlruns").rglob("big.bin")) == []


def test_a_close_note_keeps_a_long_reason_in_any_script_and_hides_secrets(tmp_path: Path) -> None:
    from btxrd.tracking.stale import CloseNote, read_close_note

    note = CloseNote(tmp_path, "run1")
    note.record("FAILED", "骨腫瘍 " * 3000 + " http://al:pw@h")
    kept = read_close_note(str(tmp_path), "run1")
    assert kept.startswith("the job ended FAILED but could not close its run: 骨腫瘍") and "pw" not in kept
    assert len((tmp_path / CLOSE_NOTE).read_bytes()) == CloseNote.SIZE
