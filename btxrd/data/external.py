"""An external test set: any folder of JPEG / PNG / DICOM radiographs listed in a CSV table.

A hospital that tests a trained model has no BTXRD release, only its images and a table. The table
needs two columns: ``path`` (relative to the table's folder) and ``label`` (``normal``, ``benign`` or
``malignant``). Optional columns:

- ``group`` (or ``patient``, ``patient_id``): images of one patient, resampled together by the bootstrap;
  without one, each image is its own group (the intervals then assume independent images: said so);
- ``center`` / ``centre``, ``age``, ``sex`` / ``gender``, ``site``, ``region``: subgroups, as the release's;
- ``boxes``: lesion boxes in the image's pixels, as JSON ``[[x0, y0, x1, y1], ...]`` (Grad-CAM
  localisation is scored only for images that have them);
- any other column: a subgroup attribute of its own (``scanner``, ``hospital``, ...).

Every problem ends in one line naming the table and the row: a missing column, an unknown label, a
path that leaves the table's folder, a file that is missing or cannot be read. Files are read as every
input is (``btxrd.data.limits``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from btxrd.data.limits import InputLimits
from btxrd.data.probe import PROBED, probe_images
from btxrd.data.schema import CLASS_NAMES
from btxrd.errors import DataError
from btxrd.files import inside

log = logging.getLogger(__name__)
GROUP_COLUMNS = ("group", "patient", "patient_id")
KNOWN = {"path", "label", *GROUP_COLUMNS, "center", "centre", "age", "sex", "gender", "site", "region", "boxes"}


def read_external(table_path: str | Path, limits: InputLimits) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """(the table as the scoring path reads a dataset's: one row per image, probed; the extra columns that
    make subgroups). DataError naming the table and row for anything it cannot use."""
    table_path = Path(table_path).expanduser()
    limits.admit(table_path)
    try:
        raw = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{table_path}: not a CSV table ({str(exc).splitlines()[0]})") from None
    raw.columns = [" ".join(str(c).split()).lower() for c in raw.columns]
    missing = [c for c in ("path", "label") if c not in raw.columns]
    if missing:
        raise DataError(f"{table_path}: missing column(s) {', '.join(missing)} (needs path and label)")
    if raw.columns.duplicated().any():
        raise DataError(f"{table_path}: column {raw.columns[raw.columns.duplicated()][0]!r} appears twice")
    if raw.empty:
        raise DataError(f"{table_path}: the table has no rows")
    folder = table_path.resolve().parent
    labels, paths = [], []
    for i, (path, label) in enumerate(zip(raw["path"], raw["label"], strict=True), start=2):  # row 1: the header
        name = label.strip().lower()
        if name not in CLASS_NAMES:
            raise DataError(f"{table_path}, row {i}: label {label!r} is not one of {', '.join(CLASS_NAMES)}")
        file = folder / path.strip()
        if (
            not path.strip()
            or Path(path.strip()).is_absolute()
            or not inside(file, folder)
            and not limits.allow_links_outside_root
        ):
            raise DataError(f"{table_path}, row {i}: path {path!r} is not a file inside the table's folder {folder}")
        labels.append(CLASS_NAMES.index(name))
        paths.append(str(file))
    duplicated = pd.Series(paths).duplicated()
    if duplicated.any():
        raise DataError(f"{table_path}, row {int(np.flatnonzero(duplicated)[0]) + 2}: an image listed twice")
    table = pd.DataFrame(
        {
            "image_id": raw["path"].str.strip(),
            "stem": raw["path"].str.strip(),
            "path": paths,
            "label": labels,
            "label_name": [CLASS_NAMES[i] for i in labels],
        }
    )
    table["group"] = _groups(raw, table_path)
    for column, source in (
        ("center", ("center", "centre")),
        ("age", ("age",)),
        ("gender", ("sex", "gender")),
        ("site", ("site",)),
        ("region", ("region",)),
    ):
        found = next((s for s in source if s in raw), None)
        if found is not None:
            table[column] = pd.to_numeric(raw[found], errors="coerce") if column == "age" else raw[found].str.strip()
    if "center" not in table:
        table["center"] = "unknown"
    extra = tuple(c for c in raw.columns if c not in KNOWN)
    for column in extra:
        table[column] = raw[column].str.strip()
    table["boxes"] = [_boxes(text, table_path, i) for i, text in enumerate(raw.get("boxes", [""] * len(raw)), 2)]
    table["polygons"] = [()] * len(table)
    table["n_lesions"] = table["boxes"].map(len)
    table["annotation_path"] = ""
    _probe(table, table_path, folder, limits)
    return table, extra


def _groups(raw: pd.DataFrame, table_path: Path) -> np.ndarray:
    column = next((c for c in GROUP_COLUMNS if c in raw), None)
    if column is None:
        log.warning(
            "%s: no group or patient column: each image is its own group in the bootstrap (intervals "
            "assume no patient has two images)",
            table_path,
        )
        return np.arange(len(raw))
    return pd.factorize(raw[column].str.strip())[0]


def _boxes(text: str, table_path: Path, row: int) -> tuple:
    """A ``boxes`` cell: JSON [[x0, y0, x1, y1], ...] of finite numbers (empty: none)."""
    if not str(text).strip():
        return ()
    try:
        boxes = json.loads(text)
        parsed = tuple(tuple(float(v) for v in box) for box in boxes)
        if not all(len(b) == 4 and all(math.isfinite(v) for v in b) and b[0] <= b[2] and b[1] <= b[3] for b in parsed):
            raise ValueError("each box is [x0, y0, x1, y1] of finite numbers, x0 <= x1 and y0 <= y1")
    except (ValueError, TypeError, RecursionError) as exc:
        raise DataError(f"{table_path}, row {row}: boxes {str(text)[:60]!r} cannot be read ({exc})") from None
    return parsed


def _probe(table: pd.DataFrame, table_path: Path, folder: Path, limits: InputLimits) -> None:
    """Each image decoded once (size, fingerprints), or one line naming the first that cannot be."""
    probes = probe_images(table["path"].tolist(), limits, folder)
    for i, probe in enumerate(probes):
        if isinstance(probe, str):
            raise DataError(f"{table_path}, row {i + 2}: {probe}")
    for name, values in zip(PROBED, map(list, zip(*probes, strict=True)), strict=True):
        table[name] = values
