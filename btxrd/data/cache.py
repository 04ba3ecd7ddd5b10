"""Decode-once image cache: letterboxed uint8 canvases in one memory-mapped file.

Decoding a full-size radiograph costs ~25 ms per core; an epoch of BTXRD would
spend most of its time in JPEG decoding. Here each image is decoded once (JPEG
draft mode to the smallest DCT scale still larger than needed, grayscale),
resized keeping its aspect ratio and centred on a square canvas, and stored in
``<cache_dir>/<fingerprint>_<size>_<preprocess>.u8``. The fingerprint covers the
image files (name, size, mtime), so a changed dataset gets a new cache. A file
lock makes concurrent jobs of a sweep build it once: one builds, the others wait
and reuse. Writing it ourselves rather than using a generic cache library keeps
the whole data set as one mmap that every loader worker shares without copies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from PIL import Image

from btxrd.errors import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
PREPROCESS = ("none",)


@dataclass(frozen=True)
class ImageCache:
    """Cached canvases and the geometry that maps original pixels onto them."""

    pixels: np.ndarray  # (N, size, size) uint8, memory-mapped, read-only
    image_ids: tuple[str, ...]
    scale: np.ndarray  # (N, 2): x, y scale from original pixels to canvas
    offset: np.ndarray  # (N, 2): x, y offset of the image on the canvas
    size: int
    path: Path

    def row_of(self) -> dict[str, int]:
        return {iid: i for i, iid in enumerate(self.image_ids)}


def canvas_size(image_size: int, canvas_scale: float) -> int:
    """Side of the cached square canvas: the input size plus the room training crops need."""
    return int(round(image_size * canvas_scale))


def fingerprint(table: pd.DataFrame) -> str:
    """Hash of the image files' names, sizes and modification times."""
    digest = hashlib.sha1(f"v{CACHE_VERSION}".encode())
    for image_id, path in zip(table["image_id"], table["path"], strict=True):
        stat = os.stat(path)
        digest.update(f"{image_id}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def letterbox(path: str | Path, size: int) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Decode one image to grayscale and fit it, aspect kept, centred on a ``size`` square."""
    with Image.open(path) as img:
        width, height = img.size
        factor = size / max(width, height)
        new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
        img.draft("L", (new_w, new_h))  # JPEG: decode at the smallest DCT scale >= target
        gray = img.convert("L")
        resized = gray.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    canvas = np.zeros((size, size), dtype=np.uint8)
    ox, oy = (size - new_w) // 2, (size - new_h) // 2
    canvas[oy : oy + new_h, ox : ox + new_w] = np.asarray(resized)
    return canvas, (new_w / width, new_h / height), (float(ox), float(oy))


def _build(table: pd.DataFrame, size: int, data_path: Path, meta_path: Path, workers: int) -> None:
    n = len(table)
    tmp_data = data_path.with_suffix(".u8.tmp")
    pixels = np.lib.format.open_memmap(tmp_data, mode="w+", dtype=np.uint8, shape=(n, size, size))
    scale = np.zeros((n, 2))
    offset = np.zeros((n, 2))

    def work(i: int) -> str | None:
        try:
            pixels[i], scale[i], offset[i] = letterbox(table["path"].iat[i], size)
        except (OSError, ValueError, SyntaxError) as exc:
            return f"{table['path'].iat[i]} ({exc})"
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow releases the GIL while decoding
        failures = [f for f in pool.map(work, range(n), chunksize=16) if f]
    if failures:
        tmp_data.unlink(missing_ok=True)
        raise DataError(f"cannot decode {len(failures)} image(s): {', '.join(failures[:5])}")
    pixels.flush()
    os.replace(tmp_data, data_path)
    meta = {"image_ids": table["image_id"].tolist(), "scale": scale.tolist(), "offset": offset.tolist(), "size": size}
    tmp_meta = meta_path.with_suffix(".json.tmp")
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, meta_path)  # the metadata file marks the cache complete


def cache_images(
    table: pd.DataFrame, size: int, cache_dir: str | Path, preprocess: str = "none", workers: int | None = None
) -> ImageCache:
    """The cache for ``table`` at canvas ``size``; built (once, under a lock) if missing."""
    if preprocess not in PREPROCESS:
        raise DataError(f"data.preprocess={preprocess!r} is not supported; choose one of {PREPROCESS}")
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{fingerprint(table)}_{size}_{preprocess}"
    data_path, meta_path = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    with FileLock(str(cache_dir / f"{stem}.lock")):
        if not meta_path.is_file():
            log.info("building image cache %s (%d images, %d px)", data_path, len(table), size)
            _build(table, size, data_path, meta_path, workers or max(1, os.cpu_count() or 1))
    meta = json.loads(meta_path.read_text())
    if meta["image_ids"] != table["image_id"].tolist():
        raise DataError(f"image cache {meta_path} does not match the dataset; delete it and run again")
    return ImageCache(
        pixels=np.load(data_path, mmap_mode="r"),
        image_ids=tuple(meta["image_ids"]),
        scale=np.asarray(meta["scale"]),
        offset=np.asarray(meta["offset"]),
        size=int(meta["size"]),
        path=data_path,
    )
