"""Shared fixtures: a small generated BTXRD-format dataset, made once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from btxrd.data.synth import generate

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = PROJECT_ROOT.parent / "shared" / "btxrd-reference"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 160-image synthetic release (read-only: copy it before changing anything)."""
    root = tmp_path_factory.mktemp("synth") / "BTXRD"
    generate(root, n=160, seed=7, size=160)
    return root


@pytest.fixture
def synth_copy(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic release that a test may break."""
    dest = tmp_path / "BTXRD"
    shutil.copytree(synth_root, dest)
    return dest


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Library calls outside Hydra write to ./outputs: keep every test out of the project folder."""
    monkeypatch.chdir(tmp_path)
