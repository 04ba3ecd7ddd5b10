"""Probing images: each decoded once at reduced scale for its size, fingerprints (perceptual hash, SHA-1),
mode and orientation, in threads, remembered per file version so a sweep's jobs probe a dataset once."""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from filelock import FileLock
from PIL import UnidentifiedImageError

from btxrd.data.dicom import is_dicom_data, read_dicom
from btxrd.data.duplicates import fingerprint
from btxrd.data.limits import InputLimits, image_from_bytes
from btxrd.data.pixels import orientation, to_gray8, upright, upright_size
from btxrd.errors import DataError
from btxrd.files import file_version, write_atomically

log = logging.getLogger(__name__)

# What probing an image learns: its upright size, perceptual hash and SHA-1 of the file
# (btxrd.data.duplicates), image mode and EXIF orientation; the table's columns of the same names.
Probe = tuple[int, int, str, str, str, int]
PROBED = ("width", "height", "phash", "sha1", "mode", "orientation")
_HASH_SIDE = 128  # decode at least this many pixels on the short side for the perceptual hash


def _probe_image(path: str, limits: InputLimits, root: Path) -> Probe:
    """Size and fingerprints of an image, after decoding it at reduced scale.

    JPEG draft mode decodes at up to 1/8 scale (a few ms for a full-size radiograph)
    but still reads the whole entropy-coded stream, so a truncated or corrupt
    file fails here, before any split or training is made from it. What the file may be (a regular
    file in ``root``, its size, the pixels it declares) is checked before it is decoded.
    """
    data = limits.read(path, root)
    opened = read_dicom(path, limits, data) if is_dicom_data(data) else image_from_bytes(data, path, limits)
    with opened as img:
        (width, height), mode, turned = upright_size(img), img.mode, orientation(img)
        scale = max(1, min(8, min(width, height) // _HASH_SIDE))
        img.draft("L", (max(1, img.width // scale), max(1, img.height // scale)))
        img.load()
        phash, sha1 = fingerprint(to_gray8(upright(img), path), data)
    return width, height, phash, sha1, mode, turned


def _probe_all(paths: list[str], limits: InputLimits, root: Path) -> list[Probe | str]:
    """Probe images in threads (Pillow releases the GIL while decoding)."""

    def probe(path: str) -> Probe | str:
        try:
            return _probe_image(path, limits, root)
        except FileNotFoundError:
            return f"{path} (missing)"
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            return f"{path} (unreadable: {exc})"
        except DataError as exc:  # not a file to read, over a limit, or a mode that cannot be shown faithfully
            return _named(path, exc)

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        return list(pool.map(probe, paths, chunksize=64))


def _named(path: str, exc: DataError) -> str:
    """A problem with an image, as the list of bad images shows it: its path, then what is wrong."""
    text = str(exc)
    return f"{path} ({text.removeprefix(path).lstrip(': ')})"


def probe_images(paths: list[str], limits: InputLimits, root: Path) -> list[Probe | str]:
    """Each image's probe (``PROBED``: size, fingerprints, mode, orientation), or what is wrong with it;
    only regular files inside ``root``, within ``limits``. JPEG, PNG and the rest Pillow reads, and DICOM."""
    return _probe_all(paths, limits, root)


def probe_memoised(paths: list[str], memo_dir: Path | None, limits: InputLimits, root: Path) -> list[Probe | str]:
    """``_probe_all`` with a memo of decodable images keyed by (path, file size, mtime).

    Probing reads every JPEG's entropy-coded stream (~10 ms for a full-size radiograph, JPEG
    scaling does not skip it): 3,746 images would cost every job of a sweep ~20 s. Failures are
    never memoised, so a broken file is reported again until it is fixed; the limits are checked
    again for remembered images too (they are settings: a run may lower them).
    """
    if memo_dir is None:
        return _probe_all(paths, limits, root)
    memo_path = Path(memo_dir) / "probe_memo.json"
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    # Jobs of a sweep start together: one probes, the others wait and read its memo.
    with FileLock(str(memo_path.with_suffix(".lock"))):
        return _probe_with_memo(paths, memo_path, limits, root)


def _probe_with_memo(paths: list[str], memo_path: Path, limits: InputLimits, root: Path) -> list[Probe | str]:
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    keys = []
    for path in paths:
        try:
            keys.append(f"{path}|{file_version(path)}")
        except OSError:
            keys.append("")
    todo = [i for i, key in enumerate(keys) if len(memo.get(key, ())) != len(PROBED)]  # also older memos
    if todo:
        log.info("probing %d images (decodability, size, fingerprints; memo %s)", len(todo), memo_path)
    results: list[Probe | str] = [
        _remembered(paths[i], memo[k], limits, root) if k in memo else "" for i, k in enumerate(keys)
    ]
    for i, result in zip(todo, _probe_all([paths[i] for i in todo], limits, root), strict=True):
        results[i] = result
        if not isinstance(result, str) and keys[i]:
            memo[keys[i]] = list(result)
    if todo:
        write_atomically(memo_path, lambda tmp: tmp.write_text(json.dumps(memo)))
    return results


def _remembered(path: str, probe: list, limits: InputLimits, root: Path) -> Probe | str:
    """A remembered probe, or the problem today's limits find with the file (without reading it)."""
    try:
        limits.admit(path, root)
        limits.check_pixels(int(probe[0]), int(probe[1]), path)
    except DataError as exc:
        return _named(path, exc)
    except OSError:  # gone since it was stat'ed a moment ago: the next run probes it again
        return f"{path} (missing)"
    return tuple(probe)
