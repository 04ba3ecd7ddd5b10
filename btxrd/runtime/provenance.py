"""What made a result: the code's commit (and uncommitted changes), and when this process started."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parents[2]  # the project's checkout (an editable install)
_IMPORTED_AT = time.time()


def git_commit(root: str | Path = CODE_ROOT) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_version(root: str | Path = CODE_ROOT, commit: str | None = None) -> str:
    """What a checkpoint was made by: the commit (``git_commit``'s, if already read) plus a hash of
    uncommitted changes to tracked files, or the installed package's version outside a git checkout."""
    commit = commit or git_commit(root)
    if commit == "unknown":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"btxrd {version('btxrd')}"
        except PackageNotFoundError:
            return "unknown"
    try:
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=root, capture_output=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return commit
    return f"{commit}+{hashlib.sha1(diff).hexdigest()[:10]}" if diff else commit


def process_start_time(pid: int | None = None) -> float:
    """Wall-clock start of process ``pid`` (default: this one) from Linux /proc; elsewhere, for this
    process, the import time of this module, and NaN for another."""
    try:
        ticks = int(Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT if pid is None else float("nan")


def process_alive(pid: int, started: float) -> bool:
    """Whether process ``pid`` still runs and is the one that started at ``started`` (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, someone else's
        pass
    now = process_start_time(pid)
    return now != now or abs(now - started) < 2.0  # unknown start (not Linux): assume it is the same
