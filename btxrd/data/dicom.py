"""DICOM radiographs (hospitals store them so) as pictures, the way a DICOM viewer shows them.

pydicom decodes the pixel data; then, as the standard's display pipeline does: the modality LUT
(rescale slope and intercept, or a LUT), the VOI LUT (preferred) or window (the grey range the
modality chose to show), and MONOCHROME1 inverted (in it, the lowest value is white). The result is
a float picture (Pillow mode F) that ``to_gray8`` maps onto 0-255 by its own range.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from btxrd.data.limits import DEFAULT_LIMITS, InputLimits, image_from_bytes
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


def read_dicom(path: str | Path, limits: InputLimits = DEFAULT_LIMITS, data: bytes | None = None) -> Image.Image:
    """The displayed picture of a single-frame grayscale DICOM image (mode F); DataError naming the file else.
    ``data``: the file's bytes, when they are read already."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(io.BytesIO(limits.read(path) if data is None else data))
        frames, samples = int(dataset.get("NumberOfFrames", 1) or 1), int(dataset.get("SamplesPerPixel", 1) or 1)
        rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
        if frames != 1 or samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):  # before decoding
            shape = (frames, rows, columns, samples) if frames != 1 else (rows, columns, samples)
            raise DataError(
                f"{path}: a {photometric} DICOM image of shape {shape}; a radiograph is one grayscale frame"
            )
        limits.check_pixels(columns, rows, str(path))
        pixels = dataset.pixel_array
        if pixels.ndim != 2:
            raise DataError(f"{path}: a DICOM image of shape {pixels.shape}; a radiograph is one grayscale frame")
        modality = apply_modality_lut(pixels, dataset)
    except DataError:
        raise
    except Exception as exc:  # pydicom and numpy raise many types for broken, unsupported or absurd files
        raise DataError(f"{path}: unreadable DICOM ({type(exc).__name__}: {str(exc)[:200]})") from None
    try:
        if dataset.get("VOILUTSequence"):
            values = voi_lut(modality, dataset.VOILUTSequence[0], dataset.original_encoding[1] is not False)
        else:
            values = apply_voi_lut(modality, dataset)  # window centre and width, when there are
    except (ValueError, TypeError, AttributeError, IndexError) as exc:  # a table that does not fit its descriptor
        raise DataError(f"{path}: {exc}") from None
    values = np.asarray(values, dtype=np.float32)
    if photometric == "MONOCHROME1":
        values = values.max() - values
    return Image.fromarray(values)  # float32: mode F


def voi_lut(values: np.ndarray, item: Any, little_endian: bool = True) -> np.ndarray:
    """A VOI LUT (an item of the VOI LUT Sequence) applied to modality values: values below the first
    mapped one take the first entry, values beyond the table its last.

    Written here because pydicom 3.0.2's ``apply_voi`` holds the table's input indices in the table's
    output type: with 8 bits per entry (descriptor ``[4096, 0, 8]``, a 12-bit radiograph shown in 8
    bits) every value above 255 wraps around, and the picture comes out scrambled (tested). It also
    warns on the float values a rescale gives; here they are rounded to the nearest entry.
    """
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 2**16  # 0 means 65536 entries
    data = item.LUTData
    if isinstance(data, bytes) and bits == 8 and len(data) == entries:  # 8-bit entries packed one per byte
        table = np.frombuffer(data, dtype=np.uint8)
    elif isinstance(data, bytes):  # OW: one 16-bit word per entry, in the file's byte order
        table = np.frombuffer(data, dtype="<u2" if little_endian else ">u2", count=min(entries, len(data) // 2))
    else:  # US: already numbers
        table = np.asarray(data, dtype=np.int64).reshape(-1)[:entries]
    if len(table) != entries:
        raise ValueError(f"its VOI LUT holds {len(table)} entries, its descriptor says {entries}")
    index = np.clip(np.rint(values).astype(np.int64) - first, 0, entries - 1)
    return table[index]


def is_dicom_data(data: bytes) -> bool:
    """Whether a file's bytes are DICOM (the 'DICM' marker after the preamble)."""
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def open_radiograph(path: str | Path, limits: InputLimits = DEFAULT_LIMITS) -> Image.Image:
    """Any radiograph file: DICOM by its content, every other format through Pillow (JPEG, PNG, ...). A
    regular file within ``limits`` (size, declared pixels), or DataError naming it."""
    try:
        data = limits.read(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if is_dicom_data(data):
        return read_dicom(path, limits, data)
    try:
        return image_from_bytes(data, str(path), limits)
    except (OSError, ValueError) as exc:  # Pillow: UnidentifiedImageError (an OSError), truncated files
        raise DataError(f"{path}: not an image Pillow or pydicom can read ({exc})") from None
