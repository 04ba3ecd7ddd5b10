from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from btxrd.data.annotations import rasterise
from btxrd.data.cache import cache_images, letterbox
from btxrd.data.dataset import BTXRDImages, CropSettings, crop_window, lesions_in_input
from btxrd.data.reader import load_dataset

from .conftest import PROJECT_ROOT


def test_cached_image_equals_a_fresh_decode(synth_root: Path, tmp_path: Path) -> None:
    table = load_dataset(synth_root)
    cache = cache_images(table, 96, tmp_path)
    for i in (0, 50, len(table) - 1):  # includes a .jpg image
        with Image.open(table["path"].iat[i]) as img:
            w, h = img.size
            f = 96 / max(w, h)
            fresh = np.asarray(img.convert("L").resize((round(w * f), round(h * f)), Image.Resampling.BILINEAR))
        ox, oy = (int(v) for v in cache.offset[i])
        stored = cache.pixels[i, oy : oy + fresh.shape[0], ox : ox + fresh.shape[1]].astype(int)
        assert np.abs(stored - fresh).mean() < 3.0  # JPEG draft decoding differs only slightly
        assert cache.pixels[i].sum() == stored.sum()  # letterbox borders stay black


def test_lesion_boxes_land_on_the_same_pixels(synth_root: Path, tmp_path: Path) -> None:
    table = load_dataset(synth_root)
    tumours = table[table["label"] > 0].head(5).reset_index(drop=True)
    cache = cache_images(table, 128, tmp_path)
    boxes, masks = lesions_in_input(tumours, cache, 128)
    for i, row in tumours.iterrows():
        full = rasterise(row["boxes"], row["polygons"], (row["width"], row["height"]))
        canvas, scale, offset = letterbox(row["path"], 128)
        warped = np.asarray(Image.fromarray(full * 255).resize((round(row["width"] * scale[0]),
                                                                 round(row["height"] * scale[1]))))  # fmt: skip
        expected = np.zeros((128, 128), dtype=bool)
        ox, oy = int(offset[0]), int(offset[1])
        expected[oy : oy + warped.shape[0], ox : ox + warped.shape[1]] = warped > 127
        overlap = np.logical_and(expected, masks[i] > 0).sum() / np.logical_or(expected, masks[i] > 0).sum()
        assert overlap > 0.8
        x0, y0, x1, y1 = boxes[i][0]
        assert masks[i][int(y0) : int(y1) + 1, int(x0) : int(x1) + 1].sum() == masks[i].sum() or len(boxes[i]) > 1


def test_changed_image_invalidates_the_cache(synth_copy: Path, tmp_path: Path) -> None:
    table = load_dataset(synth_copy)
    first = cache_images(table, 64, tmp_path)
    path = Path(table["path"].iat[3])
    Image.new("L", (80, 100), 255).save(path, format="JPEG")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    second = cache_images(load_dataset(synth_copy), 64, tmp_path)
    assert second.path != first.path
    assert second.pixels[3].max() == 255 and first.pixels[3].max() < 255


def test_two_processes_build_the_cache_once(synth_root: Path, tmp_path: Path) -> None:
    script = (
        "import sys, logging; logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
        "from btxrd.data.reader import load_dataset; from btxrd.data.cache import cache_images;"
        f"c = cache_images(load_dataset({str(synth_root)!r}), 112, {str(tmp_path)!r}); print('rows', len(c.image_ids))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=PROJECT_ROOT) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all("rows 160" in out for out in outputs), outputs
    assert sum("building image cache" in out for out in outputs) == 1
    assert len(list(tmp_path.glob("*.npy"))) == 1


def test_lesion_crops_keep_the_lesion_and_share_the_scale_distribution() -> None:
    crop = CropSettings(min_scale=0.6, max_scale=1.0)
    lesion = (50.0, 60.0, 70.0, 75.0)
    for seed in range(500):
        left, top, side = crop_window(np.random.default_rng(seed), 100, crop, lesion)
        assert left <= 50 and top <= 60 and left + side >= 70 and top + side >= 75  # lesion inside
        assert 0 <= left <= 100 - side and 0 <= top <= 100 - side
        _, _, side_normal = crop_window(np.random.default_rng(seed), 100, crop, None)
        assert side == side_normal  # same scale draw with or without a lesion
    big = (5.0, 5.0, 95.0, 95.0)  # larger than the crop: centred on it
    left, top, side = crop_window(np.random.default_rng(0), 100, CropSettings(0.5, 0.5), big)
    assert (left, top, side) == (25, 25, 50)


def test_evaluation_items_never_carry_annotations(synth_root: Path, tmp_path: Path) -> None:
    table = load_dataset(synth_root)
    cache = cache_images(table, 74, tmp_path)
    evaluation = BTXRDImages(table, cache, 64, train=False, lesion_crops=True, with_masks=True)
    assert not evaluation.use_annotations and all(b == () for b in evaluation.boxes)
    tumour = int(np.flatnonzero(table["label"].to_numpy() > 0)[0])
    image, _, mask, has_mask, _ = evaluation[tumour]
    assert image.shape == (1, 64, 64) and image.dtype == torch.uint8
    assert not has_mask and mask.sum() == 0
    training = BTXRDImages(table, cache, 64, train=True, lesion_crops=True, with_masks=True)
    assert training[tumour][3] and training[tumour][2].sum() > 0
