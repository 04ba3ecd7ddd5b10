"""Settings that are right on a GPU, checked without one: mixed precision, determinism, the precision
a model is scored in. (On a GPU, tests/test_cuda.py runs them for real.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from btxrd.engine.inputs import amp_dtype
from btxrd.runtime.environment import CUBLAS_WORKSPACE, seed_everything

from .helpers import compose_config, runs, tiny

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, native: bool, expected: torch.dtype) -> None:
    """A V100 or T4 emulates bf16 (slowly, without loss scaling): ``is_bf16_supported()`` says yes unless
    asked without emulation; such a GPU trains in fp16 with a loss scaler."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert amp_dtype(CUDA) == expected
    assert amp_dtype(CPU) is None


def test_determinism_auto_is_strict_on_the_cpu_and_fast_on_a_gpu(monkeypatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        assert seed_everything(0, None, CPU) is True and torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
        assert seed_everything(0, None, CUDA) is False and torch.backends.cudnn.benchmark  # autotuned kernels
        assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        assert seed_everything(0, True, CUDA) is True  # asked for: deterministic on the GPU too
        assert torch.backends.cudnn.deterministic and os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    finally:
        seed_everything(0, None, CPU)


@pytest.mark.slow
def test_the_test_part_and_the_operating_points_are_scored_in_float32(synth_root: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:  # fmt: skip
    """With train.amp=true, validation during training may run in half precision; the thresholds chosen on
    the validation part, the test part and Grad-CAM run in float32, as the logged model serves."""
    from btxrd.cam import explain
    from btxrd.jobs.train import train_job
    from btxrd.tasks import classify

    asked: list[tuple[str, bool]] = []
    real_predict, real_explain = classify.predict, explain.explain_loader
    monkeypatch.setattr(classify, "predict", lambda m, loader, i, amp: asked.append(("predict", amp))
                        or real_predict(m, loader, i, amp))  # fmt: skip
    monkeypatch.setattr(explain, "explain_loader", lambda m, loader, i, amp: asked.append(("cam", amp))
                        or real_explain(m, loader, i, amp))  # fmt: skip
    train_job(compose_config(tiny(synth_root, tmp_path, "model.image_size=32", "train.amp=true")))
    assert asked == [("predict", True), ("predict", False), ("predict", False), ("cam", False)]
    [run] = runs(tmp_path)
    assert run.data.params["runtime.deterministic"] == "true"  # train.deterministic=auto, on the CPU
