"""External test sets: a table of path,label over any folder of images, scored like the run's own test part."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from btxrd.data.external import read_external
from btxrd.data.limits import InputLimits
from btxrd.errors import DataError

from .helpers import compose_config, runs, tiny


def _table(folder: Path, rows: list[dict]) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for row in rows:
        if row.get("path", "").startswith("images/") and not (folder / row["path"]).exists():
            Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))).save(folder / row["path"])
    path = folder / "labels.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"path": "images/a.png"}], r"labels.csv: missing column\(s\) label \(needs path and label\)"),
        (
            [{"path": "images/a.png", "label": "benign"}, {"path": "images/b.png", "label": "tumour"}],
            r"labels.csv, row 3: label 'tumour' is not one of normal, benign, malignant",
        ),
        (
            [{"path": "images/a.png", "label": "normal"}, {"path": "../x.png", "label": "normal"}],
            r"labels.csv, row 3: path '../x.png' is not a file inside the table's folder",
        ),
        (
            [{"path": "images/a.png", "label": "normal"}, {"path": "images/a.png", "label": "benign"}],
            r"labels.csv, row 3: an image listed twice",
        ),
        (
            [{"path": "images/a.png", "label": "normal", "boxes": "[[1, 2, 3]]"}],
            r"labels.csv, row 2: boxes '\[\[1, 2, 3\]\]' cannot be read",
        ),
    ],
)
def test_a_table_it_cannot_use_is_one_line_naming_the_row(tmp_path: Path, rows: list[dict], message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_external(_table(tmp_path, rows), InputLimits())


def test_a_missing_file_names_its_row(tmp_path: Path) -> None:
    table = _table(tmp_path, [{"path": "images/a.png", "label": "normal"}])
    with table.open("a") as f:
        f.write("images/gone.png,malignant\n")
    with pytest.raises(DataError, match=r"labels.csv, row 3: .*gone.png \(missing\)"):
        read_external(table, InputLimits())


def test_optional_columns_become_groups_subgroups_and_boxes(tmp_path: Path) -> None:
    rows = [
        {
            "path": f"images/{i}.png",
            "label": "benign",
            "Patient": f"p{i // 2}",
            "Sex": "F",
            "Scanner": "X1",
            "boxes": "[[4, 4, 20, 30]]" if i == 0 else "",
        }
        for i in range(4)
    ]
    table, extra = read_external(_table(tmp_path, rows), InputLimits())
    assert table["group"].tolist() == [0, 0, 1, 1] and extra == ("scanner",)
    assert table["gender"].tolist() == ["F"] * 4 and table["boxes"][0] == ((4.0, 4.0, 20.0, 30.0),)
    assert (table["width"] == 64).all() and (table["label_name"] == "benign").all()


@pytest.mark.integration  # 5-13 s: make test-integration (make test's 5 minutes; CI runs both)
@pytest.mark.slow
def test_the_runs_test_images_as_png_files_score_as_its_own_test_part(synth_root: Path, tmp_path: Path) -> None:
    """A CSV of exactly the run's test images, converted to PNG, scored by evaluate.py as a nested run:
    its metrics and intervals are the run's own test metrics."""
    from btxrd.data.reader import load_dataset
    from btxrd.jobs.evaluate import evaluate_job
    from btxrd.jobs.train import train_job

    train_job(compose_config(tiny(synth_root, tmp_path, "model.image_size=32")))
    [run] = runs(tmp_path)
    [split_csv] = (tmp_path / "outputs").rglob("split.csv")
    split = pd.read_csv(split_csv)
    dataset = load_dataset(synth_root).set_index("image_id")
    external = tmp_path / "hospital"
    (external / "png").mkdir(parents=True)
    rows = []
    for image_id in split.loc[split["part"] == "test", "image_id"]:
        source = dataset.loc[image_id]
        png = f"png/{Path(image_id).stem}.png"
        Image.open(source["path"]).convert("L").save(external / png)
        rows.append(
            {
                "path": png,
                "label": source["label_name"],
                "patient": source["group"],
                "centre": source["center"],
                "age": source["age"],
                "sex": source["gender"],
                "boxes": json.dumps([list(b) for b in source["boxes"]]) if source["boxes"] else "",
            }
        )
    table = external / "labels.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    metrics = evaluate_job(
        compose_config([f"run_id={run.info.run_id}", f"external={table}", f"paths.root={tmp_path}"], "evaluate")
    )
    own = run.data.metrics
    for name in ("accuracy", "macro_f1", "auroc_macro", "ece", "brier", "malignant_recall", "cam_pointing"):
        for suffix in ("", "_ci_low", "_ci_high"):
            assert metrics[f"external_{name}{suffix}"] == pytest.approx(own[f"test_{name}{suffix}"], abs=1e-6), name
    [evaluation] = [r for r in runs(tmp_path) if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
    assert evaluation.info.status == "FINISHED" and evaluation.data.tags["external"] == str(table)
    [subgroups] = (tmp_path / "outputs").rglob("subgroups_external.csv")
    assert {"centre", "sex", "age band"} <= set(pd.read_csv(subgroups)["attribute"])
