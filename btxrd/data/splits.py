"""Train/val/test splits: stratified, by centre, k-fold; all patient-proxy grouped.

The release has no patient id, and consecutive rows are often views of one patient
(see ``reader.patient_groups``): splitting image by image would put views of one
patient on both sides. Every split here assigns whole groups to parts (unless
``group_patients`` is off), stratified by class and centre, deterministically
from the seed. The result is one part name per image: ``train``, ``val``,
``test`` or, for centres a centre split does not use, ``unused``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from btxrd.data.schema import CLASS_NAMES
from btxrd.errors import ConfigError

PARTS = ("train", "val", "test")
SPLIT_NAMES = ("stratified", "center", "kfold")


def _check_fraction(key: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ConfigError(f"split.{key}={value} is out of range: it must lie strictly between 0 and 1")
    return value


def _assign_groups(
    strata: np.ndarray, groups: np.ndarray, fractions: Mapping[str, float], rng: np.random.Generator
) -> np.ndarray:
    """Give every group one part so that each stratum ("label|centre") is divided by ``fractions``.

    Groups of one stratum are visited in a seeded random order; each goes to the part furthest
    below its target share, ties broken at random. Targets are cumulative over the centres of
    one class, so the rounding left over by a small centre carries to the next: every part gets
    its share of a rare class even when each centre holds only a few of its images.
    """
    names = list(fractions)
    shares = np.asarray([fractions[n] for n in names], dtype=float)
    shares = shares / shares.sum()
    out = np.empty(len(groups), dtype=object)
    labels = np.asarray([str(s).split("|", 1)[0] for s in strata])
    for label in np.unique(labels):
        filled = np.zeros(len(names))
        total = 0
        for stratum in np.unique(strata[labels == label]):
            rows = np.flatnonzero(strata == stratum)
            stratum_groups = np.unique(groups[rows])
            rng.shuffle(stratum_groups)
            total += len(rows)
            for group in stratum_groups:
                members = rows[groups[rows] == group]
                deficit = shares * total - filled
                candidates = np.flatnonzero(deficit >= deficit.max() - 1e-9)
                part = int(candidates[0] if len(candidates) == 1 else rng.choice(candidates))
                out[members] = names[part]
                filled[part] += len(members)
    return out


def make_split(table: pd.DataFrame, spec: Mapping[str, Any], required_classes: Sequence[int] = ()) -> pd.Series:
    """One part name per row of ``table`` for the split described by ``spec`` (cfg.split as a dict)."""
    name = spec.get("name")
    if name not in SPLIT_NAMES:
        raise ConfigError(f"split.name={name!r} is not a split; choose one of {', '.join(SPLIT_NAMES)}")
    rng = np.random.default_rng(int(spec.get("seed", 0)))
    grouped = bool(spec.get("group_patients", True))
    groups = table["group"].to_numpy() if grouped else np.arange(len(table))
    strata = (table["label"].astype(str) + "|" + table["center"].astype(str)).to_numpy()
    parts = np.full(len(table), "unused", dtype=object)

    if name == "stratified":
        fractions = {p: _check_fraction(p, spec[p]) for p in PARTS}
        if abs(sum(fractions.values()) - 1.0) > 1e-6:
            raise ConfigError(
                f"split.train + split.val + split.test = {sum(fractions.values()):.3f}; they must sum to 1"
            )
        parts[:] = _assign_groups(strata, groups, fractions, rng)
    elif name == "center":
        train_centers = [int(c) for c in spec["train_centers"]]
        test_centers = [int(c) for c in spec["test_centers"]]
        present = set(table["center"].unique().tolist())
        for key, centers in (("train_centers", train_centers), ("test_centers", test_centers)):
            if not centers:
                raise ConfigError(f"split.{key} is empty")
            absent = [c for c in centers if c not in present]
            if absent:
                raise ConfigError(
                    f"split.{key}: centre(s) {absent} not in the data (centres present: {sorted(present)})"
                )
        overlap = sorted(set(train_centers) & set(test_centers))
        if overlap:
            raise ConfigError(f"split.train_centers and split.test_centers share centre(s) {overlap}")
        val = _check_fraction("val_fraction", spec["val_fraction"])
        source = table["center"].isin(train_centers).to_numpy()
        parts[source] = _assign_groups(strata[source], groups[source], {"train": 1 - val, "val": val}, rng)
        parts[table["center"].isin(test_centers).to_numpy()] = "test"
    else:  # kfold: a fixed test part, k folds over the rest, fold `fold` is validation
        k, fold = int(spec["k"]), int(spec["fold"])
        if k < 2:
            raise ConfigError(f"split.k={k}: k-fold needs at least 2 folds")
        if not 0 <= fold < k:
            raise ConfigError(f"split.fold={fold} is out of range for split.k={k} (0..{k - 1})")
        test = _check_fraction("test", spec["test"])
        outer = _assign_groups(strata, groups, {"test": test, "rest": 1 - test}, rng)
        rest = outer == "rest"
        folds = _assign_groups(strata[rest], groups[rest], {str(i): 1.0 for i in range(k)}, rng)
        parts[~rest] = "test"
        parts[rest] = np.where(folds == str(fold), "val", "train")

    result = pd.Series(parts, index=table.index, name="part")
    _check_parts(result, table, name, required_classes)
    return result


def _check_parts(parts: pd.Series, table: pd.DataFrame, name: str, required_classes: Sequence[int]) -> None:
    for part in PARTS:
        labels = set(table.loc[parts == part, "label"].tolist())
        if not labels:
            raise ConfigError(f"split={name}: part '{part}' would be empty (dataset too small for this split?)")
        missing = [CLASS_NAMES[c] for c in required_classes if c not in labels]
        if missing:
            raise ConfigError(
                f"split={name}: part '{part}' has no {'/'.join(missing)} image; "
                "use more data or other split fractions/centres"
            )


def split_table(table: pd.DataFrame, parts: pd.Series) -> pd.DataFrame:
    """The split as a table (image_id, part, label, center, group), for runs to log as CSV."""
    return pd.DataFrame(
        {
            "image_id": table["image_id"],
            "part": parts,
            "label": table["label"],
            "center": table["center"],
            "group": table["group"],
        }
    )


def write_split_csv(table: pd.DataFrame, parts: pd.Series, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    split_table(table, parts).to_csv(path, index=False)
    return path
