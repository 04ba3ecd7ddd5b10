"""A dataset read and decoded into its image cache ahead of a local sweep's jobs.

On a first sweep over a dataset, a job's data step probes every image (decoded once, to check it and
fingerprint it) and builds the image cache (decoded again, into the canvases the models read). A job
reaches that step only after seconds of importing torch, timm, scikit-learn and MLflow, and the
launcher meanwhile works on one core. So the launcher of a local sweep starts this step in a process
of its own as soon as the sweep's config is composed (``start_preparing``): it runs on the core the
launcher leaves idle while it opens the tracking store and starts the jobs, and beside their imports.
The jobs find the probe memo and the cache ready, or wait for them on the same file locks: each step
is done once, by whoever gets there first, and a job never depends on this process having run (if it
fails, the jobs do the work and report the problem themselves). It imports no torch.

    python -m btxrd.data.prepare      # reads (data settings, model input size) pickled on stdin
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import threading
from pathlib import Path

from btxrd.cli import run_cli
from btxrd.data.cache import ImageCache, cache_for
from btxrd.data.limits import InputLimits
from btxrd.data.reader import load_dataset
from btxrd.settings import DataConfig

log = logging.getLogger(__name__)


def prepare(data: DataConfig, image_size: int) -> ImageCache:
    """Probe ``data``'s dataset (memo in ``data.cache_dir``) and build the image cache a job with
    input size ``image_size`` reads (and the source canvases every smaller size is resized from)."""
    table = load_dataset(
        data.root,
        on_bad_image=data.on_bad_image,
        read_annotations=False,
        memo_dir=data.cache_dir,
        duplicate_distance=data.duplicate_distance,
        limits=InputLimits.of(data),
    )
    return cache_for(table, image_size, data)


def start_preparing(data: DataConfig, image_size: int, log_path: Path) -> subprocess.Popen:
    """``prepare`` in a new process, its output in ``log_path``; reaped by a thread when it ends."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "btxrd.data.prepare"], stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT
        )
    assert process.stdin is not None
    process.stdin.write(pickle.dumps((data, image_size)))
    process.stdin.close()
    threading.Thread(target=process.wait, name="btxrd-prepare-reaper", daemon=True).start()
    return process


def main() -> int:
    data, image_size = pickle.load(sys.stdin.buffer)  # from start_preparing, in this same project
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    cache = prepare(data, image_size)
    log.info("dataset %s ready: %d images in %s", data.root, len(cache.image_ids), cache.path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
