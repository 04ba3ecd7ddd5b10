"""Which GPU a job runs on: a free one, claimed for the job's life, never the one its number points at.

On a box of several GPUs, jobs placed by job number (``num % count``) pile up when they are uneven: two
long jobs share a GPU while another idles. Here every GPU has ``train.jobs_per_gpu`` slots, each a file
lock in a folder of this machine shared by every sweep on it; a job takes the first free slot, spreading
jobs over the GPUs before doubling up, and waits when every slot is taken. It then makes that GPU the
process's current device before anything touches CUDA (else a DataLoader's pin-memory thread opens a
context on GPU 0 too), and on release frees the memory the caching allocator kept: joblib's workers are
reused, and the next job may be placed on another GPU.

GPUs are named as ``CUDA_VISIBLE_DEVICES`` names them (an index or a UUID), so sweeps that see
different subsets of the machine's GPUs still agree on which is which.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout

log = logging.getLogger(__name__)
SLOTS_DIR = Path(tempfile.gettempdir()) / "btxrd-gpu-slots"  # one per machine, like the GPUs
WAIT_S = 1.0  # how often a job that found every slot taken looks again


def gpu_names(count: int) -> list[str]:
    """This process's GPUs 0..count-1 as the machine names them (``CUDA_VISIBLE_DEVICES``), for lock files."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return [visible[i] if i < len(visible) else str(i) for i in range(count)]


@contextmanager
def claimed_gpu(jobs_per_gpu: int, folder: Path | None = None) -> Iterator[torch.device]:
    """A GPU with a free slot, its slot held (and the GPU current) until the block ends; waits for one.
    ``folder``: where the slots' lock files are (default: this machine's, ``SLOTS_DIR``)."""
    folder = folder or SLOTS_DIR
    names = gpu_names(torch.cuda.device_count())
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o1777)  # every user's sweeps on this machine share its GPUs
    said = False
    while True:
        for slot in range(jobs_per_gpu):  # slot 0 of every GPU first: spread, then double up
            for index, name in enumerate(names):
                lock = FileLock(str(folder / f"gpu-{name}.slot{slot}.lock"), mode=0o666)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                try:
                    device = torch.device("cuda", index)
                    torch.cuda.set_device(device)
                    yield device
                finally:
                    lock.release()
                    torch.cuda.empty_cache()  # what this job's tensors left cached
                return
        if not said:
            log.info(
                "every GPU slot is taken (%d GPU(s) x train.jobs_per_gpu=%d): waiting for one", len(names), jobs_per_gpu
            )
            said = True
        time.sleep(WAIT_S)
