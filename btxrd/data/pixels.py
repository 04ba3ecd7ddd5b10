"""Any image a dataset holds, as the 8-bit grayscale picture every model here reads.

Pillow decodes by content (a PNG named .jpeg is read as a PNG). Modes, as radiographs arrive in them:
- 8-bit gray (L), bilevel (1), colour (RGB, CMYK, YCbCr, LAB, HSV), palette (P): Pillow's conversion
  to L (ITU-R 601 luma for colour);
- with transparency (LA, RGBA, PA, P with transparency): composited on black, the background of a
  radiograph, then converted;
- 16- and 32-bit integer (I;16, I;16B, I): rescaled linearly from the image's own value range to
  0-255 (the full window; DICOM exports and external datasets are often 16-bit, and Pillow's own
  conversion to L would clip them to white); floating point (F) likewise;
- anything else (e.g. a multi-band raw format): a named problem, never a silent guess.

Orientation: a JPEG (or PNG) may store its pixels rotated or mirrored and say so in its EXIF
orientation tag. Viewers show it upright, and LabelMe draws its annotations on the upright picture,
so every image here is read upright too (``upright_size`` before decoding, ``upright`` after).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from btxrd.errors import DataError

WIDE = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # rescaled by their own range
TRANSPARENT = ("LA", "RGBA", "PA", "La", "RGBa")
CONVERTED = ("L", "1", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")


EXIF_ORIENTATION = 0x0112
TRANSPOSED = (5, 6, 7, 8)  # orientations whose upright picture swaps width and height


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8; 1, upright, when absent or not one of them)."""
    value = image.getexif().get(EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright_size(image: Image.Image) -> tuple[int, int]:
    """Width and height of the picture as shown (before decoding it)."""
    width, height = image.size
    return (height, width) if orientation(image) in TRANSPOSED else (width, height)


def upright(image: Image.Image) -> Image.Image:
    """The picture as shown: turned or mirrored as its EXIF orientation says (decodes it)."""
    return ImageOps.exif_transpose(image) if orientation(image) != 1 else image


def is_wide(mode: str) -> bool:
    """More than 8 bits per pixel: rescaled from the image's own range."""
    return mode in WIDE


def to_gray8(image: Image.Image, name: str = "image") -> Image.Image:
    """``image`` (any supported mode) as 8-bit grayscale; DataError naming ``name`` and the mode otherwise."""
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in TRANSPARENT:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("L")
    if mode in CONVERTED:
        return image if mode == "L" else image.convert("L")
    if mode in WIDE:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    raise DataError(
        f"{name}: image mode {mode!r} is not supported (8- or 16-bit gray, colour, palette, or "
        "with alpha): convert it first"
    )
