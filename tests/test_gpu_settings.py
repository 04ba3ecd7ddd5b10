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
def test_the_test_part_and_the_operating_points_are_scored_in_float32(
    synth_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """With train.amp=true, validation during training may run in half precision; the thresholds chosen on
    the validation part, the test part and Grad-CAM run in float32, as the logged model serves."""
    from btxrd.cam import explain
    from btxrd.jobs.train import train_job
    from btxrd.tasks import classify

    asked: list[tuple[str, bool]] = []
    real_predict, real_explain = classify.predict_logits, explain.explain_loader
    monkeypatch.setattr(
        classify,
        "predict_logits",
        lambda m, loader, i, amp: asked.append(("predict", amp)) or real_predict(m, loader, i, amp),
    )
    monkeypatch.setattr(
        explain,
        "explain_loader",
        lambda m, loader, i, amp: asked.append(("cam", amp)) or real_explain(m, loader, i, amp),
    )
    train_job(compose_config(tiny(synth_root, tmp_path, "model.image_size=32", "train.amp=true")))
    # validation (may be half), then calibration, the validation part's predictions, the test part, Grad-CAM
    assert asked == [("predict", True), ("predict", False), ("predict", False), ("predict", False), ("cam", False)]
    [run] = runs(tmp_path)
    assert run.data.params["runtime.deterministic"] == "true"  # train.deterministic=auto, on the CPU


@pytest.fixture
def four_fake_gpus(monkeypatch, tmp_path: Path) -> list:
    """torch sees 4 GPUs (``CUDA_VISIBLE_DEVICES`` names them 4-7): what a job makes current, what it frees."""
    from btxrd.runtime import gpus

    happened: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: happened.append(("current", device.index)))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: happened.append(("freed",)))
    monkeypatch.setattr(gpus, "SLOTS_DIR", tmp_path / "slots")
    monkeypatch.setattr(gpus, "WAIT_S", 0.05)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    return happened


def test_jobs_take_free_gpus_spread_first_then_share_and_wait_when_all_are_taken(four_fake_gpus, tmp_path) -> None:
    """Before: job N on GPU N mod count, whatever ran there; every job also opened a context on GPU 0."""
    import threading

    from btxrd.runtime.environment import job_runtime

    jobs = [job_runtime("auto", 1, jobs_per_gpu=2) for _ in range(8)]
    placed = [job.__enter__().device.index for job in jobs]
    assert placed == [0, 1, 2, 3, 0, 1, 2, 3]  # each GPU once before any twice
    assert sorted(p.name for p in (tmp_path / "slots").iterdir())[:2] == ["gpu-4.slot0.lock", "gpu-4.slot1.lock"]
    ninth: list[int] = []
    waiting = threading.Thread(target=lambda: ninth.append(_place_one()))
    waiting.start()
    waiting.join(0.5)
    assert ninth == [] and waiting.is_alive()  # every slot taken: it waits
    four_fake_gpus.clear()
    jobs.pop(6).__exit__(None, None, None)  # the second job on GPU 2 ends
    waiting.join(5)
    assert ninth == [2]  # the slot that came free
    assert four_fake_gpus[0] == ("freed",)  # the ended job's cached memory, released
    assert [e for e in four_fake_gpus if e[0] == "current"] == [("current", 2)]
    for job in jobs:
        job.__exit__(None, None, None)


def _place_one() -> int:
    from btxrd.runtime.environment import job_runtime

    with job_runtime("auto", 1, jobs_per_gpu=2) as runtime:
        return runtime.device.index


def test_an_explicit_gpu_is_made_current_and_cuda_means_a_free_one(four_fake_gpus) -> None:
    from btxrd.runtime.environment import job_runtime

    with job_runtime("cuda:3", 1) as runtime:
        assert runtime.device == torch.device("cuda", 3) and four_fake_gpus == [("current", 3)]
    with job_runtime("cuda", 1) as first, job_runtime("cuda", 1) as second:  # before: both on cuda:0
        assert (first.device.index, second.device.index) == (0, 1)
