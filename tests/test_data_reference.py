"""The reader against the real release's metadata and annotation files (no pixels).

Uses the release's files at ``conftest.REFERENCE`` (never copied into the project); skips when absent.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from btxrd.data.annotations import read_annotation
from btxrd.data.sheet import patient_groups, read_sheet
from btxrd.data.splits import make_split
from btxrd.settings import StratifiedSplitConfig

from .conftest import REFERENCE

pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"{REFERENCE} not present")


@pytest.fixture(scope="module")
def real_sheet() -> pd.DataFrame:
    return read_sheet(REFERENCE / "dataset.xlsx")


def test_real_class_and_centre_counts(real_sheet: pd.DataFrame) -> None:
    label = real_sheet["benign"] + 2 * real_sheet["malignant"]
    assert len(real_sheet) == 3746
    assert label.value_counts().sort_index().tolist() == [1879, 1525, 342]
    table = pd.crosstab(real_sheet["center"], label)
    assert table.to_numpy().tolist() == [[1593, 1110, 235], [259, 214, 76], [27, 201, 31]]
    assert real_sheet["image_id"].str.endswith(".jpg").sum() == 27


def test_real_patient_proxy_groups(real_sheet: pd.DataFrame) -> None:
    groups = patient_groups(real_sheet)
    sizes = np.bincount(groups)
    assert len(sizes) == 1944 and sizes.max() == 15
    assert (sizes[groups] > 1).mean() == pytest.approx(0.76, abs=0.01)


def test_real_grouped_split_keeps_patients_together(real_sheet: pd.DataFrame) -> None:
    table = pd.DataFrame(
        {
            "label": real_sheet["benign"] + 2 * real_sheet["malignant"],
            "center": real_sheet["center"],
            "group": patient_groups(real_sheet),
        }
    )
    spec = StratifiedSplitConfig(name="stratified", seed=0, group_patients=True, train=0.7, val=0.15, test=0.15)
    parts = make_split(table, spec, (0, 1, 2))
    assert table.assign(part=parts).groupby("group")["part"].nunique().max() == 1
    assert (parts == "test").mean() == pytest.approx(0.15, abs=0.01)


def test_every_real_annotation_parses_to_its_lesion_count() -> None:
    files = sorted((REFERENCE / "Annotations").glob("*.json"))
    assert len(files) == 48
    sizes = pd.read_csv(REFERENCE / "image_sizes.csv").set_index("image_id")
    for path in files:
        raw = json.loads(path.read_bytes())
        kinds = [s["shape_type"] for s in raw["shapes"]]
        ann = read_annotation(path)
        assert ann.n_lesions == max(kinds.count("rectangle"), kinds.count("polygon")), path.name
        assert ann.n_lesions >= 1
        assert (ann.width, ann.height) == tuple(sizes.loc[f"{path.stem}.jpeg", ["width", "height"]])
    assert read_annotation(REFERENCE / "Annotations" / "IMG000962.json").n_lesions == 6
    odd = read_annotation(REFERENCE / "Annotations" / "IMG001636.json")
    assert (len(odd.boxes), len(odd.polygons), odd.n_lesions) == (2, 1, 2)
