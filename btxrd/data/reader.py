"""Read an unpacked BTXRD release into one table row per image.

``inspect_dataset`` collects every problem it finds (for ``btxrd.data check``);
``load_dataset`` uses it and raises a one-line ``DataError`` on the first kind
of error, so training never runs on silently broken data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from PIL import UnidentifiedImageError

from btxrd.data.annotations import Annotation, read_annotation
from btxrd.data.dicom import is_dicom_data, read_dicom
from btxrd.data.duplicates import duplicate_pairs, fingerprint, merge_groups
from btxrd.data.limits import DEFAULT_LIMITS, InputLimits, image_from_bytes
from btxrd.data.pixels import is_wide, orientation, to_gray8, upright, upright_size
from btxrd.data.schema import (
    ANATOMY_COLUMNS,
    ANNOTATIONS_DIR,
    CENTERS,
    CLASS_NAMES,
    FLAG_COLUMNS,
    IMAGES_DIR,
    REGION_COLUMNS,
    SHEET_COLUMNS,
    SHEET_NAME,
    SUBTYPE_COLUMNS,
    VIEW_COLUMNS,
)
from btxrd.errors import DataError
from btxrd.files import write_atomically

log = logging.getLogger(__name__)

# Rows whose patient-proxy key matches the previous row join its group (a patient proxy:
# consecutive views of one patient share these values; the release has no patient id).
GROUP_KEY_COLUMNS: tuple[str, ...] = (
    ("center", "age", "gender") + ANATOMY_COLUMNS + REGION_COLUMNS + ("tumor", "benign", "malignant")
)
ON_BAD_IMAGE = ("error", "skip")


@dataclass
class Problem:
    severity: str  # "error" makes the dataset unusable; "warning" does not
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass
class Inspection:
    table: pd.DataFrame | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def usable(self) -> bool:
        return self.table is not None and not self.errors and len(self.table) > 0


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def read_sheet(path: Path, limits: InputLimits = DEFAULT_LIMITS) -> pd.DataFrame:
    """Read dataset.xlsx and check its columns and label flags."""
    if not path.is_file():
        raise DataError(f"metadata sheet not found: {path}")
    limits.admit(path, path.parent)  # a regular file in the dataset, within the size limit (a FIFO would hang openpyxl)
    _check_expansion(path, limits)
    try:
        # header=None: pandas would rename a repeated header ('malignant' twice -> 'malignant.1') silently
        raw = pd.read_excel(path, engine="openpyxl", header=None, dtype=object)
    except Exception as exc:  # openpyxl raises many types for a damaged workbook
        raise DataError(f"cannot read metadata sheet {path}: {exc}") from None
    if raw.empty:
        raise DataError(f"{path}: the sheet is empty")
    sheet = raw.iloc[1:].reset_index(drop=True)
    sheet.columns = _sheet_header(raw.iloc[0].tolist(), path)
    sheet = sheet.infer_objects()
    missing = [c for c in SHEET_COLUMNS if c not in sheet.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {_names([repr(c) for c in missing])}")
    if len(sheet) == 0:
        raise DataError(f"{path}: the sheet has no rows")
    sheet["image_id"] = sheet["image_id"].astype(str).str.strip()
    not_names = [f"{iid!r} (row {i + 2})" for i, iid in enumerate(sheet["image_id"]) if not _file_name(iid)]
    if not_names:
        raise DataError(f"{path}: image_id must be a file name in {IMAGES_DIR}/, not a path: {_names(not_names)}")
    duplicated = sheet.loc[sheet["image_id"].duplicated(), "image_id"].tolist()
    if duplicated:
        raise DataError(f"{path}: duplicated image_id {_names(duplicated)}")
    for col in ("center", "age", *FLAG_COLUMNS):
        values = pd.to_numeric(sheet[col], errors="coerce")
        bad = sheet.loc[~np.isfinite(values.astype(float)), "image_id"].tolist()
        if bad:
            raise DataError(f"{path}: column {col!r} is empty or not a number for {_names(bad)}")
        sheet[col] = values.astype(np.int64)
    not_flag = [c for c in FLAG_COLUMNS if not sheet[c].isin((0, 1)).all()]
    if not_flag:
        raise DataError(f"{path}: flag column(s) {_names(not_flag)} hold values other than 0/1")
    return sheet


def _check_expansion(path: Path, limits: InputLimits) -> None:
    """A workbook is a zip archive: what it expands to must fit data.max_file_mb too (a zip bomb otherwise)."""
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return  # not a workbook: openpyxl says so in its own words
    if expanded > limits.max_bytes:
        raise DataError(
            f"{path}: expands to {expanded / 2**20:.0f} MB, over the limit of "
            f"{limits.max_file_mb:g} MB (data.max_file_mb)"
        )


def _file_name(image_id: str) -> bool:
    """A plain file name: no folder part, not absolute, not climbing out of images/ (``../x.jpeg``)."""
    return image_id not in ("", ".", "..") and not any(c in image_id for c in "/\\\0")


def _sheet_header(cells: list, path: Path) -> list[str]:
    """Column names as the sheet's first row gives them, spaces trimmed and runs of spaces made one;
    a name that appears twice is an error naming both columns (which one holds the labels?)."""
    names = [
        " ".join(str(c).split()) if c is not None and not (isinstance(c, float) and np.isnan(c)) else "" for c in cells
    ]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name and name in seen:
            raise DataError(
                f"{path}: column {name!r} appears twice (columns {_column_letter(seen[name])} and "
                f"{_column_letter(i)}); keep one"
            )
        seen[name] = i
    return [name or f"unnamed {_column_letter(i)}" for i, name in enumerate(names)]


def _column_letter(index: int) -> str:
    """A spreadsheet's name of column ``index`` (0 -> A, 26 -> AA)."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def _read_sheet_memoised(path: Path, memo_dir: Path | None, limits: InputLimits) -> pd.DataFrame:
    """``read_sheet``, remembered as Parquet under ``memo_dir``, keyed by the sheet's path, size and mtime.

    openpyxl takes ~2.5 s for the release's 3,746-row sheet (plus ~0.9 s to import), in every job of a
    sweep; the memo reads in ~0.06 s (measured here). Only a sheet that passed the checks is
    remembered; an edited sheet has another key and is read (and checked) again.
    """
    if memo_dir is None or not path.is_file():
        return read_sheet(path, limits)
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    memo = Path(memo_dir) / f"sheet_{key}.parquet"
    try:
        return pd.read_parquet(memo)
    except (OSError, ValueError):  # absent (or unreadable: read the sheet again)
        pass
    sheet = read_sheet(path, limits)
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(memo, sheet.to_parquet)
    return sheet


def _labels(sheet: pd.DataFrame, path: Path) -> pd.Series:
    tumor, benign, malignant = sheet["tumor"], sheet["benign"], sheet["malignant"]
    contradictory = ((tumor == 1) & (benign + malignant != 1)) | ((tumor == 0) & (benign + malignant > 0))
    if contradictory.any():
        rows = [
            f"{iid} (row {i + 2})"
            for i, iid in zip(np.flatnonzero(contradictory), sheet.loc[contradictory, "image_id"], strict=True)
        ]
        raise DataError(f"{path}: contradictory label flags (tumor/benign/malignant) in {_names(rows)}")
    return (benign + 2 * malignant).astype(np.int64)


def _flag_names(sheet: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    flags = sheet[list(columns)].to_numpy(dtype=bool)
    return pd.Series(
        [";".join(c for c, on in zip(columns, row, strict=True) if on) for row in flags],
        index=sheet.index,
        dtype=object,
    )


def patient_groups(sheet: pd.DataFrame) -> np.ndarray:
    """Patient-proxy group id per row: consecutive rows with an identical key share a group."""
    key = sheet[list(GROUP_KEY_COLUMNS)].astype(str).agg("|".join, axis=1)
    return ((key != key.shift()).cumsum() - 1).to_numpy(dtype=np.int64)


# What probing an image learns: its upright size, perceptual hash and SHA-1 of the file
# (btxrd.data.duplicates), image mode and EXIF orientation; the table's columns of the same names.
Probe = tuple[int, int, str, str, str, int]
PROBED = ("width", "height", "phash", "sha1", "mode", "orientation")
_HASH_SIDE = 128  # decode at least this many pixels on the short side for the perceptual hash


def _probe_image(path: str, limits: InputLimits, root: Path) -> Probe:
    """Size and fingerprints of an image, after decoding it at reduced scale.

    JPEG draft mode decodes at up to 1/8 scale (a few ms for a full-size radiograph)
    but still reads the whole entropy-coded stream, so a truncated or corrupt
    file fails here, before any split or training is made from it. What the file may be (a regular
    file in ``root``, its size, the pixels it declares) is checked before it is decoded.
    """
    data = limits.read(path, root)
    opened = read_dicom(path, limits, data) if is_dicom_data(data) else image_from_bytes(data, path, limits)
    with opened as img:
        (width, height), mode, turned = upright_size(img), img.mode, orientation(img)
        scale = max(1, min(8, min(width, height) // _HASH_SIDE))
        img.draft("L", (max(1, img.width // scale), max(1, img.height // scale)))
        img.load()
        phash, sha1 = fingerprint(to_gray8(upright(img), path), data)
    return width, height, phash, sha1, mode, turned


def _probe_all(paths: list[str], limits: InputLimits, root: Path) -> list[Probe | str]:
    """Probe images in threads (Pillow releases the GIL while decoding)."""

    def probe(path: str) -> Probe | str:
        try:
            return _probe_image(path, limits, root)
        except FileNotFoundError:
            return f"{path} (missing)"
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            return f"{path} (unreadable: {exc})"
        except DataError as exc:  # not a file to read, over a limit, or a mode that cannot be shown faithfully
            return _named(path, exc)

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        return list(pool.map(probe, paths, chunksize=64))


def _named(path: str, exc: DataError) -> str:
    """A problem with an image, as the list of bad images shows it: its path, then what is wrong."""
    text = str(exc)
    return f"{path} ({text.removeprefix(path).lstrip(': ')})"


def probe_images(paths: list[str], limits: InputLimits, root: Path) -> list[Probe | str]:
    """Each image's probe (``PROBED``: size, fingerprints, mode, orientation), or what is wrong with it;
    only regular files inside ``root``, within ``limits``. JPEG, PNG and the rest Pillow reads, and DICOM."""
    return _probe_all(paths, limits, root)


def _probe_memoised(paths: list[str], memo_dir: Path | None, limits: InputLimits, root: Path) -> list[Probe | str]:
    """``_probe_all`` with a memo of decodable images keyed by (path, file size, mtime).

    Probing reads every JPEG's entropy-coded stream (~10 ms for a full-size radiograph, JPEG
    scaling does not skip it): 3,746 images would cost every job of a sweep ~20 s. Failures are
    never memoised, so a broken file is reported again until it is fixed; the limits are checked
    again for remembered images too (they are settings: a run may lower them).
    """
    if memo_dir is None:
        return _probe_all(paths, limits, root)
    memo_path = Path(memo_dir) / "probe_memo.json"
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    # Jobs of a sweep start together: one probes, the others wait and read its memo.
    with FileLock(str(memo_path.with_suffix(".lock"))):
        return _probe_with_memo(paths, memo_path, limits, root)


def _probe_with_memo(paths: list[str], memo_path: Path, limits: InputLimits, root: Path) -> list[Probe | str]:
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    keys = []
    for path in paths:
        try:
            stat = os.stat(path)
            keys.append(f"{path}|{stat.st_size}|{stat.st_mtime_ns}")
        except OSError:
            keys.append("")
    todo = [i for i, key in enumerate(keys) if len(memo.get(key, ())) != len(PROBED)]  # also older memos
    if todo:
        log.info("probing %d images (decodability, size, fingerprints; memo %s)", len(todo), memo_path)
    results: list[Probe | str] = [
        _remembered(paths[i], memo[k], limits, root) if k in memo else "" for i, k in enumerate(keys)
    ]
    for i, result in zip(todo, _probe_all([paths[i] for i in todo], limits, root), strict=True):
        results[i] = result
        if not isinstance(result, str) and keys[i]:
            memo[keys[i]] = list(result)
    if todo:
        write_atomically(memo_path, lambda tmp: tmp.write_text(json.dumps(memo)))
    return results


def _remembered(path: str, probe: list, limits: InputLimits, root: Path) -> Probe | str:
    """A remembered probe, or the problem today's limits find with the file (without reading it)."""
    try:
        limits.admit(path, root)
        limits.check_pixels(int(probe[0]), int(probe[1]), path)
    except DataError as exc:
        return _named(path, exc)
    except OSError:  # gone since it was stat'ed a moment ago: the next run probes it again
        return f"{path} (missing)"
    return tuple(probe)


def inspect_dataset(
    root: str | Path,
    on_bad_image: str = "error",
    read_annotations: bool = True,
    memo_dir: str | Path | None = None,
    duplicate_distance: int | None = None,
    limits: InputLimits = DEFAULT_LIMITS,
) -> Inspection:
    """Read the release at ``root`` and list every problem found.

    Errors: missing root/sheet/images folder, missing columns, contradictory labels,
    missing or unreadable images (unless ``on_bad_image='skip'``), malformed
    annotation files. Warnings: clipped annotation points, annotations with no
    row, tumour images without annotation, annotation sizes that disagree with
    the image (coordinates are rescaled), skipped images, duplicate images.

    ``group``: the patient proxy (``patient_group``), with duplicate images (identical files, or
    within ``duplicate_distance`` bits of perceptual hash; None: identical files only) joined to
    the group of their copies, so no split separates them.

    Every file is untrusted (``limits``): only regular files inside ``images/`` and ``Annotations/``
    are read, within the size and pixel limits; an image that breaks them is a bad image.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise DataError(f"data.on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
    if not str(root).strip():  # Path("") is the working folder
        return Inspection(None, [Problem("error", "the dataset root is empty (set data.root)")])
    root = Path(root).expanduser()
    problems: list[Problem] = []
    if not root.is_dir():
        return Inspection(None, [Problem("error", f"dataset root not found: {root} (set data.root)")])
    images_dir = root / IMAGES_DIR
    if not images_dir.is_dir():
        return Inspection(None, [Problem("error", f"images folder not found: {images_dir}")])
    try:
        sheet = _read_sheet_memoised(root / SHEET_NAME, Path(memo_dir) if memo_dir else None, limits)
        labels = _labels(sheet, root / SHEET_NAME)
    except DataError as exc:
        return Inspection(None, [Problem("error", str(exc))])

    table = pd.DataFrame(
        {
            "image_id": sheet["image_id"],
            "stem": sheet["image_id"].str.replace(r"\.[^.]+$", "", regex=True),
            "path": [str(images_dir / iid) for iid in sheet["image_id"]],
            "label": labels,
            "label_name": [CLASS_NAMES[i] for i in labels],
            "center": sheet["center"],
            "subtype": _flag_names(sheet, SUBTYPE_COLUMNS),
            "site": _flag_names(sheet, ANATOMY_COLUMNS),
            "region": _flag_names(sheet, REGION_COLUMNS),
            "view": _flag_names(sheet, VIEW_COLUMNS),
            "age": sheet["age"],
            "gender": sheet["gender"].astype(str).str.strip(),
            "group": patient_groups(sheet),
        }
    )

    # Images: present and decodable.
    probes, bad = [], []
    for result in _probe_memoised(table["path"].tolist(), Path(memo_dir) if memo_dir else None, limits, images_dir):
        if isinstance(result, str):
            bad.append(result)
            result = (0, 0, "", "", "", 1)
        probes.append(result)
    for name, values in zip(PROBED, map(list, zip(*probes, strict=True)), strict=True):
        table[name] = values
    bad = _name_case_mismatches(bad, images_dir)
    wide = table.loc[table["mode"].map(is_wide), "image_id"].tolist()
    if wide:
        problems.append(
            Problem(
                "warning",
                f"{len(wide)} image(s) with more than 8 bits per pixel, rescaled to 8 "
                f"bits from each image's own value range: {_names(wide)}",
            )
        )
    turned = table.loc[table["orientation"] != 1, "image_id"].tolist()
    if turned:
        problems.append(
            Problem(
                "warning",
                f"{len(turned)} image(s) stored rotated or mirrored (EXIF orientation), "
                f"read upright as LabelMe shows them: {_names(turned)}",
            )
        )
    unknown = table.loc[~table["center"].isin(CENTERS), ["image_id", "center"]]
    if len(unknown):
        listed = [f"{i} (centre {c})" for i, c in zip(unknown["image_id"], unknown["center"], strict=True)]
        problems.append(
            Problem(
                "warning",
                f"{len(unknown)} image(s) from centres other than the release's "
                f"{', '.join(map(str, CENTERS))}: {_names(listed)}",
            )
        )
    if bad:
        if on_bad_image == "error":
            problems.append(
                Problem(
                    "error",
                    f"{len(bad)} image(s) missing or unreadable: {_names(bad)} (data.on_bad_image=skip drops them)",
                )
            )
        else:
            problems.append(Problem("warning", f"skipped {len(bad)} missing or unreadable image(s): {_names(bad)}"))
            table = table[table["width"] > 0].reset_index(drop=True)
    _join_duplicates(table, duplicate_distance, problems)

    if read_annotations:
        _attach_annotations(table, root / ANNOTATIONS_DIR, problems, limits)
    else:  # annotations=off: not a byte of them is read
        table["annotation_path"] = ""
        table["boxes"] = [()] * len(table)
        table["polygons"] = [()] * len(table)
        table["n_lesions"] = 0
    return Inspection(table, problems)


def _name_case_mismatches(bad: list[str], images_dir: Path) -> list[str]:
    """Missing images that exist under a name differing only in letter case: said so (on a
    case-sensitive filesystem the listed name does not open)."""
    if not any(b.endswith("(missing)") for b in bad):
        return bad
    by_lower = {p.name.lower(): p.name for p in images_dir.iterdir()}
    out = []
    for entry in bad:
        name = Path(entry.removesuffix(" (missing)")).name
        other = by_lower.get(name.lower())
        out.append(
            f"{entry[: -len('(missing)')]}(missing; {IMAGES_DIR}/{other} differs only in letter case)"
            if entry.endswith("(missing)") and other and other != name
            else entry
        )
    return out


def _join_duplicates(table: pd.DataFrame, max_distance: int | None, problems: list[Problem]) -> None:
    """``table.attrs['duplicates']``: the duplicate pairs; ``group``: patient groups joined through them."""
    table["patient_group"] = table["group"]
    readable = table["phash"] != ""
    pairs = duplicate_pairs(
        table.loc[readable, "image_id"].tolist(),
        table.loc[readable, "phash"].tolist(),
        table.loc[readable, "sha1"].tolist(),
        max_distance or 0,
    )
    if max_distance is None:  # identical files only
        pairs = pairs[pairs["exact"]].reset_index(drop=True)
    table.attrs["duplicates"] = pairs
    if pairs.empty:
        return
    table["group"] = merge_groups(table["group"].to_numpy(), table["image_id"].tolist(), pairs)
    exact, near = pairs[pairs["exact"]], pairs[~pairs["exact"]]
    if len(exact):
        listed = [f"{a} = {b}" for a, b in zip(exact["image_a"], exact["image_b"], strict=True)]
        problems.append(
            Problem(
                "warning",
                f"{len(exact)} pair(s) of identical image files, kept in one split part: {_names(listed, 10)}",
            )
        )
    if len(near):
        listed = [
            f"{a} ~ {b} ({d} bits)" for a, b, d in zip(near["image_a"], near["image_b"], near["distance"], strict=True)
        ]
        problems.append(
            Problem(
                "warning",
                f"{len(near)} pair(s) of near-duplicate images (perceptual hash within "
                f"{max_distance} bits), kept in one split part: {_names(listed, 10)}",
            )
        )


def _attach_annotations(
    table: pd.DataFrame, ann_dir: Path, problems: list[Problem], limits: InputLimits = DEFAULT_LIMITS
) -> None:
    by_stem = {p.stem: p for p in ann_dir.glob("*.json")} if ann_dir.is_dir() else {}
    if not ann_dir.is_dir() and (table["label"] > 0).any():
        problems.append(Problem("warning", f"annotations folder not found: {ann_dir}"))
    known = set(table["stem"])
    orphans = sorted(s for s in by_stem if s not in known)
    if orphans:
        problems.append(
            Problem(
                "warning",
                f"{len(orphans)} annotation file(s) with no row in the "
                f"sheet: {_names([by_stem[s].name for s in orphans])}",
            )
        )
    boxes, polygons, ann_paths = [], [], []
    n_clipped = 0
    malformed, unannotated, resized, on_normal, other_image, dropped = [], [], [], [], [], []
    for stem, label, width, height in zip(table["stem"], table["label"], table["width"], table["height"], strict=True):
        path = by_stem.get(stem)
        ann: Annotation | None = None
        if path is not None:
            try:
                ann = read_annotation(path, limits, ann_dir)
            except DataError as exc:
                malformed.append(str(exc))
        if ann is None:
            boxes.append(())
            polygons.append(())
            ann_paths.append("")
            if label > 0 and path is None:
                unannotated.append(stem)
            continue
        if label == 0:
            on_normal.append(path.name)
        if ann.image_name and ann.image_name.rsplit(".", 1)[0] != stem:
            other_image.append(f"{path.name} (imagePath {ann.image_path})")
        n_clipped += ann.n_clipped_points
        if ann.n_dropped_shapes:
            dropped.append(f"{path.name} ({ann.n_dropped_shapes})")
        sx, sy = 1.0, 1.0
        if (ann.width, ann.height) != (width, height) and width > 0:
            resized.append(path.name)
            sx, sy = width / ann.width, height / ann.height
        boxes.append(tuple((x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in ann.boxes))
        polygons.append(tuple(tuple((x * sx, y * sy) for x, y in p) for p in ann.polygons))
        ann_paths.append(str(path))
    if malformed:
        problems.append(
            Problem(
                "error",
                malformed[0]
                + (f" (+{len(malformed) - 1} more malformed annotation files)" if len(malformed) > 1 else ""),
            )
        )
    if n_clipped:
        problems.append(Problem("warning", f"clipped {n_clipped} annotation point(s) lying outside their image"))
    if dropped:
        problems.append(
            Problem(
                "warning",
                f"dropped the lesion shapes whose coordinates are not finite numbers "
                f"(NaN, Infinity) in {len(dropped)} annotation file(s): "
                f"{_names(dropped)}",
            )
        )
    if unannotated:
        problems.append(
            Problem("warning", f"{len(unannotated)} tumour image(s) without annotation file: {_names(unannotated)}")
        )
    if resized:
        problems.append(
            Problem(
                "warning",
                f"{len(resized)} annotation file(s) whose imageWidth/"
                f"imageHeight differ from the image; coordinates rescaled: {_names(resized)}",
            )
        )
    if on_normal:
        problems.append(
            Problem("warning", f"{len(on_normal)} annotation file(s) for normal images: {_names(on_normal)}")
        )
    if other_image:
        problems.append(
            Problem(
                "warning",
                f"{len(other_image)} annotation file(s) whose imagePath names another "
                f"image than their own file name: {_names(other_image)}",
            )
        )
    table["annotation_path"] = ann_paths
    table["boxes"] = boxes
    table["polygons"] = polygons
    table["n_lesions"] = [max(len(b), len(p)) for b, p in zip(boxes, polygons, strict=True)]


def with_annotations(table: pd.DataFrame, root: str | Path, limits: InputLimits = DEFAULT_LIMITS) -> pd.DataFrame:
    """A copy of ``table`` with its lesion shapes read from ``root``/Annotations (for scoring CAMs)."""
    out = table.drop(columns=["annotation_path", "boxes", "polygons", "n_lesions"], errors="ignore").copy()
    problems: list[Problem] = []
    _attach_annotations(out, Path(root).expanduser() / ANNOTATIONS_DIR, problems, limits)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DataError(errors[0].message)
    return out


def load_dataset(
    root: str | Path,
    on_bad_image: str = "error",
    read_annotations: bool = True,
    memo_dir: str | Path | None = None,
    duplicate_distance: int | None = None,
    limits: InputLimits = DEFAULT_LIMITS,
) -> pd.DataFrame:
    """The dataset table; raises DataError (one line) if the dataset is not usable.

    ``memo_dir``: where to remember which image files (by size and mtime) decoded fine, and their
    fingerprints. ``duplicate_distance``, ``limits``: see ``inspect_dataset``.
    """
    inspection = inspect_dataset(
        root,
        on_bad_image=on_bad_image,
        read_annotations=read_annotations,
        memo_dir=memo_dir,
        duplicate_distance=duplicate_distance,
        limits=limits,
    )
    if inspection.errors:
        raise DataError(inspection.errors[0].message)
    if inspection.table is None or len(inspection.table) == 0:
        raise DataError(f"dataset at {root} holds no usable image")
    for problem in inspection.problems:
        log.warning(problem.message)
    return inspection.table
