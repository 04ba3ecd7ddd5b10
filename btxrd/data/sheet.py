"""The release's metadata sheet (dataset.xlsx): read, checked column by column, remembered as Parquet;
the label of each row and its patient-proxy group."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from btxrd.data.limits import DEFAULT_LIMITS, InputLimits
from btxrd.data.schema import ANATOMY_COLUMNS, FLAG_COLUMNS, IMAGES_DIR, REGION_COLUMNS, SHEET_COLUMNS
from btxrd.errors import DataError
from btxrd.files import file_version, write_atomically

# Rows whose patient-proxy key matches the previous row join its group (a patient proxy:
# consecutive views of one patient share these values; the release has no patient id).
GROUP_KEY_COLUMNS: tuple[str, ...] = (
    ("center", "age", "gender") + ANATOMY_COLUMNS + REGION_COLUMNS + ("tumor", "benign", "malignant")
)


def listed(items: list[str], limit: int = 5) -> str:
    """The first ``limit`` items, and how many more there are: a problem's list, short enough to read."""
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
        raise DataError(f"{path}: missing column(s) {listed([repr(c) for c in missing])}")
    if len(sheet) == 0:
        raise DataError(f"{path}: the sheet has no rows")
    sheet["image_id"] = sheet["image_id"].astype(str).str.strip()
    not_names = [f"{iid!r} (row {i + 2})" for i, iid in enumerate(sheet["image_id"]) if not _file_name(iid)]
    if not_names:
        raise DataError(f"{path}: image_id must be a file name in {IMAGES_DIR}/, not a path: {listed(not_names)}")
    duplicated = sheet.loc[sheet["image_id"].duplicated(), "image_id"].tolist()
    if duplicated:
        raise DataError(f"{path}: duplicated image_id {listed(duplicated)}")
    for col in ("center", "age", *FLAG_COLUMNS):
        values = pd.to_numeric(sheet[col], errors="coerce")
        bad = sheet.loc[~np.isfinite(values.astype(float)), "image_id"].tolist()
        if bad:
            raise DataError(f"{path}: column {col!r} is empty or not a number for {listed(bad)}")
        sheet[col] = values.astype(np.int64)
    not_flag = [c for c in FLAG_COLUMNS if not sheet[c].isin((0, 1)).all()]
    if not_flag:
        raise DataError(f"{path}: flag column(s) {listed(not_flag)} hold values other than 0/1")
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


def read_sheet_memoised(path: Path, memo_dir: Path | None, limits: InputLimits) -> pd.DataFrame:
    """``read_sheet``, remembered as Parquet under ``memo_dir``, keyed by the sheet's path, size and mtime.

    openpyxl takes ~2.5 s for the release's 3,746-row sheet (plus ~0.9 s to import), in every job of a
    sweep; the memo reads in ~0.06 s (measured here). Only a sheet that passed the checks is
    remembered; an edited sheet has another key and is read (and checked) again.
    """
    if memo_dir is None or not path.is_file():
        return read_sheet(path, limits)
    key = hashlib.sha1(f"{path.resolve()}|{file_version(path)}".encode()).hexdigest()[:16]
    memo = Path(memo_dir) / f"sheet_{key}.parquet"
    try:
        return pd.read_parquet(memo)
    except (OSError, ValueError):  # absent (or unreadable: read the sheet again)
        pass
    sheet = read_sheet(path, limits)
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(memo, sheet.to_parquet)
    return sheet


def labels(sheet: pd.DataFrame, path: Path) -> pd.Series:
    """Each row's class (0 normal, 1 benign, 2 malignant) from its flags; contradictory flags name the rows."""
    tumor, benign, malignant = sheet["tumor"], sheet["benign"], sheet["malignant"]
    contradictory = ((tumor == 1) & (benign + malignant != 1)) | ((tumor == 0) & (benign + malignant > 0))
    if contradictory.any():
        rows = [
            f"{iid} (row {i + 2})"
            for i, iid in zip(np.flatnonzero(contradictory), sheet.loc[contradictory, "image_id"], strict=True)
        ]
        raise DataError(f"{path}: contradictory label flags (tumor/benign/malignant) in {listed(rows)}")
    return (benign + 2 * malignant).astype(np.int64)


def flag_names(sheet: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """Each row's set flags among ``columns``, joined by ';'."""
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
