"""Decode-once image cache: letterboxed uint8 canvases in one memory-mapped file.

Decoding a full-size radiograph costs ~25 ms per core; an epoch of BTXRD would
spend most of its time in JPEG decoding. Here each image is decoded once (JPEG
draft mode to the smallest DCT scale still larger than needed, grayscale),
resized keeping its aspect ratio, optionally contrast-enhanced (CLAHE, OpenCV),
and centred on a square canvas of the *source* size (``data.cache_source_size``).
Every smaller canvas any run asks for is resized from that source file, so a sweep
over several input sizes decodes each JPEG once in total; a larger one is decoded
directly. Files: ``<cache_dir>/<files digest>_<size>_<preprocess>[_from<source>].npy``
plus a JSON of geometry. The files digest covers the image files (name, size, mtime),
so a changed dataset gets a new cache. A file lock makes concurrent jobs of a sweep
build each file once: one builds, the others wait and reuse. Written here rather
than with a generic cache library because the whole data set stays one mmap that
every loader worker shares without copies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from PIL import Image

from btxrd.data.annotations import rasterise, transform_box
from btxrd.data.dicom import open_radiograph
from btxrd.data.limits import DEFAULT_LIMITS, InputLimits
from btxrd.data.pixels import TRANSPOSED, orientation, to_gray8, upright, upright_size
from btxrd.errors import DataError, StorageError
from btxrd.files import MB, file_version, room_left, write_atomically
from btxrd.settings import DataConfig

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: images read upright (EXIF orientation)


@dataclass(frozen=True)
class Preprocess:
    """Contrast enhancement applied once, when an image is decoded into the cache (data.preprocess,
    data.clahe.*; their ranges are checked with the rest of the settings)."""

    name: str  # none | clahe
    clip_limit: float = 0.0  # CLAHE: contrast limit per tile (OpenCV's clipLimit)
    tiles: int = 0  # CLAHE: the image is split into tiles x tiles regions

    @property
    def key(self) -> str:
        return "none" if self.name == "none" else f"clahe{self.clip_limit:g}x{self.tiles}"

    def __call__(self, gray: np.ndarray) -> np.ndarray:
        if self.name == "none":
            return gray
        import cv2  # OpenCV's CLAHE, the field's reference implementation; imported only when used

        return cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.tiles, self.tiles)).apply(gray)


@dataclass(frozen=True)
class ImageCache:
    """Cached canvases and the geometry that maps original pixels onto them."""

    pixels: np.ndarray  # (N, size, size) uint8, memory-mapped, read-only
    image_ids: tuple[str, ...]
    scale: np.ndarray  # (N, 2): x, y scale from original pixels to canvas
    offset: np.ndarray  # (N, 2): x, y offset of the image on the canvas
    extent: np.ndarray  # (N, 2): width, height of the image on the canvas (pixels)
    size: int
    path: Path

    def row_of(self) -> dict[str, int]:
        return {iid: i for i, iid in enumerate(self.image_ids)}


def canvas_size(image_size: int, canvas_scale: float) -> int:
    """Side of the cached square canvas: the input size plus the room training crops need."""
    return int(round(image_size * canvas_scale))


def files_digest(table: pd.DataFrame) -> str:
    """Hash of the image files' names and versions (size, modification time): a cache's key."""
    digest = hashlib.sha1(f"v{CACHE_VERSION}".encode())
    for image_id, path in zip(table["image_id"], table["path"], strict=True):
        digest.update(f"{image_id}|{file_version(path)}\n".encode())
    return digest.hexdigest()[:16]


# canvas, (x, y) scale and (x, y) offset from original pixels to the canvas, (width, height) on it
Geometry = tuple[np.ndarray, tuple[float, float], tuple[float, float], tuple[int, int]]


def _fitted(width: float, height: float, size: int) -> tuple[int, int]:
    factor = size / max(width, height)
    return max(1, round(width * factor)), max(1, round(height * factor))


def _placed(image: np.ndarray, size: int, original: tuple[float, float]) -> Geometry:
    """``image`` centred on a black ``size`` square, with the geometry from the original pixels."""
    new_h, new_w = image.shape
    canvas = np.zeros((size, size), dtype=np.uint8)
    ox, oy = (size - new_w) // 2, (size - new_h) // 2
    canvas[oy : oy + new_h, ox : ox + new_w] = image
    return canvas, (new_w / original[0], new_h / original[1]), (float(ox), float(oy)), (new_w, new_h)


NO_PREPROCESS = Preprocess("none")


def letterbox(
    path: str | Path, size: int, preprocess: Preprocess = NO_PREPROCESS, limits: InputLimits = DEFAULT_LIMITS
) -> Geometry:
    """Decode one image (any format Pillow reads, or DICOM) to grayscale and fit it, aspect kept, centred
    on a ``size`` square."""
    with open_radiograph(path, limits) as img:
        return letterbox_image(img, size, preprocess, str(path))


def letterbox_image(
    img: Image.Image, size: int, preprocess: Preprocess = NO_PREPROCESS, name: str = "image"
) -> Geometry:
    """``letterbox`` of an opened (or decoded) image."""
    width, height = upright_size(img)  # annotations are drawn on the upright picture
    new_w, new_h = _fitted(width, height, size)
    stored = (new_h, new_w) if orientation(img) in TRANSPOSED else (new_w, new_h)
    img.draft("L", stored)  # JPEG: decode at the smallest DCT scale >= target (others: no-op)
    gray = to_gray8(upright(img), name)
    resized = gray.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return _placed(preprocess(np.asarray(resized)), size, (width, height))  # CLAHE on the image, not the padding


def _build(
    n: int,
    size: int,
    make: Callable[[int], Geometry],
    data_path: Path,
    meta_path: Path,
    workers: int,
    image_ids: list[str],
    describe: Callable[[int], str],
) -> None:
    scale, offset, extent = np.zeros((n, 2)), np.zeros((n, 2)), np.zeros((n, 2), dtype=int)

    def fill(tmp_data: Path) -> None:
        pixels = _allocated_memmap(tmp_data, (n, size, size))

        def work(i: int) -> str | None:
            try:
                pixels[i], scale[i], offset[i], extent[i] = make(i)
            except (OSError, ValueError, SyntaxError, DataError) as exc:
                return f"{describe(i)} ({exc})"
            return None

        with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow and OpenCV release the GIL
            failures = [f for f in pool.map(work, range(n), chunksize=16) if f]
        if failures:
            raise DataError(f"cannot decode {len(failures)} image(s): {', '.join(failures[:5])}")
        pixels.flush()

    write_atomically(data_path, fill)
    meta = {
        "image_ids": image_ids,
        "scale": scale.tolist(),
        "offset": offset.tolist(),
        "extent": extent.tolist(),
        "size": size,
    }
    write_atomically(meta_path, lambda tmp: tmp.write_text(json.dumps(meta)))  # the metadata marks the cache complete


def _allocated_memmap(path: Path, shape: tuple[int, int, int]) -> np.memmap:
    """A new .npy file of uint8 ``shape``, memory-mapped, its disk space reserved first: pages of a
    sparse file that the disk has no room for would kill the process with SIGBUS when written."""
    pixels = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as exc:
        del pixels
        need = int(np.prod(shape)) / MB
        raise StorageError(
            f"cannot build the image cache {path.parent}: it needs {need:.0f} MB "
            f"({exc.strerror or exc}; {room_left(path.parent)}); set data.cache_dir elsewhere or "
            "make room"
        ) from None
    return pixels


def _cached(cache_dir: Path, stem: str, image_ids: list[str], build: Callable[[Path, Path], None]) -> ImageCache:
    """Open ``stem``'s cache, building it first under its lock if it is not complete."""
    data_path, meta_path = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    with FileLock(str(cache_dir / f"{stem}.lock")):
        if not meta_path.is_file():
            build(data_path, meta_path)
    meta = json.loads(meta_path.read_text())
    if meta["image_ids"] != image_ids:
        raise DataError(f"image cache {meta_path} does not match the dataset; delete it and run again")
    return ImageCache(
        pixels=np.load(data_path, mmap_mode="r"),
        image_ids=tuple(meta["image_ids"]),
        scale=np.asarray(meta["scale"]),
        offset=np.asarray(meta["offset"]),
        extent=np.asarray(meta["extent"], dtype=int),
        size=int(meta["size"]),
        path=data_path,
    )


def _resized(source: ImageCache, i: int, size: int) -> Geometry:
    """Image ``i`` of the source cache letterboxed at ``size``, exactly as a fresh decode would place it."""
    return _letterboxed_again((source.pixels[i], source.scale[i], source.offset[i], source.extent[i]), size)


def _letterboxed_again(canvas: Geometry, size: int) -> Geometry:
    """A letterboxed canvas (with its geometry) letterboxed at ``size``: its picture resized from the
    canvas, as a fresh decode would place it (the canvas is already preprocessed)."""
    pixels, scale, offset, extent = canvas
    (ox, oy), (ew, eh) = np.asarray(offset).astype(int), extent
    original = (ew / scale[0], eh / scale[1])
    region = Image.fromarray(np.asarray(pixels[oy : oy + eh, ox : ox + ew]))
    resized = region.resize(_fitted(*original, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return _placed(np.asarray(resized), size, original)


def cache_images(
    table: pd.DataFrame,
    size: int,
    cache_dir: str | Path,
    preprocess: Preprocess = NO_PREPROCESS,
    workers: int | None = None,
    *,
    source_size: int | None,
    limits: InputLimits = DEFAULT_LIMITS,
) -> ImageCache:
    """The cache for ``table`` at canvas ``size``; built (once, under a lock) if missing.

    Sizes below ``source_size`` are resized from the source cache (decoded once for all sizes);
    ``source_size=None`` decodes every size directly.
    """
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    workers = workers or max(1, os.cpu_count() or 1)
    image_ids = table["image_id"].tolist()
    prefix = f"{files_digest(table)}_"

    def decoded(at: int) -> ImageCache:
        def build(data_path: Path, meta_path: Path) -> None:
            log.info("building image cache %s (%d images, %d px, decoding)", data_path, len(table), at)
            paths = table["path"].tolist()
            _build(
                len(table),
                at,
                lambda i: letterbox(paths[i], at, preprocess, limits),
                data_path,
                meta_path,
                workers,
                image_ids,
                lambda i: str(paths[i]),
            )

        return _cached(cache_dir, f"{prefix}{at}_{preprocess.key}", image_ids, build)

    if not source_size or size >= source_size:
        return decoded(size)
    source = decoded(source_size)

    def build(data_path: Path, meta_path: Path) -> None:
        log.info("building image cache %s (%d px, resized from %s)", data_path, size, source.path.name)
        _build(
            len(table),
            size,
            lambda i: _resized(source, i, size),
            data_path,
            meta_path,
            workers,
            image_ids,
            lambda i: f"{source.path}[{i}]",
        )

    return _cached(cache_dir, f"{prefix}{size}_{preprocess.key}_from{source_size}", image_ids, build)


def _preprocess(data: DataConfig) -> Preprocess:
    return Preprocess(data.preprocess, data.clahe.clip_limit, data.clahe.tiles)


def cache_for(
    table: pd.DataFrame,
    image_size: int,
    data: DataConfig,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> ImageCache:
    """The cache a run's ``data`` settings ask for, for model input ``image_size`` (in ``cache_dir``,
    default ``data.cache_dir``)."""
    canvas = canvas_size(image_size, data.canvas_scale)
    return cache_images(
        table,
        canvas,
        cache_dir or data.cache_dir,
        _preprocess(data),
        workers,
        source_size=data.cache_source_size,
        limits=InputLimits.of(data),
    )


def model_input(image: Image.Image, image_size: int, data: DataConfig, name: str = "image") -> np.ndarray:
    """One image as a run's evaluation feeds it to the model, (image_size, image_size) uint8: the same
    decode, preprocessing and letterbox as its cache (through the source size when the cache goes
    through it), then the canvas resized to the input size as the evaluation dataset does."""
    import torch  # here, not at the top: the cache is built without torch (btxrd.data.prepare)
    import torchvision.transforms.v2.functional as TF

    preprocess = _preprocess(data)
    canvas = canvas_size(image_size, data.canvas_scale)
    source = data.cache_source_size
    if source and canvas < source:
        pixels = _letterboxed_again(letterbox_image(image, source, preprocess, name), canvas)[0]
    else:
        pixels = letterbox_image(image, canvas, preprocess, name)[0]
    if canvas == image_size:
        return pixels
    resized = TF.resize(torch.from_numpy(pixels)[None], [image_size, image_size], antialias=True)
    return resized[0].numpy()


def lesions_in_input(rows: pd.DataFrame, cache: ImageCache, image_size: int) -> tuple[list, np.ndarray]:
    """Lesion boxes and masks of ``rows`` in the evaluation input frame (whole canvas at ``image_size``).

    For scoring saliency maps only: evaluation inputs never contain annotation information.
    """
    row_of = cache.row_of()
    factor = image_size / cache.size
    boxes, masks = [], np.zeros((len(rows), image_size, image_size), dtype=np.uint8)
    for i, (image_id, image_boxes, polygons) in enumerate(
        zip(rows["image_id"], rows["boxes"], rows["polygons"], strict=True)
    ):
        r = row_of[image_id]
        scale = (cache.scale[r][0] * factor, cache.scale[r][1] * factor)
        offset = (cache.offset[r][0] * factor, cache.offset[r][1] * factor)
        boxes.append(tuple(transform_box(b, scale, offset) for b in image_boxes))
        if image_boxes or polygons:
            masks[i] = rasterise(image_boxes, polygons, (image_size, image_size), scale, offset)
    return boxes, masks
