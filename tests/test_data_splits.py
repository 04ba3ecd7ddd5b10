from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from btxrd.data.splits import make_split, write_split_csv
from btxrd.errors import ConfigError
from btxrd.settings import CenterSplitConfig, KFoldSplitConfig, StratifiedSplitConfig

STRATIFIED = StratifiedSplitConfig(name="stratified", seed=0, group_patients=True, train=0.7, val=0.15, test=0.15)
CENTER = CenterSplitConfig(
    name="center", seed=0, group_patients=True, train_centers=[1], test_centers=[2, 3], val_fraction=0.15
)
KFOLD = KFoldSplitConfig(name="kfold", seed=0, group_patients=True, k=4, fold=0, test=0.15)
ALL = (0, 1, 2)


def make_table(n_groups: int = 600, seed: int = 0) -> pd.DataFrame:
    """Groups of 1-4 images, each group one class and centre, like patients of the release."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        label = int(rng.choice(3, p=[0.5, 0.4, 0.1]))
        center = int(rng.choice([1, 2, 3], p=[0.78, 0.15, 0.07]))
        rows += [
            {"image_id": f"IMG{len(rows) + i:06d}.jpeg", "label": label, "center": center, "group": g}
            for i in range(int(rng.integers(1, 5)))
        ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("spec", [STRATIFIED, CENTER, KFOLD], ids=lambda s: s.name)
def test_parts_are_disjoint_cover_and_keep_groups_together(spec: dict) -> None:
    table = make_table()
    parts = make_split(table, spec, ALL)
    assert len(parts) == len(table) and parts.notna().all()
    assert set(parts) <= {"train", "val", "test", "unused"}
    assert table.assign(part=parts).groupby("group")["part"].nunique().max() == 1
    assert make_split(table, spec, ALL).equals(parts)  # deterministic
    assert not make_split(table, replace(spec, seed=1), ALL).equals(parts)


def test_stratified_fractions_hold_per_class_and_centre() -> None:
    table = make_table(1500)
    parts = make_split(table, STRATIFIED, ALL)
    for (label, center), cell in table.groupby(["label", "center"]):
        if len(cell) < 60:
            continue
        share = parts[cell.index].value_counts(normalize=True)
        assert share["train"] == pytest.approx(0.7, abs=0.05), (label, center)
        assert share["test"] == pytest.approx(0.15, abs=0.05), (label, center)


def test_without_grouping_images_of_one_patient_are_split() -> None:
    table = make_table()
    parts = make_split(table, replace(STRATIFIED, group_patients=False), ALL)
    assert table.assign(part=parts).groupby("group")["part"].nunique().max() > 1


def test_center_split_tests_on_other_centres() -> None:
    table = make_table()
    parts = make_split(table, CENTER, ALL)
    assert set(table.loc[parts == "test", "center"]) == {2, 3}
    assert set(table.loc[parts != "test", "center"]) == {1}
    assert (parts[table["center"] == 1] == "val").mean() == pytest.approx(0.15, abs=0.03)
    only_2 = make_split(table, replace(CENTER, test_centers=[2]), ALL)
    assert set(only_2[table["center"] == 3]) == {"unused"}


def test_kfold_folds_partition_the_non_test_part() -> None:
    table = make_table()
    splits = [make_split(table, replace(KFOLD, fold=f), ALL) for f in range(4)]
    test = splits[0] == "test"
    assert all((s == "test").equals(test) for s in splits)  # the test part is fixed
    vals = np.stack([(s == "val").to_numpy() for s in splits])
    assert (vals.sum(axis=0)[~test.to_numpy()] == 1).all()  # each image validates exactly once


def test_centres_absent_from_the_data_are_named() -> None:
    """(The ranges of split settings are checked with every other setting: test_config.)"""
    with pytest.raises(ConfigError, match=r"split.test_centers: centre\(s\) \[4\] not in the data"):
        make_split(make_table(), replace(CENTER, test_centers=[4]), ALL)


def test_part_lacking_a_class_is_an_error() -> None:
    table = make_table(40)
    table.loc[table["center"] != 1, "label"] = 0  # no tumour outside centre 1
    with pytest.raises(ConfigError, match=r"part 'test' has no benign/malignant image"):
        make_split(table, CENTER, ALL)


def test_split_csv(tmp_path) -> None:
    table = make_table(50)
    parts = make_split(table, STRATIFIED, ALL)
    out = pd.read_csv(write_split_csv(table, parts, tmp_path / "split.csv"))
    assert list(out.columns[:4]) == ["image_id", "part", "label", "center"]
    assert out["part"].tolist() == parts.tolist()


def test_a_group_spanning_two_strata_stays_in_one_part() -> None:
    """Duplicate images can join groups of different classes or centres: the split must not separate them."""
    table = make_table(400)
    joined = table.index[:60:3]  # every third of the first images: join them into one group of mixed strata
    table.loc[joined, "group"] = table.loc[joined[0], "group"]
    for spec in (STRATIFIED, KFOLD):
        parts = make_split(table, spec, ALL)
        assert parts[joined].nunique() == 1
        assert table.assign(part=parts).groupby("group")["part"].nunique().max() == 1


def test_a_centre_split_leaves_out_training_images_duplicated_in_the_test_centres() -> None:
    table = make_table(400)
    test_image = table.index[table["center"] == 2][0]
    train_image = table.index[table["center"] == 1][0]
    table.loc[train_image, "group"] = table.loc[test_image, "group"]  # the same picture in both centres
    parts = make_split(table, CENTER, ALL)
    assert (parts[test_image], parts[train_image]) == ("test", "unused")
