from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from btxrd.data.cache import cache_for
from btxrd.data.dataset import BTXRDImages
from btxrd.data.loaders import make_loader
from btxrd.data.reader import load_dataset
from btxrd.data.schema import CLASS_NAMES
from btxrd.engine import InputPipeline
from btxrd.errors import ConfigError
from btxrd.jobs.train import train_job
from btxrd.metrics.reconstruction import psnr, ssim
from btxrd.models import build_model, list_models
from btxrd.models.autoencoders import AttentionAutoencoder, ResidualAutoencoder
from btxrd.models.blocks import CBAM, PreActResidualBlock, ResidualBlockWithCBAM
from btxrd.models.memory import autoencoder_params, saved_activation_bytes
from btxrd.tasks.reconstruct import RAW, reconstruct

from .helpers import compose_config, settings, tiny


def n_cbam(model: torch.nn.Module) -> int:
    return sum(isinstance(m, CBAM) for m in model.modules())


@pytest.mark.parametrize("cls", [ResidualAutoencoder, AttentionAutoencoder])
def test_full_size_shapes_bounds_and_compression(cls) -> None:
    torch.manual_seed(0)
    model = cls().eval()  # base 64, latent 16, 256 px
    with torch.no_grad():
        x_hat, z = model(torch.rand(1, 1, 256, 256))
    assert z.shape == (1, 16, 16, 16) and x_hat.shape == (1, 1, 256, 256)
    assert 0 <= float(x_hat.min()) and float(x_hat.max()) <= 1
    assert model.get_compression_ratio() == 16.0 and model.get_latent_size() == (16, 16, 16)
    counts = model.count_parameters()
    assert counts["total"] == counts["encoder"] + counts["decoder"] == sum(p.numel() for p in model.parameters())
    assert n_cbam(model) == (16 if cls is AttentionAutoencoder else 0)
    torch.testing.assert_close(
        model.decode(model.encode(torch.zeros(1, 1, 256, 256))), model(torch.zeros(1, 1, 256, 256))[0]
    )


@pytest.mark.parametrize("cls", [ResidualAutoencoder, AttentionAutoencoder])
def test_untrained_output_is_not_saturated(cls) -> None:
    """Un-normalised pre-activation sums once drove B's sigmoid 99% into saturation: no gradient."""
    torch.manual_seed(0)
    model = cls(base_channels=16, image_size=128).train()
    with torch.no_grad():
        x_hat, z = model(torch.rand(4, 1, 128, 128))
    assert float((x_hat - 0.5).abs().gt(0.49).float().mean()) < 0.05
    assert float(z.std()) < 10
    gates = []  # CBAM's channel gates: once started pinned at 0 or 1 (He fan-out init on a 1-output conv)
    for module in model.modules():
        if isinstance(module, CBAM):
            module.register_forward_hook(
                lambda m, args, out: gates.append(
                    torch.sigmoid(m.mlp(args[0].mean((2, 3), keepdim=True)) + m.mlp(args[0].amax((2, 3), keepdim=True)))
                )
            )
    with torch.no_grad():
        model(torch.rand(4, 1, 128, 128))
    if gates:
        pinned = torch.cat([g.flatten() for g in gates])
        assert float(((pinned < 0.05) | (pinned > 0.95)).float().mean()) < 0.05


def test_blocks() -> None:
    block = PreActResidualBlock(8, 16, stride=2)
    assert isinstance(block.shortcut, torch.nn.Conv2d)
    assert isinstance(PreActResidualBlock(8, 8).shortcut, torch.nn.Identity)
    assert block(torch.randn(2, 8, 32, 32)).shape == (2, 16, 16, 16)
    attention = CBAM(32, reduction=16, kernel_size=7)
    assert attention.spatial.kernel_size == (7, 7) and attention.mlp[0].out_channels == 4  # floor of 4
    assert CBAM(128, reduction=16).mlp[0].out_channels == 8
    x = torch.randn(2, 32, 8, 8)
    assert attention(x).shape == x.shape
    combined = ResidualBlockWithCBAM(8, 8)
    assert list(dict(combined.named_children())) == ["block", "cbam"]  # CBAM after the block
    torch.testing.assert_close(combined(x[:, :8]), combined.cbam(combined.block(x[:, :8])))


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = AttentionAutoencoder(base_channels=8, image_size=64)
    x = torch.rand(2, 1, 64, 64)
    x_hat, _ = model(x)
    torch.nn.functional.mse_loss(x_hat, x).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert any(".cbam." in name for name, _ in model.named_parameters())


def test_registry_and_task_switch() -> None:
    assert list_models(task="reconstruct") == ["ae_attention", "ae_residual"]
    assert list_models(task="classify") == ["b0", "b3", "resnet50_cbam"]
    run = settings(["task=reconstruct", "model=ae_attention", "model.base_channels=8", "model.latent_channels=4",
                    "model.image_size=64"])  # fmt: skip
    model = build_model(run.model)
    assert isinstance(model, AttentionAutoencoder) and model.get_latent_size() == (4, 4, 4)
    with pytest.raises(ConfigError, match=r"^model.pretrained=true: there are no ImageNet weights for the autoenc"):
        build_model(settings(["task=reconstruct", "model.pretrained=true"]).model)


def test_psnr_and_ssim() -> None:
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert float(ssim(noisy, x).max()) < 0.9
    assert torch.allclose(psnr(torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.1)), torch.tensor([20.0]))


def test_activation_memory_is_measured_and_linear() -> None:
    model = ResidualAutoencoder(base_channels=8, image_size=64)
    one = saved_activation_bytes(model, 1, 64)
    two = saved_activation_bytes(model, 2, 64)
    four = saved_activation_bytes(model, 4, 64)
    assert one > 64 * 64 * 4 * 8  # at least the stem's output
    assert four - two == pytest.approx(2 * (two - one), rel=0.01)
    params = autoencoder_params(model, 64)
    assert params["model.compression_ratio"] == "16.0" and int(params["memory.activation_mb_batch64"]) > 0


@pytest.mark.slow
def test_one_epoch_of_reconstruction_improves_psnr(synth_root: Path, tmp_path: Path) -> None:
    overrides = tiny(synth_root, tmp_path, "task=reconstruct", "model.base_channels=8", "model.batch_size=8",
                     "tracking.enabled=false")  # fmt: skip
    train_job(compose_config(overrides))
    metrics = json.loads((tmp_path / "outputs" / "metrics_test.json").read_text())
    # The untrained model (same seed, same initialisation) on the same test images.
    run = settings(overrides)
    torch.manual_seed(0)
    untrained = build_model(run.model)
    table = load_dataset(synth_root, read_annotations=False)
    split = pd.read_csv(tmp_path / "outputs" / "split.csv")
    rows = table[split["part"].to_numpy() == "test"].reset_index(drop=True)
    loader = make_loader(BTXRDImages(rows, cache_for(table, 64, run.data), 64, train=False), 32, train=False,
                         workers=0, device=torch.device("cpu"))  # fmt: skip
    before, _, _ = reconstruct(untrained, loader, InputPipeline(torch.device("cpu"), RAW), amp=False)
    assert metrics["test_psnr"] > before["psnr"].mean() + 1.0
    assert (tmp_path / "outputs" / "reconstructions_test.png").stat().st_size > 5000
    assert metrics["epochs_run"] == 1 and "test_psnr_malignant" in metrics
    counts = rows["label"].value_counts()  # per-class scores come from the same pass as the overall one
    weighted = sum(counts[k] * metrics[f"test_psnr_{name}"] for k, name in enumerate(CLASS_NAMES) if k in counts)
    assert weighted / len(rows) == pytest.approx(metrics["test_psnr"], abs=1e-9)
    per_image = pd.read_csv(tmp_path / "outputs" / "reconstruction_test.csv")
    assert len(per_image) == len(rows) and per_image["psnr"].mean() == pytest.approx(metrics["test_psnr"])
