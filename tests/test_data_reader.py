from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from btxrd.data.annotations import rasterise, read_annotation
from btxrd.data.reader import inspect_dataset, load_dataset
from btxrd.data.schema import SHEET_COLUMNS
from btxrd.errors import DataError

from .helpers import run_python_at_once


def test_reads_every_row_with_labels_and_shapes(synth_root: Path) -> None:
    table = load_dataset(synth_root)
    sheet = pd.read_excel(synth_root / "dataset.xlsx")
    assert len(table) == len(sheet) == 160
    expected = (sheet["benign"] + 2 * sheet["malignant"]).to_numpy()
    np.testing.assert_array_equal(table["label"].to_numpy(), expected)
    # Tumour images carry lesions, normal images none; no annotation file for normals.
    tumour = table["label"] > 0
    assert (table.loc[tumour, "n_lesions"] >= 1).all()
    assert (table.loc[~tumour, "n_lesions"] == 0).all()
    assert (table.loc[~tumour, "annotation_path"] == "").all()
    # The .jpg quirk of the release: centre-3 normal images come last and end in .jpg.
    jpg = table["image_id"].str.endswith(".jpg")
    assert jpg.any() and (table.loc[jpg, "label"] == 0).all() and (table.loc[jpg, "center"] == 3).all()
    assert all(Path(p).is_file() for p in table["path"])
    row = table[tumour].iloc[0]
    assert row["subtype"] and row["site"] and row["region"] and row["view"]
    for x0, y0, x1, y1 in row["boxes"]:
        assert 0 <= x0 < x1 <= row["width"] and 0 <= y0 < y1 <= row["height"]


def test_masks_rasterise_at_any_size(synth_root: Path) -> None:
    table = load_dataset(synth_root)
    row = table[table["label"] > 0].iloc[0]
    full = rasterise(row["boxes"], row["polygons"], (row["width"], row["height"]))
    small = rasterise(row["boxes"], row["polygons"], (96, 96), scale=(96 / row["width"], 96 / row["height"]))
    assert full.shape == (row["height"], row["width"]) and small.shape == (96, 96)
    assert 0 < small.mean() < 0.5
    # The polygon lies inside its rectangle, and the mask fraction is preserved by scaling.
    x0, y0, x1, y1 = (int(v) for v in row["boxes"][0])
    assert full[y0 : y1 + 1, x0 : x1 + 1].sum() == pytest.approx(full.sum(), rel=0.02)
    assert small.mean() == pytest.approx(full.mean(), rel=0.2)
    boxes_only = rasterise(row["boxes"], row["polygons"], (row["width"], row["height"]), use="boxes")
    assert boxes_only.sum() >= full.sum()


def test_annotation_with_more_boxes_than_polygons(tmp_path: Path) -> None:
    doc = {
        "version": "5.4.1",
        "flags": {},
        "imagePath": "x.jpeg",
        "imageData": None,
        "imageHeight": 100,
        "imageWidth": 100,
        "shapes": [
            {"label": "osteochondroma", "points": [[10, 10], [30, 30]], "shape_type": "rectangle"},
            {"label": "osteochondroma", "points": [[60, 60], [90, 95]], "shape_type": "rectangle"},
            {"label": "osteochondroma", "points": [[12, 12], [28, 12], [20, 28]], "shape_type": "polygon"},
        ],
    }
    path = tmp_path / "a.json"
    path.write_bytes(json.dumps(doc, indent=2).replace("\n", "\r\n").encode())
    ann = read_annotation(path)
    assert ann.n_lesions == 2 and len(ann.boxes) == 2 and len(ann.polygons) == 1
    mask = rasterise(ann.boxes, ann.polygons, (100, 100))
    assert mask[70, 70] == 1  # the box-only lesion is covered
    assert mask[25, 12] == 0  # the first lesion uses its polygon, not its box


def test_points_outside_the_image_are_clipped_with_a_warning(synth_copy: Path, caplog) -> None:
    ann_path = sorted((synth_copy / "Annotations").glob("*.json"))[0]
    doc = json.loads(ann_path.read_text())
    doc["shapes"][0]["points"][1] = [doc["imageWidth"] + 50.0, doc["imageHeight"] + 9.0]
    ann_path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        table = load_dataset(synth_copy)
    row = table[table["annotation_path"] == str(ann_path)].iloc[0]
    assert row["boxes"][0][2] == row["width"] and row["boxes"][0][3] == row["height"]
    assert "clipped 1 annotation point(s)" in caplog.text


def test_annotation_without_sheet_row_warns(synth_copy: Path) -> None:
    (synth_copy / "Annotations" / "IMG999999.json").write_text("{}")
    problems = [str(p) for p in inspect_dataset(synth_copy).problems]
    assert any("no row in the sheet: IMG999999.json" in p and p.startswith("warning") for p in problems)


def _rewrite_sheet(root: Path, change) -> None:
    sheet = pd.read_excel(root / "dataset.xlsx")
    sheet = change(sheet)
    sheet.to_excel(root / "dataset.xlsx", index=False)


def test_missing_root_sheet_and_images_folder(tmp_path: Path, synth_copy: Path) -> None:
    with pytest.raises(DataError, match=r"dataset root not found: .*nowhere"):
        load_dataset(tmp_path / "nowhere")
    (synth_copy / "dataset.xlsx").rename(synth_copy / "other.xlsx")
    with pytest.raises(DataError, match=r"metadata sheet not found: .*dataset.xlsx"):
        load_dataset(synth_copy)
    (synth_copy / "images").rename(synth_copy / "imgs")
    with pytest.raises(DataError, match=r"images folder not found: .*images"):
        load_dataset(synth_copy)


def test_missing_column_is_named(synth_copy: Path) -> None:
    _rewrite_sheet(synth_copy, lambda s: s.drop(columns=["malignant"]))
    with pytest.raises(DataError, match=r"dataset.xlsx: missing column\(s\) 'malignant'"):
        load_dataset(synth_copy)


def test_contradictory_labels_name_the_rows(synth_copy: Path) -> None:
    def contradict(sheet: pd.DataFrame) -> pd.DataFrame:
        sheet.loc[0, ["benign", "malignant"]] = 0  # tumour=1 but neither class
        sheet.loc[3, ["benign", "malignant"]] = 1  # both classes
        return sheet

    _rewrite_sheet(synth_copy, contradict)
    with pytest.raises(DataError, match=r"contradictory label flags .*IMG000001.jpeg \(row 2\), IMG000004"):
        load_dataset(synth_copy)


def test_missing_and_corrupt_images_are_named_or_skipped(synth_copy: Path, caplog) -> None:
    (synth_copy / "images" / "IMG000002.jpeg").unlink()
    corrupt = synth_copy / "images" / "IMG000005.jpeg"
    corrupt.write_bytes(corrupt.read_bytes()[: len(corrupt.read_bytes()) // 2])  # truncated JPEG
    with pytest.raises(DataError, match=r"2 image\(s\) missing or unreadable: .*IMG000002.jpeg \(missing\)"):
        load_dataset(synth_copy)
    with pytest.raises(DataError, match=r"IMG000005.jpeg \(unreadable"):
        load_dataset(synth_copy)
    with caplog.at_level(logging.WARNING):
        table = load_dataset(synth_copy, on_bad_image="skip")
    assert len(table) == 158
    assert not table["image_id"].isin(["IMG000002.jpeg", "IMG000005.jpeg"]).any()
    assert "skipped 2 missing or unreadable image(s)" in caplog.text


def test_malformed_annotation_is_named(synth_copy: Path) -> None:
    path = synth_copy / "Annotations" / "IMG000003.json"
    path.write_text(path.read_text()[:40])  # truncated JSON
    with pytest.raises(DataError, match=r"malformed annotation file .*IMG000003.json"):
        load_dataset(synth_copy)


def test_unknown_on_bad_image_value(synth_root: Path) -> None:
    with pytest.raises(DataError, match=r"data.on_bad_image must be one of"):
        load_dataset(synth_root, on_bad_image="ignore")


def test_generator_writes_the_release_format(synth_root: Path) -> None:
    sheet = pd.read_excel(synth_root / "dataset.xlsx")
    assert tuple(sheet.columns) == SHEET_COLUMNS
    assert set(np.unique(sheet.iloc[:, 4:].to_numpy())) <= {0, 1}
    assert (sheet.loc[sheet["tumor"] == 0, list(SHEET_COLUMNS[4:19])].to_numpy() == 0).all()
    raw = sorted((synth_root / "Annotations").glob("*.json"))[0].read_bytes()
    assert b"\r\n" in raw
    doc = json.loads(raw)
    assert doc["version"] == "5.4.1" and doc["imageData"] is None
    kinds = [s["shape_type"] for s in doc["shapes"]]
    assert kinds.count("rectangle") == kinds.count("polygon") >= 1
    image = Image.open(synth_root / "images" / sheet["image_id"][0])
    assert image.size == (doc["imageWidth"], doc["imageHeight"])
    assert len(list((synth_root / "Annotations").glob("*.json"))) == int(sheet["tumor"].sum())


def test_generator_is_deterministic_and_follows_release_proportions(tmp_path: Path) -> None:
    from btxrd.data.synth import generate

    a = generate(tmp_path / "a", n=400, seed=3, size=64)
    b = generate(tmp_path / "b", n=400, seed=3, size=64)
    pd.testing.assert_frame_equal(a, b)
    first = sorted((tmp_path / "a" / "images").iterdir())[10].name
    assert (tmp_path / "a" / "images" / first).read_bytes() == (tmp_path / "b" / "images" / first).read_bytes()
    label = a["benign"] + 2 * a["malignant"]
    shares = label.value_counts(normalize=True).sort_index().to_numpy()
    np.testing.assert_allclose(shares, [1879 / 3746, 1525 / 3746, 342 / 3746], atol=0.01)
    assert (a["center"] == 1).mean() == pytest.approx(2938 / 3746, abs=0.01)


def test_probe_memo_skips_known_files_but_sees_changes(synth_copy: Path, tmp_path: Path, monkeypatch) -> None:
    from btxrd.data import probe

    load_dataset(synth_copy, memo_dir=tmp_path)
    probed: list[int] = []
    real_probe = probe._probe_all
    monkeypatch.setattr(
        probe, "_probe_all", lambda paths, *limits: probed.append(len(paths)) or real_probe(paths, *limits)
    )
    load_dataset(synth_copy, memo_dir=tmp_path)
    assert probed == [0]  # every image known and unchanged
    corrupt = synth_copy / "images" / "IMG000007.jpeg"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    with pytest.raises(DataError, match=r"IMG000007.jpeg \(unreadable"):
        load_dataset(synth_copy, memo_dir=tmp_path)
    assert probed[-1] == 1  # only the changed file was decoded again


def test_the_sheet_is_read_once_and_again_when_edited(synth_copy: Path, tmp_path: Path, monkeypatch) -> None:
    first = load_dataset(synth_copy, memo_dir=tmp_path)
    real_read_excel = pd.read_excel
    read: list[Path] = []
    monkeypatch.setattr(pd, "read_excel", lambda path, **kw: read.append(path) or real_read_excel(path, **kw))
    pd.testing.assert_frame_equal(load_dataset(synth_copy, memo_dir=tmp_path), first)
    assert read == []  # the remembered sheet, not openpyxl
    sheet_path = synth_copy / "dataset.xlsx"
    sheet = real_read_excel(sheet_path).astype({"center": object})
    sheet.loc[sheet["image_id"] == first["image_id"].iloc[0], "center"] = "x"  # a broken edit
    sheet.to_excel(sheet_path, index=False)
    with pytest.raises(DataError, match="column 'center' is empty or not a number"):
        load_dataset(synth_copy, memo_dir=tmp_path)
    assert read == [sheet_path]  # an edited sheet is read and checked again, never served from the memo
    sheet.loc[sheet["center"] == "x", "center"] = 3
    sheet.to_excel(sheet_path, index=False)
    assert load_dataset(synth_copy, memo_dir=tmp_path)["center"].iloc[0] == 3
    assert len(read) == 2


@pytest.mark.slow
def test_two_processes_probe_a_new_dataset_once(synth_root: Path, tmp_path: Path) -> None:
    outputs = run_python_at_once(
        "import time; from btxrd.data import probe; from btxrd.data.reader import load_dataset;"
        "slow = probe._probe_all;"
        "probe._probe_all = lambda paths, *limits: (time.sleep(1.5), slow(paths, *limits))[1];"
        f"t = load_dataset({str(synth_root)!r}, memo_dir={str(tmp_path)!r}); print('rows', len(t))"
    )
    assert all("rows 160" in out for out in outputs), outputs
    assert sum(out.count("probing 160 images") for out in outputs) == 1  # the other waited and read the memo


def test_duplicate_images_are_named_and_kept_in_one_group(synth_copy: Path) -> None:
    """An identical file and a re-encoded, rescaled copy: both found (different patients), their groups joined."""
    import shutil

    table = load_dataset(synth_copy)
    ids = table["image_id"].tolist()
    original, copy, source, resaved = (synth_copy / "images" / ids[i] for i in (3, 40, 7, 90))
    shutil.copyfile(original, copy)
    with Image.open(source) as img:
        img.resize((round(img.width * 0.9), round(img.height * 0.9))).save(resaved, format="JPEG", quality=70)
    inspection = inspect_dataset(synth_copy, duplicate_distance=12)
    found = inspection.table.attrs["duplicates"]
    assert sorted(zip(found["image_a"], found["image_b"], found["exact"], strict=True)) == [
        (ids[3], ids[40], True),
        (ids[7], ids[90], False),
    ]
    assert found.loc[~found["exact"], "distance"].iloc[0] <= 6  # a few bits; unrelated images differ in dozens
    messages = " ".join(str(p) for p in inspection.problems)
    assert f"1 pair(s) of identical image files, kept in one split part: {ids[3]} = {ids[40]}" in messages
    assert "1 pair(s) of near-duplicate images (perceptual hash within 12 bits)" in messages
    joined = inspection.table.set_index("image_id")
    for a, b in ((ids[3], ids[40]), (ids[7], ids[90])):
        assert joined.loc[a, "group"] == joined.loc[b, "group"]
        assert joined.loc[a, "patient_group"] != joined.loc[b, "patient_group"]
    only_files = inspect_dataset(synth_copy, duplicate_distance=None).table.attrs["duplicates"]
    assert only_files["exact"].tolist() == [True]  # null: identical files only


def test_every_image_mode_a_radiograph_arrives_in_is_read_faithfully(synth_copy: Path, tmp_path: Path) -> None:
    """16-bit (PNG bytes behind a .jpeg name), with alpha, palette, CMYK: what the model sees is the
    picture, not Pillow's default conversion (which turned 16-bit images 99.9% white)."""
    from btxrd.data.cache import cache_images
    from btxrd.data.pixels import to_gray8

    table = load_dataset(synth_copy)
    images = synth_copy / "images"
    with Image.open(table["path"].iat[0]) as img:
        reference = np.asarray(img.convert("L"))
    sixteen = (1000 + reference.astype(np.uint16) * 16).astype(np.uint16)  # a narrow 16-bit range, as DICOM exports
    Image.fromarray(sixteen).save(images / table["image_id"].iat[1], format="PNG")
    rgba = Image.fromarray(reference).convert("RGBA")
    rgba.save(images / table["image_id"].iat[2], format="PNG")
    Image.fromarray(reference).convert("P").save(images / table["image_id"].iat[3], format="PNG")
    Image.fromarray(reference).convert("CMYK").save(images / table["image_id"].iat[4], format="JPEG", quality=95)
    inspection = inspect_dataset(synth_copy)
    assert inspection.usable
    assert inspection.table["mode"].tolist()[:5] == ["L", "I;16", "RGBA", "P", "CMYK"]
    wide = [str(p) for p in inspection.problems if "more than 8 bits per pixel" in str(p)]
    assert wide and table["image_id"].iat[1] in wide[0]
    cache = cache_images(inspection.table, 96, tmp_path, source_size=None)
    expected = cache.pixels[0].astype(int)
    assert np.abs(cache.pixels[1].astype(int) - expected).mean() < 3  # full range restored, not white
    for i in (2, 3):
        assert np.abs(cache.pixels[i].astype(int) - expected).mean() < 1.5
    assert np.abs(cache.pixels[4].astype(int) - expected).mean() < 4  # lossy CMYK JPEG
    with pytest.raises(DataError, match=r"^x.tif: image mode 'RGB;16' is not supported"):
        to_gray8(type("Raw", (), {"mode": "RGB;16", "info": {}})(), "x.tif")


def test_check_names_images_annotations_and_centres_that_do_not_fit(synth_copy: Path) -> None:
    table = load_dataset(synth_copy)
    tumour = table[table["label"] > 0].iloc[0]
    renamed = synth_copy / "images" / tumour["image_id"]
    renamed.rename(renamed.with_name(renamed.stem.lower() + ".JPEG"))
    other = table[table["label"] > 0].iloc[1]
    annotation = synth_copy / "Annotations" / f"{other['stem']}.json"
    annotation.write_text(annotation.read_text().replace(other["image_id"], "IMG009999.jpeg"))
    sheet = pd.read_excel(synth_copy / "dataset.xlsx")
    sheet.loc[5, "center"] = 4
    sheet.to_excel(synth_copy / "dataset.xlsx", index=False)
    messages = [str(p) for p in inspect_dataset(synth_copy).problems]
    assert any(
        f"{tumour['image_id']} (missing; images/{renamed.stem.lower()}.JPEG differs only in letter case)" in m
        for m in messages
    ), messages
    assert any(f"imagePath names another image than their own file name: {annotation.name}" in m for m in messages)
    assert any(
        f"from centres other than the release's 1, 2, 3: {sheet.loc[5, 'image_id']} (centre 4)" in m for m in messages
    )
