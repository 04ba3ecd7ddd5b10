"""DICOM radiographs shown as a viewer shows them: modality LUT (rescale), VOI LUT or window, MONOCHROME1
inverted; then mapped onto 0-255 like every other wide image (btxrd.data.pixels.to_gray8)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from btxrd.data.dicom import is_dicom, open_radiograph
from btxrd.data.pixels import to_gray8
from btxrd.errors import DataError

from .helpers import write_dicom

RAMP = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))  # 12-bit values 0, 16, ..., 4080
WINDOW = {"WindowCenter": 2048, "WindowWidth": 1024}  # shows 1536-2560; darker is black, brighter white


def shown(path: Path) -> np.ndarray:
    """What a model reads of the file: the displayed picture as 8-bit gray."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom's warnings (e.g. a VOI LUT on float values) are failures
        return np.asarray(to_gray8(open_radiograph(path), str(path))).astype(int)


def voi_lut_item(table: np.ndarray, bits: int, first: int = 0) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(table), first, bits]
    item.LUTData = table.astype("<u2").tobytes()  # OW, one 16-bit word per entry
    return item


def test_the_window_chosen_by_the_modality_is_what_is_shown(tmp_path: Path) -> None:
    picture = shown(write_dicom(tmp_path / "w.dcm", RAMP, **WINDOW))[0]
    values = RAMP[0].astype(float)
    assert (picture[values < 1536] == 0).all() and (picture[values > 2560] == 255).all()
    inside = (values > 1600) & (values < 2500)
    expected = (values[inside] - 1536) / 1024 * 255  # linear inside the window
    assert np.abs(picture[inside] - expected).max() <= 2
    inverted = shown(write_dicom(tmp_path / "m1.dcm", RAMP, "MONOCHROME1", **WINDOW))[0]
    np.testing.assert_array_equal(inverted, 255 - picture)  # MONOCHROME1: the lowest value is white


def test_a_voi_lut_of_8_bit_entries_maps_every_12_bit_value(tmp_path: Path) -> None:
    """pydicom 3.0.2 kept the indices into such a table in 8 bits: every value above 255 wrapped round
    (0 for all of 512, 1024, ...), a scrambled picture. The table is applied here as the standard says."""
    table = np.rint(np.sqrt(np.arange(4096) / 4095) * 255).astype(np.uint16)  # a gamma-like display curve
    lut = Sequence([voi_lut_item(table, bits=8)])
    path = write_dicom(tmp_path / "lut.dcm", RAMP, RescaleSlope=1, RescaleIntercept=0, VOILUTSequence=lut)
    expected = table[RAMP[0]].astype(float)
    np.testing.assert_array_equal(np.asarray(open_radiograph(path))[0], expected)
    np.testing.assert_allclose(shown(path)[0], np.rint(expected * 255 / expected.max()), atol=1)
    # The VOI LUT is preferred to a window the file also holds (PS3.3 C.11.2: the display's choice)
    both = write_dicom(tmp_path / "both.dcm", RAMP, VOILUTSequence=lut, **WINDOW)
    np.testing.assert_array_equal(shown(both), shown(path))


def test_a_table_of_packed_8_bit_entries_is_read_and_a_short_one_named(tmp_path: Path) -> None:
    table = np.arange(4096, dtype=np.uint16) // 16  # 0-255
    packed = voi_lut_item(table, bits=8)
    packed.LUTData = table.astype(np.uint8).tobytes()  # one byte per entry, as some exports write them
    path = write_dicom(tmp_path / "packed.dcm", RAMP, VOILUTSequence=Sequence([packed]))
    np.testing.assert_array_equal(np.asarray(open_radiograph(path))[0], table[RAMP[0]])
    short = voi_lut_item(table[:1000], bits=16)
    short.LUTDescriptor = [4096, 0, 16]
    path = write_dicom(tmp_path / "short.dcm", RAMP, VOILUTSequence=Sequence([short]))
    with pytest.raises(DataError, match=r"short.dcm: its VOI LUT holds 1000 entries, its descriptor says 4096"):
        open_radiograph(path)


def test_values_outside_the_table_take_its_first_or_last_entry(tmp_path: Path) -> None:
    table = np.arange(100, 1124, dtype=np.uint16)  # 1024 entries from the value 1000 on
    path = write_dicom(tmp_path / "part.dcm", RAMP, VOILUTSequence=Sequence([voi_lut_item(table, 16, first=1000)]))
    displayed = np.asarray(open_radiograph(path))[0]
    values = RAMP[0].astype(int)
    np.testing.assert_array_equal(displayed, table[np.clip(values - 1000, 0, 1023)])
    assert (displayed[values < 1000] == 100).all() and (displayed[values >= 2023] == 1123).all()


def test_signed_pixels_are_rescaled_before_they_are_shown(tmp_path: Path) -> None:
    signed = (RAMP.astype(np.int32) - 2048).astype(np.int16)
    path = write_dicom(tmp_path / "s.dcm", signed, signed=True, RescaleSlope=2, RescaleIntercept=-100)
    np.testing.assert_array_equal(np.asarray(open_radiograph(path)), signed * 2.0 - 100)
    assert np.all(np.diff(shown(path)[0]) >= 0) and shown(path)[0, 0] == 0 and shown(path)[0, -1] == 255


def test_a_dicom_that_is_no_radiograph_is_named(tmp_path: Path) -> None:
    colour = write_dicom(tmp_path / "rgb.dcm", RAMP, "MONOCHROME2")
    assert is_dicom(colour) and not is_dicom(tmp_path / "missing.dcm")
    colour.write_bytes(colour.read_bytes().replace(b"MONOCHROME2", b"RGB        "))
    with pytest.raises(DataError, match=r"rgb.dcm: a RGB DICOM image of shape .*; a radiograph is one grayscale"):
        open_radiograph(colour)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    with pytest.raises(DataError, match=r"broken.dcm: unreadable DICOM"):
        open_radiograph(broken)
