"""Where a job computes: its device, its share of the CPU cores, and its seeds."""

from __future__ import annotations

import os
import platform
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from btxrd.errors import ConfigError
from btxrd.runtime.gpus import claimed_gpu


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    threads: int  # torch intra-op threads of this job (also its cache-building threads)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_tags(device: torch.device) -> dict[str, str]:
    """What computed a run, as tags: results are bit-exact only on the same CPU model or GPU with the
    same torch (other hardware picks other kernels), so a table's numbers name their machine."""
    accelerator = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    return {
        "machine.cpu": cpu_model(),
        "machine.cores": str(available_cores()),
        "machine.accelerator": accelerator,
        "machine.torch": torch.__version__,
        "machine.cuda": torch.version.cuda or "none",
        **_scheduler_tags(),
    }


def _scheduler_tags() -> dict[str, str]:
    """Under Slurm: the job (array tasks as ARRAY_TASK, as squeue and sacct name them) and its node."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return {}
    job = (
        f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        if "SLURM_ARRAY_TASK_ID" in env
        else env["SLURM_JOB_ID"]
    )
    return {"slurm.job_id": job, "slurm.node": env.get("SLURMD_NODENAME", "")}


def available_memory(device: torch.device) -> int | None:
    """Bytes a job can still allocate on ``device``: the GPU's free memory, or the machine's available
    memory (Linux MemAvailable), within a container's own limit (cgroup v2 or v1); None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroup = Path("/sys/fs/cgroup")
    cgroup_files = (
        ("memory.max", "memory.current"),  # v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    )  # v1
    for limit, usage in cgroup_files:
        try:
            found.append(int((cgroup / limit).read_text()) - int((cgroup / usage).read_text()))
        except (OSError, ValueError):  # absent, or "max": no limit
            continue
    return min(found) if found else None


def select_device(setting: str) -> torch.device:
    """A device named by ``train.device`` (``cpu``, ``cuda:N``, ``mps``); ``auto`` without CUDA is the CPU."""
    if setting == "auto":
        return torch.device("cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={setting}: CUDA is not available on this machine")
    return device


def threads_per_job(threads: int | None, n_jobs: int, cpus_per_job: int | None = None) -> int:
    """None (``auto``): the job's share of the cores, so n_jobs x threads never exceeds them
    (or the CPUs the launcher gave the job, when it says)."""
    if threads is None:
        if cpus_per_job:
            return max(1, min(cpus_per_job, available_cores()))
        return max(1, available_cores() // max(1, n_jobs))
    return max(1, threads)


CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs to be deterministic (CUDA's documentation)


def seed_everything(seed: int, deterministic: bool | None, device: torch.device) -> bool:
    """Seed every generator and set the determinism ``train.deterministic`` asks for; the mode applied.

    None (``auto``): strict on the CPU, where it costs nothing; fast on a GPU (cuDNN picks the fastest
    kernels, which differ run to run in the last bits). True: deterministic algorithms everywhere, on a GPU
    too (cuDNN's deterministic kernels, cuBLAS's fixed workspace; ops that have no deterministic kernel warn).
    """
    strict = device.type != "cuda" if deterministic is None else deterministic
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator
    if strict and device.type == "cuda":
        # read when cuBLAS starts, in this process; a worker that used cuBLAS before keeps its setting
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(strict, warn_only=True)
    torch.backends.cudnn.deterministic = strict
    torch.backends.cudnn.benchmark = not strict
    return strict


@contextmanager
def job_runtime(
    device: str, threads: int | None, n_jobs: int = 1, cpus_per_job: int | None = None, jobs_per_gpu: int = 1
) -> Iterator[Runtime]:
    """The job's device and torch threads for the block (loky workers keep threads between jobs, so they
    are set each time). ``auto`` and ``cuda`` with GPUs present: a free GPU slot, held for the block
    (``runtime/gpus.py``); ``cuda:N``: that GPU; otherwise the CPU. A GPU is made the current device."""
    count = threads_per_job(threads, n_jobs, cpus_per_job)
    torch.set_num_threads(count)
    if device in ("auto", "cuda") and torch.cuda.is_available():
        with claimed_gpu(jobs_per_gpu) as gpu:
            yield Runtime(gpu, count)
        return
    chosen = select_device("cuda" if device == "cuda" else device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    yield Runtime(chosen, count)
