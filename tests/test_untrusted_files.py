"""Every input file is untrusted: what a hostile or broken dataset holds is named, skipped or refused,
never a hang, a traceback, a read out of the dataset or a silent guess."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from btxrd.data.annotations import rasterise, read_annotation
from btxrd.data.dicom import open_radiograph
from btxrd.data.limits import InputLimits
from btxrd.data.reader import inspect_dataset, load_dataset
from btxrd.errors import ConfigError, DataError
from btxrd.jobs.train import train_job

from .helpers import compose_config, runs, settings, tiny


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A PNG of a few hundred bytes that declares ``side`` x ``side`` pixels (900 million: a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit gray
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def _image(root: Path, index: int) -> Path:
    return sorted((root / "images").iterdir())[index]


def _problems(root: Path, **kwargs) -> str:
    return "\n".join(str(p) for p in inspect_dataset(root, **kwargs).problems)


def test_the_limits_default_to_the_data_settings() -> None:
    assert InputLimits() == InputLimits.of(settings([]).data)


def test_a_decompression_bomb_is_a_named_bad_image_that_skip_skips(synth_copy: Path) -> None:
    bomb = bomb_png(_image(synth_copy, 2))  # before: Pillow's DecompressionBombError traceback, and skip did not skip
    with pytest.raises(DataError, match=rf"{bomb.name} \(declares 900,000,000 pixels, over the limit of 64,000,000 "):
        load_dataset(synth_copy)
    table = load_dataset(synth_copy, on_bad_image="skip")
    assert bomb.name not in set(table["image_id"]) and len(table) == 159
    with pytest.raises(DataError, match="over the limit of 100 pixels"):  # the limit is a setting
        open_radiograph(_image(synth_copy, 0), InputLimits(max_image_pixels=100))


def test_a_fifo_or_a_device_named_as_an_image_is_refused_without_reading(synth_copy: Path) -> None:
    fifo = _image(synth_copy, 3)
    fifo.unlink()
    os.mkfifo(fifo)  # before: check and training blocked on open() for ever
    zero = _image(synth_copy, 4)
    zero.unlink()
    zero.symlink_to("/dev/zero")  # before: read until memory ran out
    problems = _problems(synth_copy, limits=InputLimits(allow_links_outside_root=True))
    assert f"{fifo.name} (a FIFO, not a regular file: not read)" in problems
    assert f"{zero.name} (a character device, not a regular file: not read)" in problems


def test_links_out_of_the_dataset_are_named_unless_allowed(synth_copy: Path, tmp_path: Path) -> None:
    linked = _image(synth_copy, 5)
    outside = tmp_path / "elsewhere.jpeg"
    outside.write_bytes(linked.read_bytes())
    linked.unlink()
    linked.symlink_to(outside)
    assert f"{linked.name} (a link to a file outside {synth_copy / 'images'}" in _problems(synth_copy)
    allowed = inspect_dataset(synth_copy, limits=InputLimits(allow_links_outside_root=True))
    assert allowed.usable
    # images/ itself may be a link to another disk: its files are inside it
    (tmp_path / "disk").mkdir()
    (synth_copy / "images").rename(tmp_path / "disk" / "images")
    (synth_copy / "images").symlink_to(tmp_path / "disk" / "images")
    linked.unlink()
    linked.write_bytes(outside.read_bytes())
    assert inspect_dataset(synth_copy).usable


@pytest.mark.parametrize("image_id", ["../../secret.jpeg", "/etc/passwd", "sub/IMG000001.jpeg", ".."])
def test_an_image_id_that_is_a_path_is_refused(synth_copy: Path, image_id: str) -> None:
    sheet = pd.read_excel(synth_copy / "dataset.xlsx")
    sheet.loc[3, "image_id"] = image_id
    sheet.to_excel(synth_copy / "dataset.xlsx", index=False)
    expected = rf"image_id must be a file name in images/, not a path: '{image_id}' \(row 5\)"
    with pytest.raises(DataError, match=expected):
        load_dataset(synth_copy)


@pytest.mark.parametrize("second", ["malignant", "malignant ", " Malignant".lower()])
def test_a_label_column_given_twice_is_named(synth_copy: Path, second: str) -> None:
    """Before: 'malignant' twice was half-ignored silently, 'malignant ' ended in a pandas TypeError."""
    sheet = pd.read_excel(synth_copy / "dataset.xlsx")
    sheet.insert(len(sheet.columns), "extra", 0)
    sheet = sheet.rename(columns={"extra": second})
    sheet.to_excel(synth_copy / "dataset.xlsx", index=False)
    with pytest.raises(DataError, match=r"column 'malignant' appears twice \(columns [A-Z]+ and AL\); keep one"):
        load_dataset(synth_copy)


def test_header_spaces_are_normalised(synth_copy: Path) -> None:
    sheet = pd.read_excel(synth_copy / "dataset.xlsx").rename(columns={"hip bone": "  hip   bone "})
    sheet.to_excel(synth_copy / "dataset.xlsx", index=False)
    assert len(load_dataset(synth_copy)) == 160


def _annotation_with(root: Path, points: list) -> Path:
    path = sorted((root / "Annotations").glob("*.json"))[0]
    doc = json.loads(path.read_text())
    doc["shapes"].append({"label": "osteosarcoma", "points": points, "shape_type": "polygon"})
    path.write_text(json.dumps(doc))  # json writes NaN and Infinity as JavaScript does
    return path


def test_a_point_that_is_not_a_finite_number_drops_its_shape_and_check_names_it(synth_copy: Path) -> None:
    path = _annotation_with(synth_copy, [[10, 10], [math.nan, 20], [30, 30]])
    _annotation_with(synth_copy, [[10, 10], [20, math.inf], [30, 30]])
    assert read_annotation(path).n_dropped_shapes == 2
    problems = _problems(synth_copy)  # before: "no problems found", then a crash mid-epoch naming no file
    assert (
        f"dropped the lesion shapes whose coordinates are not finite numbers (NaN, Infinity) in 1 annotation "
        f"file(s): {path.name} (2)" in problems
    )
    table = load_dataset(synth_copy)
    row = table[table["annotation_path"] == str(path)].iloc[0]
    assert all(math.isfinite(v) for polygon in row["polygons"] for point in polygon for v in point)
    assert rasterise(row["boxes"], row["polygons"], (64, 64), (0.1, 0.1)).any()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"imageWidth": 0}, "image size 0 x"),
        ({"imageHeight": math.inf}, "OverflowError"),
        ({"shapes": [{"points": [["a", 1], [2, 3]], "shape_type": "rectangle"}]}, "ValueError"),
    ],
)
def test_absurd_annotation_files_are_malformed_and_named(synth_copy: Path, change: dict, message: str) -> None:
    path = sorted((synth_copy / "Annotations").glob("*.json"))[1]
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(DataError, match=rf"malformed annotation file .*{path.name}: .*{message}"):
        load_dataset(synth_copy)


def test_a_file_over_the_size_limit_is_named(synth_copy: Path) -> None:
    limits = InputLimits(max_file_mb=0.001)
    assert "bytes, over the limit of 1,048 bytes (data.max_file_mb)" in _problems(synth_copy, limits=limits)


def test_an_empty_root_is_refused_not_read_as_the_working_folder(synth_copy: Path, monkeypatch) -> None:
    monkeypatch.chdir(synth_copy)  # a release right here: before, data.root= read it silently
    assert _problems("") == "error: the dataset root is empty (set data.root)"


@pytest.mark.slow
def test_check_lists_hostile_files_without_a_hang_or_a_traceback_and_survives_a_closed_pipe(synth_copy: Path) -> None:
    bomb_png(_image(synth_copy, 2))
    fifo = _image(synth_copy, 3)
    fifo.unlink()
    os.mkfifo(fifo)
    _annotation_with(synth_copy, [[10, 10], [math.nan, 20], [30, 30]])
    done = subprocess.run(
        [sys.executable, "-m", "btxrd.data", "check", str(synth_copy)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "error: 2 image(s) missing or unreadable" in done.stdout and "a FIFO" in done.stdout
    assert "declares 900,000,000 pixels" in done.stdout and "not finite numbers" in done.stdout
    assert "usable: NO" in done.stdout
    # `check ... | head`: the reader stops early; before, a BrokenPipeError traceback
    piped = subprocess.run(
        f"{sys.executable} -m btxrd.data check --json {synth_copy} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.stdout == "{\n" and piped.stderr == "", piped.stderr


@pytest.mark.slow
def test_training_with_annotations_on_skips_and_drops_what_it_cannot_trust(synth_copy: Path, tmp_path: Path) -> None:
    """A bomb, a FIFO and a NaN lesion point in one dataset: with on_bad_image=skip the run trains on the
    rest and finishes (before: a traceback naming no file, or a hang leaving the run RUNNING)."""
    bomb_png(_image(synth_copy, 2))
    fifo = _image(synth_copy, 3)
    fifo.unlink()
    os.mkfifo(fifo)
    _annotation_with(synth_copy, [[10, 10], [math.nan, 20], [30, 30]])
    train_job(
        compose_config(
            tiny(synth_copy, tmp_path / "work", "annotations=on", "data.on_bad_image=skip", "model.image_size=32")
        )
    )
    [run] = runs(tmp_path / "work")
    assert run.info.status == "FINISHED"
    n = sum(int(run.data.params[f"data.n_{part}"]) for part in ("train", "val", "test"))
    assert n + int(run.data.params["data.n_unused"]) == 158
    assert np.isfinite(run.data.metrics["train_loss"])


# ------------------------------------------------------------------------- checkpoints


def _checkpoint(path: Path, synth_root: Path, *overrides: str, weights_of: str | None = None) -> Path:
    """A checkpoint as training writes one: the weights of ``weights_of`` (default: the config's model)."""
    from btxrd.config import to_dict
    from btxrd.engine import save_checkpoint
    from btxrd.models import build_model

    cfg = compose_config(["debug=tiny", f"data.root={synth_root}", *overrides])
    trained = settings(["debug=tiny", f"model={weights_of}"] if weights_of else ["debug=tiny", *overrides])
    return save_checkpoint({"model": build_model(trained.model).state_dict(), "config": to_dict(cfg)}, path)


def test_a_checkpoint_that_would_not_fit_in_memory_is_refused_before_the_cache(
    synth_root: Path, tmp_path: Path
) -> None:
    """Before: a config saying image_size=4096 built a 2.7 GB cache, grew to 24 GB until the OOM killer
    ended it, and left its run RUNNING."""
    from btxrd.jobs.evaluate import evaluate_job

    checkpoint = _checkpoint(
        tmp_path / "best.pt",
        synth_root,
        "model=resnet50_cbam",
        "model.image_size=4096",
        "data.cache_dir=" + str(tmp_path / "cache"),
    )
    cfg = compose_config([f"checkpoint={checkpoint}", f"paths.root={tmp_path}"], "evaluate")
    with pytest.raises(
        ConfigError,
        match=r"^scoring batches of 64 images at model.image_size=4096 needs about "
        r"[\d.]+ GiB of memory on cpu \(estimated\), [\d.]+ GiB are available: "
        r"not even one image fits",
    ):
        evaluate_job(cfg)
    assert not (tmp_path / "cache").exists()
    [run] = runs(tmp_path)
    assert run.info.status == "FAILED" and "needs about" in run.data.tags["error"]


@pytest.mark.parametrize(
    ("overrides", "weights_of", "message"),
    [
        (["model=resnet50_cbam"], "b0", r"443 missing, 355 unexpected, 4 of another shape, e.g. bn1.weight: \(32,\) "),
        (
            ["model.num_classes=5"],
            None,
            r"0 missing, 0 unexpected, 2 of another shape, e.g. classifier.weight: \(3, 1280",
        ),
    ],
)
def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_one_line(
    synth_root: Path, tmp_path: Path, overrides, weights_of, message
) -> None:
    from btxrd.jobs.evaluate import evaluate_job

    checkpoint = _checkpoint(tmp_path / "best.pt", synth_root, *overrides, weights_of=weights_of)
    if weights_of is None:  # trained with 3 classes, the config altered afterwards
        state = torch.load(checkpoint, weights_only=True)
        state["model"] = torch.load(_checkpoint(tmp_path / "b0.pt", synth_root), weights_only=True)["model"]
        torch.save(state, checkpoint)
    cfg = compose_config([f"checkpoint={checkpoint}", "tracking.enabled=false", f"paths.root={tmp_path}"], "evaluate")
    with pytest.raises(
        DataError,
        match=rf"best.pt \(model.name=\w+\): its weights do not fit the model its config "
        rf"names \({message}",
    ):
        evaluate_job(cfg)


@pytest.mark.parametrize(
    ("content", "name"), [("[" * 200_000, "RecursionError"), ('{"imageWidth": ' + "9" * 5000 + "}", "ValueError")]
)
def test_an_annotation_file_nested_too_deep_or_with_a_huge_number_is_malformed(
    tmp_path: Path, content: str, name: str
) -> None:
    path = tmp_path / "a.json"
    path.write_text(content)
    with pytest.raises(DataError, match=rf"^malformed annotation file .*a.json: {name}"):
        read_annotation(path)


def test_a_dicom_of_many_frames_is_refused_before_decoding_and_absurd_tags_are_named(
    tmp_path: Path, monkeypatch
) -> None:
    import pydicom

    from btxrd.data.dicom import open_radiograph

    from .helpers import write_dicom

    ramp = np.tile(np.arange(64, dtype=np.uint16) * 64, (32, 1))
    frames = write_dicom(tmp_path / "frames.dcm", np.concatenate([ramp] * 50), NumberOfFrames=50, Rows=32)
    decoded = []
    monkeypatch.setattr(pydicom.FileDataset, "pixel_array", property(lambda ds: decoded.append(1)))
    with pytest.raises(DataError, match=r"frames.dcm: a MONOCHROME2 DICOM image of shape \(50, 32, 64, 1\)"):
        open_radiograph(frames)
    assert decoded == []
    monkeypatch.undo()
    slope = write_dicom(tmp_path / "slope.dcm", ramp, RescaleSlope="1.5", RescaleIntercept="0")
    slope.write_bytes(slope.read_bytes().replace(b"1.5 ", b"x.yz"))  # as a broken export writes it
    with pytest.raises(DataError, match=r"slope.dcm: unreadable DICOM"):
        open_radiograph(slope)


def test_a_sheet_out_of_the_dataset_or_expanding_beyond_the_limit_is_refused(synth_copy: Path, tmp_path: Path) -> None:
    import zipfile

    sheet = synth_copy / "dataset.xlsx"
    elsewhere = tmp_path / "elsewhere.xlsx"
    sheet.rename(elsewhere)
    sheet.symlink_to(elsewhere)
    with pytest.raises(DataError, match=r"dataset.xlsx: a link to a file outside"):
        load_dataset(synth_copy)
    sheet.unlink()
    with zipfile.ZipFile(sheet, "w", zipfile.ZIP_DEFLATED) as bomb:  # 64 MB of zeros in a few kilobytes
        bomb.writestr("xl/worksheets/sheet1.xml", b"\0" * 64 * 2**20)
    assert sheet.stat().st_size < 2**20
    with pytest.raises(DataError, match=r"dataset.xlsx: expands to 64 MB, over the limit of 1 MB"):
        load_dataset(synth_copy, limits=InputLimits(max_file_mb=1))


def test_a_pixel_limit_raised_above_pillows_own_is_the_one_that_counts(tmp_path: Path) -> None:
    bomb = bomb_png(tmp_path / "big.png", side=15_000)  # 225 million: over Pillow's default guard (179 million)
    assert open_radiograph(bomb, InputLimits(max_image_pixels=300_000_000)).size == (15_000, 15_000)
    with pytest.raises(DataError, match="declares 15000 x 15000 px, over the limit of 200,000,000"):
        open_radiograph(bomb, InputLimits(max_image_pixels=200_000_000))
