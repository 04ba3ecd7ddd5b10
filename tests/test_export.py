"""`python -m btxrd.export`'s own checks, before any model is loaded (the export itself, against a logged
model: tests/test_predict.py, make test-integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from btxrd.cli import run_cli
from btxrd.export.__main__ import main


def _run(args: list[str]) -> int:
    return run_cli(lambda: main(args))


def test_an_onnx_path_that_cannot_be_written_is_one_line_before_the_model_is_loaded(tmp_path: Path, capsys) -> None:
    unknown_store = ["--tracking-uri", f"sqlite:///{tmp_path / 'never-opened.db'}"]
    assert _run(["models:/m/1", "--onnx", str(tmp_path), *unknown_store]) == 2
    assert (
        capsys.readouterr().err
        == f"error: --onnx {tmp_path}: a folder; give a file name such as {tmp_path / 'model.onnx'}\n"
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert _run(["models:/m/1", "--onnx", str(blocker / "m.onnx"), *unknown_store]) == 2
    assert capsys.readouterr().err.startswith(f"error: --onnx {blocker / 'm.onnx'}: its folder cannot be written (")
    assert not (tmp_path / "never-opened.db").exists()  # stopped before the store was opened


@pytest.mark.parametrize("count", ["0", "-3", "1001"])
def test_a_check_on_no_images_or_too_many_is_refused(tmp_path: Path, count: str, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["models:/m/1", "--onnx", str(tmp_path / "m.onnx"), "--n-images", count])
    assert stopped.value.code == 2
    assert f"--n-images: give 1 to 1000, not {count}" in capsys.readouterr().err
