"""Files as untrusted input and as output that must be whole: the project's one reader and one writer.

Reading: any file a dataset or a user names (image, annotation, sheet, DICOM) may be a FIFO (opening
it would block for ever), a device (``/dev/zero`` never ends), a link out of the dataset, or huge.
``read_file`` reads regular files only, up to a size limit, and never blocks on open.

Writing: ``write_atomically`` writes a temporary file beside the target and renames it over the target,
so a reader (or a kill) sees the whole file or none; when the write fails (a full disk) the temporary
file is removed, so it does not keep the disk full, and the error names the path and the room left.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from btxrd.errors import DataError, StorageError

MB = 2**20


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the filesystem of ``path`` (or of its nearest existing parent); None if unknown."""
    path = Path(path)
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def room_left(path: str | Path) -> str:
    """'12.3 MB free on its filesystem' for messages (or nothing, when it cannot be known)."""
    free = free_bytes(path)
    return "" if free is None else f"{free / MB:.1f} MB free on its filesystem"


def read_file(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (links followed), at most ``max_bytes``; DataError naming
    ``path`` for anything else: a folder, FIFO, socket or device, a file over the limit. FileNotFoundError
    (an OSError) when it does not exist, as ``open`` raises it."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, for ever
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        check_regular(os.fstat(fd), path, max_bytes)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while being read
        raise DataError(f"{path}: over the limit of {_size(max_bytes)} (data.max_file_mb)")
    return data


def check_regular(info: os.stat_result, path: str | Path, max_bytes: int) -> None:
    """DataError naming ``path`` unless ``info`` is a regular file of at most ``max_bytes``."""
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: {_kind(info.st_mode)}, not a regular file: not read")
    if info.st_size > max_bytes:
        raise DataError(f"{path}: {_size(info.st_size)}, over the limit of {_size(max_bytes)} (data.max_file_mb)")


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < MB else f"{n / MB:.1f} MB"


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path``, every link resolved, lies inside ``folder`` (links resolved too)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def file_version(path: str | Path) -> str:
    """What changes when the file does, without reading it: its size and modification time, the key of every
    memo and cache built from files (a file rewritten in place within the same nanosecond and size is not
    told apart; reading every byte to hash it would cost what the memos save)."""
    info = os.stat(path)
    return f"{info.st_size}|{info.st_mtime_ns}"


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` then a rename onto ``path``: a process reading meanwhile, or a kill, sees the whole
    file or none. On failure the temporary file is removed; a write that failed for want of room (or a
    folder that cannot be written) is a StorageError naming ``path`` and the room left."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        full = (free_bytes(path.parent) or 0) < FULL_BELOW  # measured before the partial file is removed
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError | RuntimeError) and (reason := _storage_failure(exc, path, full)):
            raise StorageError(f"cannot write {path}: {reason}") from None
        raise
    return path


# A filesystem with less room than this after a failed write was filled by it. torch.save reports a full
# disk as a RuntimeError of its zip writer ("enforce fail at inline_container.cc", "iostream error"),
# with neither errno nor path: the room left is what tells.
FULL_BELOW = MB


def _storage_failure(exc: BaseException, path: Path, full: bool) -> str:
    """What a failed write says of the disk, or "" when it is some other error (to be raised as it is)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        room = f"; {room_left(path.parent)}" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return f"{exc.strerror or exc}{room}"
    return f"No space left on device; {room_left(path.parent)}" if full else ""
