"""DICOM radiographs (hospitals store them so) as pictures, the way a DICOM viewer shows them.

pydicom decodes the pixel data; then, as the standard's display pipeline does: the modality LUT
(rescale slope and intercept, or a LUT), the VOI LUT or window (the grey range the modality chose
to show), and MONOCHROME1 inverted (in it, the lowest value is white). The result is a float
picture (Pillow mode F) that ``to_gray8`` maps onto 0-255 by its own range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from btxrd.errors import DataError

DICOM_MAGIC_OFFSET = 128  # a DICOM file: 128-byte preamble, then b"DICM"


def is_dicom(path: str | Path) -> bool:
    """By content, as Pillow opens other formats: the 'DICM' marker after the preamble."""
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | Path) -> Image.Image:
    """The displayed picture of a single-frame grayscale DICOM image (mode F); DataError naming the file else."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except Exception as exc:  # pydicom raises many types for broken or unsupported files
        raise DataError(f"{path}: unreadable DICOM ({type(exc).__name__}: {exc})") from None
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or pixels.ndim != 2:
        raise DataError(f"{path}: a {photometric} DICOM image of shape {pixels.shape}; "
                        "a radiograph is one grayscale frame")  # fmt: skip
    values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset).astype(np.float32)
    if photometric == "MONOCHROME1":
        values = values.max() - values
    return Image.fromarray(values)  # float32: mode F


def open_radiograph(path: str | Path) -> Image.Image:
    """Any radiograph file: DICOM by its content, every other format through Pillow (JPEG, PNG, ...)."""
    if is_dicom(path):
        return read_dicom(path)
    try:
        return Image.open(path)
    except (OSError, ValueError) as exc:  # Pillow: UnidentifiedImageError (an OSError), truncated files
        raise DataError(f"{path}: not an image Pillow or pydicom can read ({exc})") from None
