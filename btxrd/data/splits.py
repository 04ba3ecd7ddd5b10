"""Train/val/test splits: stratified, by centre, k-fold; all patient-proxy grouped.

The release has no patient id, and consecutive rows are often views of one patient
(see ``sheet.patient_groups``): splitting image by image would put views of one
patient on both sides. Every split here assigns whole groups to parts (unless
``group_patients`` is off), stratified by class and centre, deterministically
from the seed. The result is one part name per image: ``train``, ``val``,
``test`` or, for centres a centre split does not use, ``unused``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from btxrd.data.schema import CLASS_NAMES
from btxrd.errors import ConfigError
from btxrd.settings import CenterSplitConfig, KFoldSplitConfig, SplitConfig, StratifiedSplitConfig

PARTS = ("train", "val", "test")


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
    # A group counts in the stratum of its first image: duplicate images may join groups of two strata,
    # and a group must get one part. (Patient groups alone never span strata: unchanged for them.)
    _, first, index = np.unique(groups, return_index=True, return_inverse=True)
    strata = np.asarray(strata)[first][index]
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


def make_split(table: pd.DataFrame, spec: SplitConfig, required_classes: Sequence[int] = ()) -> pd.Series:
    """One part name per row of ``table`` for the split ``spec`` (its ranges already checked by the schema)."""
    rng = np.random.default_rng(spec.seed)
    groups = table["group"].to_numpy() if spec.group_patients else np.arange(len(table))
    strata = (table["label"].astype(str) + "|" + table["center"].astype(str)).to_numpy()
    parts = np.full(len(table), "unused", dtype=object)

    if isinstance(spec, StratifiedSplitConfig):
        fractions = {p: getattr(spec, p) for p in PARTS}
        parts[:] = _assign_groups(strata, groups, fractions, rng)
    elif isinstance(spec, CenterSplitConfig):
        present = set(table["center"].unique().tolist())
        for key, centers in (("train_centers", spec.train_centers), ("test_centers", spec.test_centers)):
            absent = [c for c in centers if c not in present]
            if absent:
                raise ConfigError(
                    f"split.{key}: centre(s) {absent} not in the data (centres present: {sorted(present)})"
                )
        val = spec.val_fraction
        test = table["center"].isin(spec.test_centers).to_numpy()
        # A training-centre image whose group reaches into the test centres (a duplicate of a test
        # image) would leak: it is left out of training and validation.
        source = table["center"].isin(spec.train_centers).to_numpy() & ~np.isin(groups, groups[test])
        parts[source] = _assign_groups(strata[source], groups[source], {"train": 1 - val, "val": val}, rng)
        parts[test] = "test"
    elif isinstance(spec, KFoldSplitConfig):  # a fixed test part, k folds over the rest, fold `fold` validates
        outer = _assign_groups(strata, groups, {"test": spec.test, "rest": 1 - spec.test}, rng)
        rest = outer == "rest"
        folds = _assign_groups(strata[rest], groups[rest], {str(i): 1.0 for i in range(spec.k)}, rng)
        parts[~rest] = "test"
        parts[rest] = np.where(folds == str(spec.fold), "val", "train")
    else:
        raise TypeError(f"not a split config: {spec!r}")

    result = pd.Series(parts, index=table.index, name="part")
    _check_parts(result, table, spec.name, required_classes)
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
    """The split as a table, for runs to log as CSV: image_id, part, label, center, group (what the
    split kept together: the patient proxy joined with duplicate images) and patient_group."""
    return pd.DataFrame(
        {
            "image_id": table["image_id"],
            "part": parts,
            "label": table["label"],
            "center": table["center"],
            "group": table["group"],
            "patient_group": table.get("patient_group", table["group"]),
        }
    )


def write_split_csv(table: pd.DataFrame, parts: pd.Series, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    split_table(table, parts).to_csv(path, index=False)
    return path
