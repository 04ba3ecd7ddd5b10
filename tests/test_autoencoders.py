from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from btxrd.data.cache import cache_for
from btxrd.data.dataset import BTXRDImages
from btxrd.data.loaders import Batch, make_loader
from btxrd.data.reader import load_dataset
from btxrd.data.schema import CLASS_NAMES
from btxrd.engine import InputPipeline
from btxrd.errors import ConfigError
from btxrd.jobs.train import train_job
from btxrd.metrics.reconstruction import psnr, ssim
from btxrd.models import build_model, list_models
from btxrd.models.autoencoders import AttentionAutoencoder, ResidualAutoencoder
from btxrd.models.blocks import CBAM, PreActResidualBlock, ResidualBlockWithCBAM
from btxrd.models.hooks import gate_statistics
from btxrd.models.memory import autoencoder_params, saved_activation_bytes
from btxrd.tasks.reconstruct import RAW, ReconstructionObjective, reconstruct

from .helpers import compose_config, settings, tiny


def n_cbam(model: torch.nn.Module) -> int:
    return sum(isinstance(m, CBAM) for m in model.modules())


VARIANTS = ["B", "C-after", "C-residual"]


def autoencoder(variant: str, *, base_channels: int = 64, image_size: int = 256) -> ResidualAutoencoder:
    """Each autoencoder (CBAM placements included) at its configured latent size: 16 channels, 16x compression."""
    sizes = {"in_channels": 1, "base_channels": base_channels, "latent_channels": 16, "image_size": image_size}
    if variant == "B":
        return ResidualAutoencoder(**sizes)
    return AttentionAutoencoder(**sizes, placement=variant.split("-")[1], reduction=16, kernel_size=7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_size_shapes_bounds_and_compression(variant: str) -> None:
    torch.manual_seed(0)
    model = autoencoder(variant).eval()  # base 64, latent 16, 256 px
    x = torch.rand(1, 1, 256, 256)
    with torch.no_grad():
        x_hat, z = model(x)
        assert torch.equal(model.encode(x), z)
        torch.testing.assert_close(model.decode(z), x_hat)  # the halves compose to the whole model
    assert z.shape == (1, 16, 16, 16) and x_hat.shape == (1, 1, 256, 256)
    assert 0 <= float(x_hat.min()) and float(x_hat.max()) <= 1
    assert model.get_compression_ratio() == 16.0 and model.get_latent_size() == (16, 16, 16)
    counts = model.count_parameters()
    assert counts["total"] == counts["encoder"] + counts["decoder"] == sum(p.numel() for p in model.parameters())
    assert n_cbam(model) == (0 if variant == "B" else 16)


@pytest.mark.parametrize("variant", VARIANTS)
def test_untrained_output_is_not_saturated(variant: str) -> None:
    """Un-normalised pre-activation sums once drove B's sigmoid 99% into saturation: no gradient."""
    torch.manual_seed(0)
    model = autoencoder(variant, base_channels=16, image_size=128).train()
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
    assert CBAM(128, reduction=16, kernel_size=3).mlp[0].out_channels == 8
    x = torch.randn(2, 32, 8, 8)
    assert attention(x).shape == x.shape


def test_cbam_placements() -> None:
    """after: CBAM gates the block's whole output; residual: only the branch, the shortcut passes as is."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 16)
    after = ResidualBlockWithCBAM(8, 16, 2, reduction=16, kernel_size=7, placement="after").eval()
    residual = ResidualBlockWithCBAM(8, 16, 2, reduction=16, kernel_size=7, placement="residual").eval()
    residual.load_state_dict(after.state_dict())  # same weights: only the wiring differs
    with torch.no_grad():
        torch.testing.assert_close(after(x), after.cbam(after.block.branch(x) + after.block.shortcut(x)))
        torch.testing.assert_close(residual(x), residual.cbam(residual.block.branch(x)) + residual.block.shortcut(x))
        assert after(x).shape == residual(x).shape == (2, 16, 8, 8)
        assert not torch.allclose(after(x), residual(x))
        # Gates shut (CBAM outputs zero): a residual-placed block still passes its input along the
        # identity, an after-placed one passes nothing.
        for placement, expected in (("residual", x), ("after", torch.zeros_like(x))):
            block = ResidualBlockWithCBAM(8, 8, 1, reduction=16, kernel_size=7, placement=placement).eval()
            block.cbam.register_forward_hook(lambda module, args, out: torch.zeros_like(out))
            torch.testing.assert_close(block(x), expected)
    with pytest.raises(ValueError, match="CBAM placement 'inside': choose one of after, residual"):
        ResidualBlockWithCBAM(8, 8, 1, reduction=16, kernel_size=7, placement="inside")


def test_gates_initialised_open_start_every_block_near_variant_b() -> None:
    """cbam_gate_bias=3: every gate starts at sigmoid(3) = 0.95 (whatever the input), so an
    after-placed block starts as 0.95^2 = 0.90 x the plain block, not ~0.25 x; the biases learn."""
    torch.manual_seed(0)
    x = torch.randn(4, 8, 16, 16)
    block = ResidualBlockWithCBAM(8, 8, 1, reduction=16, kernel_size=7, placement="after", gate_bias=3.0)
    block.cbam.reset_parameters()
    model = AttentionAutoencoder(
        in_channels=1,
        base_channels=8,
        latent_channels=16,
        image_size=64,
        placement="after",
        reduction=16,
        kernel_size=7,
        gate_bias=3.0,
    )
    with gate_statistics(model) as gates:
        model(torch.rand(4, 1, 64, 64))
    assert gates.metrics("")["channel_gates_mean"] > 0.9 and gates.metrics("")["spatial_gates_mean"] > 0.9
    with torch.no_grad():
        ratio = block(x).norm() / block.block(x).norm()
    assert 0.85 < ratio < 0.95
    torch.nn.functional.mse_loss(block(x), x).backward()
    assert block.cbam.channel_bias.grad.abs().sum() > 0 and block.cbam.spatial.bias.grad.abs().sum() > 0
    assert CBAM(8, 16, 7).spatial.bias is None and CBAM(8, 16, 7).channel_bias is None  # the reference: no biases
    run = settings(["task=reconstruct", "model=ae_attention", "model.cbam_gate_bias=3"])
    assert run.model.cbam_gate_bias == 3.0


def test_gate_statistics_count_closed_and_open_gates() -> None:
    torch.manual_seed(0)
    attention = CBAM(16, reduction=16, kernel_size=3)
    torch.nn.init.zeros_(attention.mlp[2].weight)  # every channel gate sigmoid(0) = 0.5
    torch.nn.init.constant_(attention.spatial.weight, -10.0)  # positive inputs: every spatial gate shut
    x = torch.rand(2, 16, 8, 8) + 0.5
    with gate_statistics(attention) as gates:
        attention(x)
        attention(x)
    assert gates.metrics("val_") == pytest.approx(
        {
            "val_channel_gates_closed": 0.0,
            "val_channel_gates_open": 0.0,
            "val_channel_gates_mean": 0.5,
            "val_spatial_gates_closed": 1.0,
            "val_spatial_gates_open": 0.0,
            "val_spatial_gates_mean": 0.0,
        }
    )
    attention(x)  # the hooks are gone: nothing more is counted
    assert gates.counts["channel"][3] == 2 * 2 * 16 and gates.counts["spatial"][3] == 2 * 2 * 8 * 8


def test_validation_reports_gates_of_attention_models_only() -> None:
    images = (torch.rand(8, 1, 64, 64) * torch.linspace(50, 255, 8).view(8, 1, 1, 1)).to(torch.uint8)
    batch = Batch(
        images, torch.zeros(8, dtype=torch.int64), torch.zeros_like(images), torch.zeros(8, dtype=bool), torch.arange(8)
    )
    objective = ReconstructionObjective(amp=False, ssim_weight=0.0)
    objective.setup(torch.nn.Identity(), torch.device("cpu"), np.zeros(8, dtype=int))
    for variant in VARIANTS:
        torch.manual_seed(0)
        row = objective.validate(autoencoder(variant, base_channels=8, image_size=64), [batch], torch.device("cpu"))
        gate_keys = sorted(k for k in row if "gates" in k)
        assert gate_keys == (
            []
            if variant == "B"
            else sorted(
                f"val_{kind}_gates_{what}" for kind in ("channel", "spatial") for what in ("closed", "open", "mean")
            )
        )
        assert row["val_psnr"] > 0 and all(0 <= row[k] <= 1 for k in gate_keys)


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_gradients_reach_every_parameter(variant: str) -> None:
    torch.manual_seed(0)
    model = autoencoder(variant, base_channels=8, image_size=64)
    # Images of different brightness: with two alike ones, all four hidden ReLUs of a narrow CBAM's
    # channel MLP can be off for the whole batch, a property of that batch, not of the wiring.
    x = torch.rand(8, 1, 64, 64) * torch.linspace(0.2, 1, 8).view(8, 1, 1, 1)
    x_hat, _ = model(x)
    torch.nn.functional.mse_loss(x_hat, x).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert any(".cbam." in name for name, _ in model.named_parameters())


def test_registry_and_task_switch() -> None:
    assert list_models(task="reconstruct") == ["ae_attention", "ae_residual"]
    assert list_models(task="classify") == ["b0", "b3", "resnet50_cbam"]
    run = settings(
        [
            "task=reconstruct",
            "model=ae_attention",
            "model.base_channels=8",
            "model.latent_channels=4",
            "model.image_size=64",
        ]
    )
    model = build_model(run.model)
    assert isinstance(model, AttentionAutoencoder) and model.get_latent_size() == (4, 4, 4)
    assert model.placement == "after" and n_cbam(model) == 16
    assert (
        build_model(
            settings(["task=reconstruct", "model=ae_attention", "model.cbam_placement=residual"]).model
        ).placement
        == "residual"
    )
    with pytest.raises(ConfigError, match=r"^model.pretrained=true: there are no ImageNet weights for the autoenc"):
        build_model(settings(["task=reconstruct", "model.pretrained=true"]).model)


def test_psnr_and_ssim() -> None:
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert float(ssim(noisy, x).max()) < 0.9
    assert torch.allclose(psnr(torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 0.1)), torch.tensor([20.0]))


def test_activation_memory_is_measured_and_linear() -> None:
    model = autoencoder("B", base_channels=8, image_size=64)
    one = saved_activation_bytes(model, 1, 64)
    two = saved_activation_bytes(model, 2, 64)
    four = saved_activation_bytes(model, 4, 64)
    assert one > 64 * 64 * 4 * 8  # at least the stem's output
    assert four - two == pytest.approx(2 * (two - one), rel=0.01)
    params = autoencoder_params(model, 64)
    assert params["model.compression_ratio"] == "16.0" and int(params["memory.activation_mb_batch64"]) > 0


@pytest.mark.slow
def test_one_epoch_of_reconstruction_improves_psnr(synth_root: Path, tmp_path: Path) -> None:
    overrides = tiny(
        synth_root,
        tmp_path,
        "task=reconstruct",
        "model.base_channels=8",
        "model.batch_size=8",
        "tracking.enabled=false",
    )
    train_job(compose_config(overrides))
    metrics = json.loads((tmp_path / "outputs" / "metrics_test.json").read_text())
    # The untrained model (same seed, same initialisation) on the same test images.
    run = settings(overrides)
    torch.manual_seed(0)
    untrained = build_model(run.model)
    table = load_dataset(synth_root, read_annotations=False)
    split = pd.read_csv(tmp_path / "outputs" / "split.csv")
    rows = table[split["part"].to_numpy() == "test"].reset_index(drop=True)
    loader = make_loader(
        BTXRDImages(rows, cache_for(table, 64, run.data), 64, train=False),
        32,
        train=False,
        workers=0,
        device=torch.device("cpu"),
    )
    before, _, _ = reconstruct(untrained, loader, InputPipeline(torch.device("cpu"), RAW), amp=False)
    assert metrics["test_psnr"] > before["psnr"].mean() + 1.0
    assert (tmp_path / "outputs" / "reconstructions_test.png").stat().st_size > 5000
    assert metrics["epochs_run"] == 1 and "test_psnr_malignant" in metrics
    counts = rows["label"].value_counts()  # per-class scores come from the same pass as the overall one
    weighted = sum(counts[k] * metrics[f"test_psnr_{name}"] for k, name in enumerate(CLASS_NAMES) if k in counts)
    assert weighted / len(rows) == pytest.approx(metrics["test_psnr"], abs=1e-9)
    per_image = pd.read_csv(tmp_path / "outputs" / "reconstruction_test.csv")
    assert len(per_image) == len(rows) and per_image["psnr"].mean() == pytest.approx(metrics["test_psnr"])
