from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from .conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow  # each test runs the command in a process of its own


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "btxrd.data", *args], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120
    )


def test_check_json_reports_counts(synth_root: Path) -> None:
    result = run("check", str(synth_root), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    sheet = pd.read_excel(synth_root / "dataset.xlsx")
    assert summary["n_images"] == 160
    assert summary["by_class"] == {
        "normal": int((sheet["tumor"] == 0).sum()),
        "benign": int(sheet["benign"].sum()),
        "malignant": int(sheet["malignant"].sum()),
    }
    assert summary["by_center"]["3"]["malignant"] == int(((sheet["center"] == 3) & (sheet["malignant"] == 1)).sum())
    assert summary["n_annotated"] == int(sheet["tumor"].sum())
    assert summary["n_lesions"] >= summary["n_annotated"]
    assert summary["problems"] == []
    # the generated release holds no duplicates (distinct pictures differ in dozens of hash bits)
    assert summary["duplicates"] == [] and summary["n_groups"] == summary["n_patient_groups"]


def test_check_names_duplicates_with_the_configured_threshold(synth_copy: Path) -> None:
    import shutil

    images = sorted((synth_copy / "images").iterdir())
    shutil.copyfile(images[0], images[50])
    result = run("check", str(synth_copy), "--json")
    duplicates = json.loads(result.stdout)["duplicates"]
    assert [(d["image_a"], d["image_b"], d["exact"]) for d in duplicates] == [(images[0].name, images[50].name, True)]


def test_check_text_table_and_broken_dataset(synth_copy: Path) -> None:
    ok = run("check", str(synth_copy))
    assert ok.returncode == 0 and "usable: yes" in ok.stdout and "malignant" in ok.stdout
    sheet = pd.read_excel(synth_copy / "dataset.xlsx").drop(columns=["center"])
    sheet.to_excel(synth_copy / "dataset.xlsx", index=False)
    broken = run("check", str(synth_copy), "--json")
    assert broken.returncode == 1
    problems = json.loads(broken.stdout)["problems"]
    assert problems == [f"error: {synth_copy / 'dataset.xlsx'}: missing column(s) 'center'"]


def test_synth_command_writes_a_checkable_dataset(tmp_path: Path) -> None:
    result = run("synth", str(tmp_path / "d"), "--n", "30", "--seed", "1", "--size", "64")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "d" / "images").iterdir())) == 30
    assert run("check", str(tmp_path / "d")).returncode == 0
