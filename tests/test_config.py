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


def test_default_launcher_runs_one_job_at_a_time_and_experiments_work_with_every_launcher() -> None:
    from btxrd.sweep.context import is_submitit

    cfg = compose_config(["experiment=demo"], with_hydra=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 1
    assert not is_submitit(cfg.hydra.launcher)  # a stopped sweep closes its workers' runs
    for launcher in ("local", "slurm", "submitit_local", "submitit_slurm"):  # no joblib keys left to clash with
        composed = compose_config(["experiment=demo", f"hydra/launcher={launcher}"], with_hydra=True)
        assert "n_jobs" not in composed.hydra.launcher
        assert is_submitit(composed.hydra.launcher)  # their jobs close their own runs


def test_slurm_preset_produces_the_sbatch_script(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slurm is not here: compose the preset, run the launcher up to submission, render its sbatch file."""
    import os

    import submitit
    from hydra.utils import instantiate
    from omegaconf import open_dict

    fake_bin = tmp_path / "bin"  # submitit only checks that srun exists
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
                          "hydra.launcher.setup=[module load cuda]", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                         with_hydra=True)  # fmt: skip
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.name = "train"
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    submitted = {}

    def capture(executor, function, *arguments):
        submitted["executor"], submitted["overrides"] = executor, arguments[0]
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    launcher.launch([["model=b0"], ["model=b3"]], initial_job_idx=0)
    assert submitted["overrides"] == (["model=b0"], ["model=b3"])
    slurm = submitted["executor"]._executor
    assert slurm.max_num_timeout == 2
    script = slurm._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --job-name=train",
                 f"#SBATCH --output={tmp_path / 'sweep'}/.submitit/%j/%j_0_log.out", "module load cuda"):  # fmt: skip
        assert line in script, line


def test_jobs_get_their_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    from btxrd import pipeline
    from btxrd.sweep.context import concurrent_jobs

    monkeypatch.setattr(pipeline, "available_cores", lambda: 8)
    pool = compose_config(["hydra.launcher.n_jobs=2"], with_hydra=True).hydra.launcher
    slurm_overrides = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=6"]
    slurm = compose_config(slurm_overrides, with_hydra=True).hydra.launcher
    local = compose_config(["hydra/launcher=local"], with_hydra=True).hydra.launcher
    assert concurrent_jobs(pool) == (2, None) and pipeline.threads_per_job("auto", 2) == 4
    assert concurrent_jobs(slurm) == (1, 6) and pipeline.threads_per_job("auto", 1, 6) == 6
    assert concurrent_jobs(local) == (1, 1) and pipeline.threads_per_job("auto", 1, 1) == 1
    assert pipeline.threads_per_job("auto", 1, 64) == 8  # never more than the machine has
    assert concurrent_jobs(OmegaConf.create({"n_jobs": -1}))[0] >= 1
