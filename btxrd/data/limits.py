"""What an input file may be, checked before a byte of it is decoded: every file is untrusted.

An image path may name a FIFO or a device (``btxrd.files.read_file`` reads regular files only, up to
``data.max_file_mb``), a symbolic link out of the dataset (refused unless
``data.allow_links_outside_root``), or a picture that declares more pixels than any radiograph (a
decompression bomb: a few kilobytes that decode to gigabytes). Pillow reads the size from the header
without decoding, so ``image_from_bytes`` refuses it first (``data.max_image_pixels``), as a named problem
that ``data.on_bad_image=skip`` skips like any other unreadable image.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from btxrd.errors import DataError
from btxrd.files import MB, check_regular, inside, read_file
from btxrd.settings import DataConfig


@dataclass(frozen=True)
class InputLimits:
    """data.max_image_pixels, data.max_file_mb, data.allow_links_outside_root. The defaults are
    conf/data/btxrd.yaml's (a test keeps them equal), for library calls made without a config."""

    max_image_pixels: int = 64_000_000
    max_file_mb: float = 256.0
    allow_links_outside_root: bool = False

    @classmethod
    def of(cls, data: DataConfig) -> InputLimits:
        return cls(data.max_image_pixels, data.max_file_mb, data.allow_links_outside_root)

    @property
    def max_bytes(self) -> int:
        return int(self.max_file_mb * MB)

    def admit(self, path: str | Path, root: str | Path | None = None) -> None:
        """DataError naming ``path`` unless it is a regular file within the size limit, inside ``root``
        (links resolved) or links out of it are allowed; reads nothing (FileNotFoundError if missing)."""
        if root is not None and not self.allow_links_outside_root and not inside(path, root):
            raise DataError(f"{path}: a link to a file outside {root} (data.allow_links_outside_root=true reads it)")
        check_regular(os.stat(path), path, self.max_bytes)

    def read(self, path: str | Path, root: str | Path | None = None) -> bytes:
        """The bytes of ``path``, admitted as ``admit`` says."""
        self.admit(path, root)
        return read_file(path, self.max_bytes)

    def check_pixels(self, width: int, height: int, name: str) -> None:
        if width * height > self.max_image_pixels:
            self._refuse_size(f"{width} x {height} px", name)

    def _refuse_size(self, size: str, name: str) -> None:
        raise DataError(
            f"{name}: declares {size}, over the limit of {self.max_image_pixels:,} pixels "
            "(data.max_image_pixels); a decompression bomb, or no radiograph"
        )


DEFAULT_LIMITS = InputLimits()


def image_from_bytes(data: bytes, name: str, limits: InputLimits) -> Image.Image:
    """An image file's bytes opened (not decoded), its declared size within the limit; DataError naming ``name``."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limits.max_image_pixels:
        Image.MAX_IMAGE_PIXELS = limits.max_image_pixels  # Pillow's own guard, raised (never lowered) to ours
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own guard (twice its MAX_IMAGE_PIXELS) comes first
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        limits._refuse_size(f"{int(pixels[1]):,} pixels" if pixels else "too many pixels", name)
    limits.check_pixels(image.width, image.height, name)
    return image
