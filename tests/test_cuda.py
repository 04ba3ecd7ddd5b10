"""The CUDA path, run for real where a GPU is present (skipped elsewhere): bf16 autocast, channels_last,
checkpoints that move between devices, evaluate.py on the GPU. CPU-only guarantees (bit-exact
determinism, resume equals uninterrupted) are tested on the CPU everywhere (train.device=cpu)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from btxrd.data.cache import cache_for
from btxrd.data.dataset import BTXRDImages
from btxrd.data.loaders import collate_batch, make_loader
from btxrd.data.reader import load_dataset
from btxrd.engine import InputPipeline, fit, load_checkpoint
from btxrd.jobs.train import train_job
from btxrd.models import build_model
from btxrd.tasks import make_task
from btxrd.tasks.classify import predict

from .helpers import compose_config, run_script, settings, tiny

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


class _Items(TensorDataset):
    @property
    def labels(self) -> np.ndarray:
        return self.tensors[1].numpy()


def _fixed_batch(n: int = 16, size: int = 64) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % 3
    masks = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    masks[..., size // 4 : size // 2, size // 4 : size // 2] = 1
    return DataLoader(
        _Items(images, labels, masks, labels > 0, torch.arange(n)), batch_size=n, collate_fn=collate_batch
    )


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=b0"],
        ["model=b3"],
        ["model=resnet50_cbam"],
        ["model=resnet50_cbam", "annotations=on"],
        ["task=reconstruct"],
        ["task=reconstruct", "model=ae_attention", "model.base_channels=16"],
    ],
    ids=lambda o: "-".join(v.split("=")[1] for v in o),
)
def test_amp_training_on_cuda_runs_in_bf16_channels_last_and_learns(overrides: list[str], tmp_path: Path) -> None:
    run = settings(["debug=tiny", "train.device=cuda", "train.epochs=8", "train.warmup_epochs=0", *overrides])
    task = make_task(run)
    model = build_model(run.model)
    loader = _fixed_batch()
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen: list[tuple[torch.dtype, bool]] = []
    # (1-channel inputs are channels_last and contiguous at once: the first conv's output tells)
    first_conv.register_forward_hook(
        lambda m, args, out: seen.append(
            (out.dtype, out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous())
        )
    )
    result = fit(
        model,
        loader,
        loader,
        task.objective(model),
        run.train,
        monitor=task.monitor,
        seed=0,
        device=torch.device("cuda"),
        out_dir=tmp_path,
    )
    losses = [row["train_loss"] for row in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert seen[0] == (torch.bfloat16, True)  # autocast in bf16, activations in channels_last
    assert first_conv.weight.is_cuda and first_conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def trained_on_gpu(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("gpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        train_job(
            compose_config(tiny(synth_root, work, "tracking.enabled=false", "train.epochs=3", "train.device=cuda"))
        )
    [checkpoint] = (work / "checkpoints").glob("*/best.pt")
    return work / "outputs", checkpoint


def test_a_checkpoint_written_on_the_gpu_predicts_the_same_on_the_cpu(trained_on_gpu, synth_root: Path) -> None:
    out, checkpoint = trained_on_gpu
    run = settings(tiny(synth_root, out.parent, "train.device=cpu"))
    model = build_model(run.model)
    model.load_state_dict(load_checkpoint(checkpoint)["model"])  # tensors mapped to the CPU
    table = load_dataset(synth_root, read_annotations=False)
    split = pd.read_csv(out / "split.csv")
    rows = table[split["part"].to_numpy() == "test"].reset_index(drop=True)
    loader = make_loader(
        BTXRDImages(rows, cache_for(table, 64, run.data), 64, train=False),
        32,
        train=False,
        workers=0,
        device=torch.device("cpu"),
    )
    probs, _, _ = predict(model, loader, InputPipeline(torch.device("cpu"), make_task(run).input_spec()), amp=False)
    on_gpu = pd.read_csv(out / "predictions_test.csv")[["p_normal", "p_benign", "p_malignant"]].to_numpy()
    difference = np.abs(probs - on_gpu).max()
    print(f"largest |p_cpu(float32) - p_gpu(float32)| over the test part: {difference:.5f}")
    assert difference < 0.01  # both scored in float32 (the GPU's convolutions in TF32), as the logged model serves
    assert (probs.argmax(1) == on_gpu.argmax(1)).mean() >= 0.9


def test_evaluate_on_the_gpu_reproduces_the_run(trained_on_gpu, tmp_path: Path) -> None:
    out, checkpoint = trained_on_gpu
    result = run_script(
        "evaluate.py",
        [f"checkpoint={checkpoint}", "tracking.enabled=false", "device=cuda", f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    trained = json.loads((out / "metrics_test.json").read_text())
    evaluated = json.loads((tmp_path / "eval" / "metrics_test.json").read_text())
    for key, value in evaluated.items():
        assert value == pytest.approx(trained[key], abs=1e-4, nan_ok=True), key
