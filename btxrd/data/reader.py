"""Read an unpacked BTXRD release into one table row per image.

``inspect_dataset`` collects every problem it finds (for ``btxrd.data check``);
``load_dataset`` uses it and raises a one-line ``DataError`` on the first kind
of error, so training never runs on silently broken data. The sheet is read by ``sheet``, the images
probed by ``probe``, the lesion shapes read by ``annotations``; this module joins them and says what is
wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from btxrd.data.annotations import Annotation, read_annotation
from btxrd.data.duplicates import duplicate_pairs, merge_groups
from btxrd.data.limits import DEFAULT_LIMITS, InputLimits
from btxrd.data.pixels import is_wide
from btxrd.data.probe import PROBED, probe_memoised
from btxrd.data.schema import (
    ANATOMY_COLUMNS,
    ANNOTATIONS_DIR,
    CENTERS,
    CLASS_NAMES,
    IMAGES_DIR,
    REGION_COLUMNS,
    SHEET_NAME,
    SUBTYPE_COLUMNS,
    VIEW_COLUMNS,
)
from btxrd.data.sheet import flag_names, labels, listed, patient_groups, read_sheet_memoised
from btxrd.errors import DataError

log = logging.getLogger(__name__)

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
    memo = Path(memo_dir) if memo_dir else None
    try:
        root = _release_root(root)
        table = _sheet_table(root, memo, limits)
    except DataError as exc:
        return Inspection(None, [Problem("error", str(exc))])
    problems: list[Problem] = []
    bad = _probe_into(table, memo, limits, root / IMAGES_DIR)
    problems += _image_warnings(table)
    if bad:
        if on_bad_image == "error":
            message = f"{len(bad)} image(s) missing or unreadable: {listed(bad)} (data.on_bad_image=skip drops them)"
            problems.append(Problem("error", message))
        else:
            problems.append(Problem("warning", f"skipped {len(bad)} missing or unreadable image(s): {listed(bad)}"))
            table = table[table["width"] > 0].reset_index(drop=True)
    problems += _join_duplicates(table, duplicate_distance)
    if read_annotations:
        problems += _attach_annotations(table, root / ANNOTATIONS_DIR, limits)
    else:  # annotations=off: not a byte of them is read
        _attach_lesions(table, [""] * len(table), [()] * len(table), [()] * len(table))
    return Inspection(table, problems)


def _release_root(root: str | Path) -> Path:
    """The release's folder, once it and its images folder are there."""
    if not str(root).strip():  # Path("") is the working folder
        raise DataError("the dataset root is empty (set data.root)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset root not found: {root} (set data.root)")
    if not (root / IMAGES_DIR).is_dir():
        raise DataError(f"images folder not found: {root / IMAGES_DIR}")
    return root


def _sheet_table(root: Path, memo_dir: Path | None, limits: InputLimits) -> pd.DataFrame:
    """One row per image of the sheet: where it is, its label and what the sheet says of it."""
    sheet = read_sheet_memoised(root / SHEET_NAME, memo_dir, limits)
    classes = labels(sheet, root / SHEET_NAME)
    return pd.DataFrame(
        {
            "image_id": sheet["image_id"],
            "stem": sheet["image_id"].str.replace(r"\.[^.]+$", "", regex=True),
            "path": [str(root / IMAGES_DIR / iid) for iid in sheet["image_id"]],
            "label": classes,
            "label_name": [CLASS_NAMES[i] for i in classes],
            "center": sheet["center"],
            "subtype": flag_names(sheet, SUBTYPE_COLUMNS),
            "site": flag_names(sheet, ANATOMY_COLUMNS),
            "region": flag_names(sheet, REGION_COLUMNS),
            "view": flag_names(sheet, VIEW_COLUMNS),
            "age": sheet["age"],
            "gender": sheet["gender"].astype(str).str.strip(),
            "group": patient_groups(sheet),
        }
    )


def _probe_into(table: pd.DataFrame, memo_dir: Path | None, limits: InputLimits, images_dir: Path) -> list[str]:
    """Each image's probe as the table's ``PROBED`` columns (zeros for a bad one); the bad images, named."""
    probes, bad = [], []
    for result in probe_memoised(table["path"].tolist(), memo_dir, limits, images_dir):
        if isinstance(result, str):
            bad.append(result)
            result = (0, 0, "", "", "", 1)
        probes.append(result)
    for name, values in zip(PROBED, map(list, zip(*probes, strict=True)), strict=True):
        table[name] = values
    return _name_case_mismatches(bad, images_dir)


def _image_warnings(table: pd.DataFrame) -> list[Problem]:
    """What is read, but not as it is stored: wide pixels, EXIF orientation, centres the release lacks."""
    problems = []
    wide = table.loc[table["mode"].map(is_wide), "image_id"].tolist()
    if wide:
        problems.append(
            Problem(
                "warning",
                f"{len(wide)} image(s) with more than 8 bits per pixel, rescaled to 8 "
                f"bits from each image's own value range: {listed(wide)}",
            )
        )
    turned = table.loc[table["orientation"] != 1, "image_id"].tolist()
    if turned:
        problems.append(
            Problem(
                "warning",
                f"{len(turned)} image(s) stored rotated or mirrored (EXIF orientation), "
                f"read upright as LabelMe shows them: {listed(turned)}",
            )
        )
    unknown = table.loc[~table["center"].isin(CENTERS), ["image_id", "center"]]
    if len(unknown):
        named = [f"{i} (centre {c})" for i, c in zip(unknown["image_id"], unknown["center"], strict=True)]
        problems.append(
            Problem(
                "warning",
                f"{len(unknown)} image(s) from centres other than the release's "
                f"{', '.join(map(str, CENTERS))}: {listed(named)}",
            )
        )
    return problems


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


def _join_duplicates(table: pd.DataFrame, max_distance: int | None) -> list[Problem]:
    """``table.attrs['duplicates']``: the duplicate pairs; ``group``: patient groups joined through them;
    the pairs found, as warnings."""
    problems: list[Problem] = []
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
        return problems
    table["group"] = merge_groups(table["group"].to_numpy(), table["image_id"].tolist(), pairs)
    exact, near = pairs[pairs["exact"]], pairs[~pairs["exact"]]
    if len(exact):
        pairs_named = [f"{a} = {b}" for a, b in zip(exact["image_a"], exact["image_b"], strict=True)]
        problems.append(
            Problem(
                "warning",
                f"{len(exact)} pair(s) of identical image files, kept in one split part: {listed(pairs_named, 10)}",
            )
        )
    if len(near):
        pairs_named = [
            f"{a} ~ {b} ({d} bits)" for a, b, d in zip(near["image_a"], near["image_b"], near["distance"], strict=True)
        ]
        problems.append(
            Problem(
                "warning",
                f"{len(near)} pair(s) of near-duplicate images (perceptual hash within "
                f"{max_distance} bits), kept in one split part: {listed(pairs_named, 10)}",
            )
        )
    return problems


@dataclass
class _LesionFindings:
    """What reading the annotation files found, beyond the shapes: each list names files or images."""

    malformed: list[str] = field(default_factory=list)
    unannotated: list[str] = field(default_factory=list)  # tumour images with no file
    resized: list[str] = field(default_factory=list)  # drawn on another size of the image: rescaled
    on_normal: list[str] = field(default_factory=list)
    other_image: list[str] = field(default_factory=list)  # imagePath names another image
    dropped: list[str] = field(default_factory=list)  # shapes with non-finite points
    n_clipped: int = 0

    def problems(self) -> list[Problem]:
        found = []
        if self.malformed:
            more = len(self.malformed) - 1
            found.append(
                Problem("error", self.malformed[0] + (f" (+{more} more malformed annotation files)" if more else ""))
            )
        if self.n_clipped:
            found.append(Problem("warning", f"clipped {self.n_clipped} annotation point(s) lying outside their image"))
        warnings = [
            (
                self.dropped,
                "dropped the lesion shapes whose coordinates are not finite numbers (NaN, Infinity) in {n} "
                "annotation file(s)",
            ),
            (self.unannotated, "{n} tumour image(s) without annotation file"),
            (
                self.resized,
                "{n} annotation file(s) whose imageWidth/imageHeight differ from the image; coordinates rescaled",
            ),
            (self.on_normal, "{n} annotation file(s) for normal images"),
            (self.other_image, "{n} annotation file(s) whose imagePath names another image than their own file name"),
        ]
        found += [
            Problem("warning", f"{text.format(n=len(names))}: {listed(names)}") for names, text in warnings if names
        ]
        return found


def _attach_annotations(table: pd.DataFrame, ann_dir: Path, limits: InputLimits = DEFAULT_LIMITS) -> list[Problem]:
    """Each image's lesion boxes and polygons (in its own pixels) as the table's columns; what is wrong."""
    by_stem = {p.stem: p for p in ann_dir.glob("*.json")} if ann_dir.is_dir() else {}
    problems = []
    if not ann_dir.is_dir() and (table["label"] > 0).any():
        problems.append(Problem("warning", f"annotations folder not found: {ann_dir}"))
    known = set(table["stem"])
    orphans = sorted(s for s in by_stem if s not in known)
    if orphans:
        problems.append(
            Problem(
                "warning",
                f"{len(orphans)} annotation file(s) with no row in the sheet: "
                f"{listed([by_stem[s].name for s in orphans])}",
            )
        )
    found = _LesionFindings()
    boxes, polygons, ann_paths = [], [], []
    for stem, label, width, height in zip(table["stem"], table["label"], table["width"], table["height"], strict=True):
        path = by_stem.get(stem)
        ann = _read_lesions(path, label, stem, ann_dir, limits, found)
        if ann is None:
            boxes.append(())
            polygons.append(())
            ann_paths.append("")
            continue
        sx, sy = 1.0, 1.0
        if (ann.width, ann.height) != (width, height) and width > 0:
            found.resized.append(path.name)
            sx, sy = width / ann.width, height / ann.height
        boxes.append(tuple((x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in ann.boxes))
        polygons.append(tuple(tuple((x * sx, y * sy) for x, y in p) for p in ann.polygons))
        ann_paths.append(str(path))
    _attach_lesions(table, ann_paths, boxes, polygons)
    return problems + found.problems()


def _read_lesions(
    path: Path | None, label: int, stem: str, ann_dir: Path, limits: InputLimits, found: _LesionFindings
) -> Annotation | None:
    """An image's annotation file read, or None (no file, or a malformed one); what it shows, in ``found``."""
    if path is None:
        if label > 0:
            found.unannotated.append(stem)
        return None
    try:
        ann = read_annotation(path, limits, ann_dir)
    except DataError as exc:
        found.malformed.append(str(exc))
        return None
    if label == 0:
        found.on_normal.append(path.name)
    if ann.image_name and ann.image_name.rsplit(".", 1)[0] != stem:
        found.other_image.append(f"{path.name} (imagePath {ann.image_path})")
    found.n_clipped += ann.n_clipped_points
    if ann.n_dropped_shapes:
        found.dropped.append(f"{path.name} ({ann.n_dropped_shapes})")
    return ann


def _attach_lesions(table: pd.DataFrame, paths: list[str], boxes: list, polygons: list) -> None:
    """The lesion columns, one entry per row."""
    table["annotation_path"], table["boxes"], table["polygons"] = paths, boxes, polygons
    table["n_lesions"] = [max(len(b), len(p)) for b, p in zip(boxes, polygons, strict=True)]


def with_annotations(table: pd.DataFrame, root: str | Path, limits: InputLimits = DEFAULT_LIMITS) -> pd.DataFrame:
    """A copy of ``table`` with its lesion shapes read from ``root``/Annotations (for scoring CAMs)."""
    out = table.drop(columns=["annotation_path", "boxes", "polygons", "n_lesions"], errors="ignore").copy()
    problems = _attach_annotations(out, Path(root).expanduser() / ANNOTATIONS_DIR, limits)
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
