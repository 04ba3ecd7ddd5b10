from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from btxrd.data import cache as cache_module
from btxrd.data.annotations import rasterise
from btxrd.data.cache import Preprocess, cache_for, cache_images, lesions_in_input, letterbox
from btxrd.data.dataset import BTXRDImages, CropSettings, crop_window
from btxrd.data.reader import inspect_dataset, load_dataset

from .helpers import run_python_at_once, settings


@pytest.mark.parametrize("source_size", [None, 144], ids=["decoded", "resized-from-source"])
def test_cached_image_equals_a_fresh_decode(synth_root: Path, tmp_path: Path, source_size: int | None) -> None:
    table = load_dataset(synth_root)
    cache = cache_images(table, 96, tmp_path, source_size=source_size)
    for i in (0, 50, len(table) - 1):  # includes a .jpg image
        with Image.open(table["path"].iat[i]) as img:
            w, h = img.size
            f = 96 / max(w, h)
            fresh = np.asarray(img.convert("L").resize((round(w * f), round(h * f)), Image.Resampling.BILINEAR))
        ox, oy = (int(v) for v in cache.offset[i])
        stored = cache.pixels[i, oy : oy + fresh.shape[0], ox : ox + fresh.shape[1]].astype(int)
        assert tuple(cache.extent[i]) == (fresh.shape[1], fresh.shape[0])
        assert np.abs(stored - fresh).mean() < 3.0  # JPEG draft decoding differs only slightly
        assert cache.pixels[i].sum() == stored.sum()  # letterbox borders stay black


@pytest.mark.parametrize("source_size", [None, 192], ids=["decoded", "resized-from-source"])
def test_lesion_boxes_land_on_the_same_pixels(synth_root: Path, tmp_path: Path, source_size: int | None) -> None:
    table = load_dataset(synth_root)
    tumours = table[table["label"] > 0].head(5).reset_index(drop=True)
    cache = cache_images(table, 128, tmp_path, source_size=source_size)
    boxes, masks = lesions_in_input(tumours, cache, 128)
    for i, row in tumours.iterrows():
        full = rasterise(row["boxes"], row["polygons"], (row["width"], row["height"]))
        canvas, scale, offset, _ = letterbox(row["path"], 128)
        warped = np.asarray(
            Image.fromarray(full * 255).resize((round(row["width"] * scale[0]), round(row["height"] * scale[1])))
        )
        expected = np.zeros((128, 128), dtype=bool)
        ox, oy = int(offset[0]), int(offset[1])
        expected[oy : oy + warped.shape[0], ox : ox + warped.shape[1]] = warped > 127
        overlap = np.logical_and(expected, masks[i] > 0).sum() / np.logical_or(expected, masks[i] > 0).sum()
        assert overlap > 0.8
        x0, y0, x1, y1 = boxes[i][0]
        assert masks[i][int(y0) : int(y1) + 1, int(x0) : int(x1) + 1].sum() == masks[i].sum() or len(boxes[i]) > 1


def test_changed_image_invalidates_the_cache(synth_copy: Path, tmp_path: Path) -> None:
    table = load_dataset(synth_copy)
    first = cache_images(table, 64, tmp_path, source_size=512)
    path = Path(table["path"].iat[3])
    Image.new("L", (80, 100), 255).save(path, format="JPEG")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    second = cache_images(load_dataset(synth_copy), 64, tmp_path, source_size=512)
    assert second.path != first.path
    assert second.pixels[3].max() == 255 and first.pixels[3].max() < 255


@pytest.mark.slow
def test_two_processes_build_the_cache_once(synth_root: Path, tmp_path: Path) -> None:
    outputs = run_python_at_once(
        "from btxrd.data.reader import load_dataset; from btxrd.data.cache import cache_images;"
        f"c = cache_images(load_dataset({str(synth_root)!r}), 112, {str(tmp_path)!r}, source_size=512);"
        "print('rows', len(c.image_ids))"
    )
    assert all("rows 160" in out for out in outputs), outputs
    # Two files (the decoded source and the 112 px canvas resized from it), each built once.
    assert sum(out.count("building image cache") for out in outputs) == 2
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_a_sweep_over_input_sizes_decodes_each_image_once(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = load_dataset(synth_root)
    decoded = []
    real_letterbox = cache_module.letterbox
    monkeypatch.setattr(cache_module, "letterbox", lambda path, *a: decoded.append(path) or real_letterbox(path, *a))
    caches = [cache_images(table, size, tmp_path, source_size=160) for size in (74, 96, 128, 96)]
    assert len(decoded) == len(table) and set(decoded) == set(table["path"])
    assert [c.size for c in caches] == [74, 96, 128, 96] and caches[1].path == caches[3].path
    assert all("_from160" in c.path.name for c in caches)
    cache_images(table, 192, tmp_path, source_size=160)  # larger than the source: decoded at its own size
    assert len(decoded) == 2 * len(table)


def test_clahe_is_applied_once_to_the_image_not_the_border(synth_root: Path, tmp_path: Path) -> None:
    import cv2

    table = load_dataset(synth_root)
    plain = cache_images(table, 128, tmp_path, source_size=None)
    enhanced = cache_images(table, 128, tmp_path, Preprocess("clahe", clip_limit=3.0, tiles=4), source_size=None)
    assert enhanced.path != plain.path and "clahe3x4" in enhanced.path.name
    for i in (0, 7):
        canvas, scale, offset, (w, h) = letterbox(table["path"].iat[i], 128)
        ox, oy = int(offset[0]), int(offset[1])
        region = canvas[oy : oy + h, ox : ox + w]
        expected = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(region)
        assert np.array_equal(enhanced.pixels[i, oy : oy + h, ox : ox + w], expected)
        assert enhanced.pixels[i].sum() == expected.astype(int).sum()  # the black border is left alone
    assert enhanced.pixels[:20].std() > plain.pixels[:20].std()


def test_preprocessing_comes_from_the_data_config(synth_root: Path, tmp_path: Path) -> None:
    data = settings([f"data.cache_dir={tmp_path}", "data.preprocess=clahe", "data.clahe.tiles=2"]).data
    cache = cache_for(load_dataset(synth_root), 64, data, workers=1)
    assert cache.size == round(64 * data.canvas_scale)
    assert cache.path.name.endswith(f"_clahe2x2_from{data.cache_source_size}.npy")


def test_lesion_crops_keep_the_lesion_and_share_the_scale_distribution() -> None:
    crop = CropSettings(min_scale=0.6, max_scale=1.0, hflip=True)
    lesion = (50.0, 60.0, 70.0, 75.0)
    for seed in range(500):
        left, top, side = crop_window(np.random.default_rng(seed), 100, crop, lesion)
        assert left <= 50 and top <= 60 and left + side >= 70 and top + side >= 75  # lesion inside
        assert 0 <= left <= 100 - side and 0 <= top <= 100 - side
        _, _, side_normal = crop_window(np.random.default_rng(seed), 100, crop, None)
        assert side == side_normal  # same scale draw with or without a lesion
    big = (5.0, 5.0, 95.0, 95.0)  # larger than the crop: centred on it
    left, top, side = crop_window(np.random.default_rng(0), 100, CropSettings(0.5, 0.5, True), big)
    assert (left, top, side) == (25, 25, 50)


def test_evaluation_items_never_carry_annotations(synth_root: Path, tmp_path: Path) -> None:
    table = load_dataset(synth_root)
    cache = cache_images(table, 74, tmp_path, source_size=None)
    evaluation = BTXRDImages(table, cache, 64, train=False, lesion_crops=True, with_masks=True)
    assert not evaluation.use_annotations and all(b == () for b in evaluation.boxes)
    tumour = int(np.flatnonzero(table["label"].to_numpy() > 0)[0])
    image, _, mask, has_mask, _ = evaluation[tumour]
    assert image.shape == (1, 64, 64) and image.dtype == torch.uint8
    assert not has_mask and mask.sum() == 0
    training = BTXRDImages(
        table, cache, 64, train=True, crop=CropSettings(0.7, 1.0, True), lesion_crops=True, with_masks=True
    )
    assert training[tumour][3] and training[tumour][2].sum() > 0


def test_an_image_stored_rotated_is_read_upright_as_its_annotation_was_drawn(synth_copy: Path, tmp_path: Path) -> None:
    """EXIF orientation 6: the pixels are stored turned a quarter and the file says to show them turned
    back, as viewers do and as LabelMe did when the lesion was drawn. The probe, the cache and so the
    lesion masks take the same upright picture."""
    table = load_dataset(synth_copy)
    row = table[(table["label"] > 0) & (table["width"] != table["height"])].iloc[0]
    before = cache_images(table, 128, tmp_path / "before", source_size=None)
    path = Path(row["path"])
    with Image.open(path) as img:
        shown = img.convert("L")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    shown.transpose(Image.Transpose.ROTATE_90).save(path, format="JPEG", quality=95, exif=exif.tobytes())

    inspection = inspect_dataset(synth_copy)
    probed = inspection.table.set_index("image_id").loc[row["image_id"]]
    assert (probed["width"], probed["height"], probed["orientation"]) == (row["width"], row["height"], 6)
    messages = [p.message for p in inspection.problems]
    assert any("1 image(s) stored rotated or mirrored" in m and row["image_id"] in m for m in messages), messages
    assert not any("imageWidth" in m for m in messages)  # its annotation fits the upright size: nothing rescaled
    after = cache_images(inspection.table, 128, tmp_path / "after", source_size=None)
    i = before.row_of()[row["image_id"]]
    np.testing.assert_array_equal(after.extent[i], before.extent[i])
    np.testing.assert_allclose(after.scale[i], before.scale[i])
    assert np.abs(after.pixels[i].astype(int) - before.pixels[i].astype(int)).mean() < 2  # recompressed only
