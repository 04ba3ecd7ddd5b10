from __future__ import annotations

import logging

import pytest
import timm
import torch

from btxrd.errors import ConfigError
from btxrd.models import build_model, cam_target, list_models
from btxrd.models import classifiers as classifiers_module

from .helpers import settings


def config(name: str, *overrides: str) -> object:
    """The model's composed settings, without pretrained weights (no network here)."""
    return settings([f"model={name}", "model.pretrained=false", *overrides]).model


def test_registry_lists_entries_with_wildcards() -> None:
    assert list_models() == ["ae_attention", "ae_residual", "b0", "b3", "resnet50_cbam"]
    assert list_models("b*") == ["b0", "b3"]


@pytest.mark.parametrize(
    ("name", "target_type"), [("b0", "BatchNormAct2d"), ("b3", "BatchNormAct2d"), ("resnet50_cbam", "Bottleneck")]
)
def test_classifiers_shapes_and_cam_targets(name: str, target_type: str) -> None:
    model = build_model(config(name)).eval()
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)
    assert type(cam_target(model)).__name__ == target_type
    assert not any(k.startswith("cam") for k in model.state_dict())  # timm's keys untouched


def test_resnet50_cbam_has_16_cbam_modules_and_dropout() -> None:
    model = build_model(config("resnet50_cbam", "model.dropout=0.3"))
    assert sum(type(m).__name__ == "CbamModule" for m in model.modules()) == 16
    assert model.drop_rate == 0.3
    assert cam_target(model) is model.layer4[-1]
    b0 = build_model(config("b0"))
    assert cam_target(b0) is b0.bn2


def test_extra_kwargs_pass_through() -> None:
    model = build_model(config("b0", "+model.kwargs.drop_path_rate=0.1", "model.num_classes=5"))
    assert model.get_classifier().out_features == 5
    assert any(getattr(m, "drop_prob", 0) > 0 for m in model.modules())


def test_unknown_name_lists_registered_models() -> None:
    with pytest.raises(
        ConfigError,
        match=r"model.name='vgg' is not a registered model; registered: ae_attention, ae_residual, b0, b3, "
        r"resnet50_cbam$",
    ):
        build_model({"name": "vgg"})


def test_builders_take_typed_keywords_and_refuse_unknown_keys() -> None:
    """Nothing is dropped silently: a key the builder does not take is named (as is a missing one)."""
    values = {**vars(config("b0")), "cbam_placement": "residual"}
    with pytest.raises(ConfigError, match=r"^model=b0 has no setting model.cbam_placement; it takes: model.in_chans"):
        build_model(values)
    del values["cbam_placement"], values["dropout"]
    with pytest.raises(ConfigError, match=r"^model=b0 needs model.dropout$"):
        build_model(values)


def test_pretrained_offline_fails_fast_and_names_the_keys(monkeypatch) -> None:
    monkeypatch.setattr(classifiers_module, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ConfigError, match=r"model.pretrained=false.*model.weights=PATH"):
        build_model(config("b0", "model.pretrained=true"))


def test_missing_weights_file_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"model.weights=.*nope.pt: file not found"):
        build_model(config("b0", f"model.weights={tmp_path / 'nope.pt'}"))


def test_local_weights_fold_rgb_stem_and_replace_head(tmp_path) -> None:
    source = timm.create_model("efficientnet_b0", pretrained=False)  # an ImageNet-shaped file: RGB, 1000 classes
    path = tmp_path / "efficientnet_b0.pth"
    torch.save(source.state_dict(), path)
    model = build_model(config("b0", f"model.weights={path}"))
    torch.testing.assert_close(model.conv_stem.weight, source.conv_stem.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.blocks[3][0].conv_pw.weight, source.blocks[3][0].conv_pw.weight)
    assert model.get_classifier().out_features == 3


def test_resnet50_cbam_loads_resnet_weights_except_cbam(tmp_path, caplog) -> None:
    source = timm.create_model("resnet50", pretrained=False)
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    with caplog.at_level(logging.WARNING):
        model = build_model(config("resnet50_cbam", f"model.weights={path}"))
    torch.testing.assert_close(model.layer3[2].conv2.weight, source.layer3[2].conv2.weight)
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    assert "except the 16 CBAM modules" in caplog.text
