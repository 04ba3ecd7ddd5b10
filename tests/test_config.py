from __future__ import annotations

import itertools

import pytest

from .conftest import PROJECT_ROOT
from .helpers import compose_config, run_script

MODELS = ("b0", "b3", "resnet50_cbam")
SPLITS = ("stratified", "center", "kfold")
ANNOTATIONS = ("on", "off")
EXPERIMENTS = (None, "demo", "E1_b0_baseline", "E2_b0_annotated", "E3_b3_annotated", "E4_resnet50_cbam")


@pytest.mark.parametrize(("model", "split", "annotations"), list(itertools.product(MODELS, SPLITS, ANNOTATIONS)))
def test_every_group_combination_composes(model: str, split: str, annotations: str) -> None:
    cfg = compose_config([f"model={model}", f"split={split}", f"annotations={annotations}"])
    assert cfg.model.name == model and cfg.split.name == split
    assert cfg.annotations.enabled is (annotations == "on")
    assert cfg.split.seed == cfg.seed  # interpolations resolve
    assert cfg.data.root.startswith(str(PROJECT_ROOT))


def test_model_defaults_of_the_plan() -> None:
    sizes = {m: compose_config([f"model={m}"]).model for m in MODELS}
    assert (sizes["b0"].image_size, sizes["b0"].batch_size, sizes["b0"].dropout) == (224, 32, 0.2)
    assert (sizes["b3"].image_size, sizes["b3"].batch_size, sizes["b3"].dropout) == (300, 16, 0.3)
    assert (sizes["resnet50_cbam"].image_size, sizes["resnet50_cbam"].batch_size) == (224, 16)
    assert all(m.in_chans == 1 for m in sizes.values())


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e])
def test_experiment_presets(experiment: str) -> None:
    cfg = compose_config([f"experiment={experiment}", "split=center"])
    expected = {
        "E1_b0_baseline": ("b0", False), "E2_b0_annotated": ("b0", True),
        "E3_b3_annotated": ("b3", True), "E4_resnet50_cbam": ("resnet50_cbam", True),
    }  # fmt: skip
    if experiment == "demo":
        assert cfg.model.pretrained is False and cfg.model.image_size == 64
        assert cfg.data.root.endswith("data/demo")
    else:
        assert (cfg.model.name, cfg.annotations.enabled) == expected[experiment]
    assert cfg.split.name == "center"


def test_demo_keeps_small_settings_for_every_model() -> None:
    for model in MODELS:
        cfg = compose_config(["experiment=demo", f"model={model}"])
        assert cfg.model.name == model and cfg.model.image_size == 64 and not cfg.model.pretrained


def test_cfg_job_shows_every_number(tmp_path) -> None:
    result = run_script("train.py", ["--cfg", "job", "model=b3"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    for key in ("image_size: 300", "batch_size: 16", "lr:", "weight_decay:", "patience:", "crop_min_scale:"):
        assert key in result.stdout


def test_unknown_group_option_is_refused(tmp_path) -> None:
    result = run_script("train.py", ["model=vgg19", "tracking.enabled=false"], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "Could not find 'model/vgg19'" in result.stderr
