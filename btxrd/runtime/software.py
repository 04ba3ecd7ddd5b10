"""What software computed a run: every installed package with its version (what ``pip list`` lists, read
from the package metadata without starting pip), the interpreter, cuDNN and the GPU driver; and a digest of
the package list and the interpreter's version, so two runs or two sweeps can be compared at a glance
(the CUDA, cuDNN and driver versions are tags of their own)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import re
import sys
from functools import cache

import torch

ENVIRONMENT_DIGEST_TAG = "environment.digest"


@cache
def installed_packages() -> tuple[str, ...]:
    """``name==version`` of every distribution this interpreter sees, sorted by normalised name (PEP 503)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(re.sub(r"[-_.]+", "-", name).lower(), f"{name}=={dist.version}")
    return tuple(found[key] for key in sorted(found))


def requirements_text() -> str:
    """The package list as a requirements file, headed by the interpreter and platform it ran on."""
    head = [f"# python {platform.python_version()} ({sys.implementation.name}) on {platform.platform()}"]
    return "\n".join([*head, *installed_packages()]) + "\n"


def environment_digest() -> str:
    """12 hex digits of SHA-256 over the interpreter's version and the package list (not the kernel's
    version): equal digests, equal software."""
    listed = "\n".join([f"python=={platform.python_version()}", *installed_packages()])
    return hashlib.sha256(listed.encode()).hexdigest()[:12]


def software_tags(device: torch.device) -> dict[str, str]:
    """The interpreter, cuDNN and the GPU driver (what torch's own version tags leave out), and the digest."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "machine.python": platform.python_version(),
        "machine.cudnn": str(cudnn) if cudnn and device.type == "cuda" else "none",
        "machine.driver": gpu_driver() if device.type == "cuda" else "none",
        ENVIRONMENT_DIGEST_TAG: environment_digest(),
    }


def gpu_driver() -> str:
    """The NVIDIA driver's version (NVML, nvidia-ml-py), or "unknown" where NVML cannot be read."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # not installed, no NVIDIA driver, or NVML refused (a container without it)
        return "unknown"
    return version.decode() if isinstance(version, bytes) else str(version)
