"""The configuration: every combination composes, and every bad value fails before any work, naming its key."""

from __future__ import annotations

import itertools
import re
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import OmegaConfBaseException

from btxrd.config import run_settings
from btxrd.errors import ConfigError
from btxrd.jobs.train import train_job
from btxrd.settings import (
    AnnotationsConfig,
    AttentionAutoencoderConfig,
    AutoencoderConfig,
    CenterSplitConfig,
    ClassifierConfig,
    DataConfig,
    EvalConfig,
    KFoldSplitConfig,
    StratifiedSplitConfig,
    TrainConfig,
)
from btxrd.tasks import make_task
from btxrd.tasks.reconstruct import ReconstructSettings

from .conftest import PROJECT_ROOT
from .helpers import compose_config, run_script, settings

MODELS = ("b0", "b3", "resnet50_cbam")
SPLITS = ("stratified", "center", "kfold")


@pytest.mark.parametrize(("model", "split", "annotations"), list(itertools.product(MODELS, SPLITS, ("on", "off"))))
def test_every_group_combination_composes_into_typed_settings(model: str, split: str, annotations: str) -> None:
    run = settings([f"model={model}", f"split={split}", f"annotations={annotations}"])
    assert isinstance(run.model, ClassifierConfig) and run.model.name == model
    assert type(run.split).__name__.lower().startswith(split) and run.split.name == split
    assert run.annotations.enabled is (annotations == "on")
    assert run.data.root.startswith(str(PROJECT_ROOT))  # interpolations resolve
    assert make_task(run).name == "classify"


def test_task_reconstruct_alone_picks_an_autoencoder() -> None:
    run = settings(["task=reconstruct"])
    assert isinstance(run.model, AutoencoderConfig) and run.model.name == "ae_residual"
    task = make_task(run)
    assert (task.name, task.monitor, task.task_settings.normal_only) == ("reconstruct", "val_psnr", False)
    assert settings(["task=reconstruct", "model=ae_attention"]).model.name == "ae_attention"
    assert settings(["experiment=ae_demo"]).model.image_size == 128


@pytest.mark.parametrize(
    ("experiment", "model", "annotations"),
    [
        ("E1_b0_baseline", "b0", False),
        ("E2_b0_annotated", "b0", True),
        ("E3_b3_annotated", "b3", True),
        ("E4_resnet50_cbam", "resnet50_cbam", True),
    ],
)
def test_experiment_presets_pick_their_model_and_annotations(experiment: str, model: str, annotations: bool) -> None:
    run = settings([f"experiment={experiment}", "split=center"])
    assert (run.model.name, run.annotations.enabled, run.split.name) == (model, annotations, "center")


def test_the_demo_gives_each_model_family_an_input_size_it_learns_at() -> None:
    """The EfficientNets barely learn at 64 px in the demo's epochs (conf/experiment_model/demo_b0.yaml): the
    demo gives them 96; the command line and debug=tiny still decide last."""
    sizes = {model: settings(["experiment=demo", f"model={model}"]).model.image_size for model in MODELS}
    assert sizes == {"b0": 96, "b3": 96, "resnet50_cbam": 64}
    assert settings(["experiment=demo", "model=b0", "model.image_size=128"]).model.image_size == 128
    assert settings(["experiment=demo", "model=b0", "debug=tiny"]).model.image_size == 64
    assert settings(["model=b0"]).model.image_size == 224  # no experiment: the model's own size


def test_demo_and_debug_presets_keep_the_model_the_user_chose() -> None:
    for model in MODELS:
        for preset in ("experiment=demo", "debug=tiny"):
            run = settings([preset, f"model={model}"])
            assert run.model.name == model and not run.model.pretrained
    assert settings(["debug=tiny", "task=reconstruct"]).model.name == "ae_residual"
    # Runs log their MLflow model unless told not to; the tiny check-up run leaves it out (2-4 s a run)
    assert settings([]).tracking.log_model and settings(["experiment=demo"]).tracking.log_model
    assert not settings(["debug=tiny"]).tracking.log_model


def test_cfg_job_shows_every_number(tmp_path) -> None:
    result = run_script("train.py", ["--cfg", "job", "model=b3"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    for key in (
        "image_size: 300",
        "batch_size: 16",
        "lr:",
        "weight_decay:",
        "patience:",
        "crop_min_scale:",
        "n_bootstrap:",
    ):
        assert key in result.stdout


# --------------------------------------------------------------- every bad value, before any work


def _violations(schema: type, prefix: str) -> list[tuple[str, str]]:
    """(key, a value outside its declared range) for every ranged field of ``schema``, recursively."""
    cases = []
    for f in fields(schema):
        key, meta = f"{prefix}{f.name}", f.metadata
        nested = f.default_factory() if callable(f.default_factory) else None
        if is_dataclass(nested):
            cases += _violations(type(nested), f"{key}.")
            continue
        integer = str(f.type).startswith("int")
        if meta.get("choices"):
            cases.append((key, "nonsense"))
        elif meta.get("check") is not None:
            cases.append((key, "-7"))
        for bound, step in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
            if meta.get(bound) is not None:
                value = meta[bound] + step * (1 if integer else 0.5)
                cases.append((key, str(int(value) if integer else value)))
    return cases


GROUPS = {  # the schemas of every group, and the overrides that select it
    "data": (DataConfig, []),
    "annotations": (AnnotationsConfig, []),
    "train": (TrainConfig, []),
    "eval": (EvalConfig, []),
    "model (classifier)": (ClassifierConfig, ["model=b0"]),
    "model (autoencoder)": (AutoencoderConfig, ["task=reconstruct"]),
    "model (attention autoencoder)": (AttentionAutoencoderConfig, ["task=reconstruct", "model=ae_attention"]),
    "split (stratified)": (StratifiedSplitConfig, ["split=stratified"]),
    "split (center)": (CenterSplitConfig, ["split=center"]),
    "split (kfold)": (KFoldSplitConfig, ["split=kfold"]),
    "task (reconstruct)": (ReconstructSettings, ["task=reconstruct"]),
}
PREFIX = {
    "model (classifier)": "model.",
    "model (autoencoder)": "model.",
    "model (attention autoencoder)": "model.",
    "task (reconstruct)": "task.",
}
RANGE_CASES = [
    (group, key, value)
    for group, (schema, _) in GROUPS.items()
    for key, value in _violations(schema, PREFIX.get(group, f"{group.split()[0]}."))
]
RELATION_CASES = [  # values that are fine alone but not together
    (["split.train=0.8"], "split.train + split.val + split.test = 1.100; they must sum to 1"),
    (["split=center", "split.train_centers=[1,2]"], "share centre(s) [2]"),
    (["split=center", "split.test_centers=[]"], "split.test_centers is empty"),
    (["split=kfold", "split.fold=5"], "split.fold=5 is out of range for split.k=5"),
    (["data.crop_min_scale=0.9", "data.crop_max_scale=0.8"], "larger than data.crop_max_scale"),
    (["data.root="], "data.root is empty: give the folder of the dataset"),
    (["eval.specificities=[0.9,1.0]"], "eval.specificities=[0.9, 1.0]: give one or more values"),
    (["task=reconstruct", "model.image_size=72"], "model.image_size=72: the autoencoders downsample 16x"),
    (["train.monitor=val_psnr"], "train.monitor='val_psnr': task=classify reports val_macro_f1"),
    (["optimized_metric=test_accuracy"], "optimized_metric='test_accuracy': task=classify reports"),
    (["task=reconstruct", "model=b0"], "model=b0 is a classify model but task=reconstruct; choose one of"),
    (["model.name=vgg"], "model.name='vgg' is not a registered model; registered: ae_attention, ae_residual, b0"),
    (["task.name=segment"], "task='segment': choose one of classify, reconstruct"),
    (["train.compile=true", "annotations=on"], "train.compile=true cannot train with the attention loss"),
]


def test_every_group_and_ranged_key_is_covered() -> None:
    covered = {group for group, _, _ in RANGE_CASES}
    assert covered == set(GROUPS) and len(RANGE_CASES) > 60
    assert {
        "train.lr",
        "model.image_size",
        "split.val_fraction",
        "eval.n_bootstrap",
        "data.num_workers",
        "task.ssim_weight",
        "data.clahe.tiles",
    } <= {key for _, key, _ in RANGE_CASES}


@pytest.mark.parametrize(("group", "key", "value"), RANGE_CASES, ids=[f"{k}={v}" for _, k, v in RANGE_CASES])
def test_a_value_out_of_range_fails_naming_its_key_before_any_work(
    tmp_path: Path, group: str, key: str, value: str
) -> None:
    overrides = [*GROUPS[group][1], f"paths.root={tmp_path / 'work'}", f"{key}={value}"]
    cfg = compose_config(overrides)
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}="):
        train_job(cfg)
    assert not (tmp_path / "work").exists()  # no store, cache, output or checkpoint folder


@pytest.mark.parametrize(("overrides", "message"), RELATION_CASES, ids=[m[:40] for _, m in RELATION_CASES])
def test_settings_that_contradict_each_other_fail_before_any_work(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    cfg = compose_config([*overrides, f"paths.root={tmp_path / 'work'}"])
    with pytest.raises(ConfigError) as failed:
        train_job(cfg)
    assert message in str(failed.value)
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=abc", "train.lr"),
        ("model.image_size=big", "model.image_size"),
        ("data.hflip=maybe", "data.hflip"),
        ("train.lrr=0.1", "lrr"),
        ("model.cbam_placement=after", "cbam_placement"),
        ("split.val_fraction=0.2", "val_fraction"),
        ("task.ssim_weight=0.5", "ssim_weight"),
    ],
)
def test_a_misspelt_key_or_a_wrong_type_fails_at_composition_naming_it(override: str, key: str) -> None:
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException)) as failed:
        compose_config([override])
    assert key in str(failed.value) or key in str(failed.value.__cause__)


def test_a_task_setting_of_the_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^task.ssim_weight: Value 'lots' of type 'str' could not be converted"):
        make_task(settings(["task=reconstruct", "task.ssim_weight=lots"]))


def test_stored_settings_are_checked_like_composed_ones() -> None:
    from btxrd.config import stored_run_settings, to_dict

    config = to_dict(compose_config(["debug=tiny"]))
    assert stored_run_settings(config, ClassifierConfig, "x").model.image_size == 64
    config["train"]["lr"] = -1.0
    with pytest.raises(ConfigError, match=r"^train.lr=-1.0: must be > 0$"):
        stored_run_settings(config, ClassifierConfig, "x")
    config["train"]["lr"] = 1e-3


def test_settings_a_checkpoint_predates_take_their_default_from_conf() -> None:
    """A checkpoint written before a setting existed still loads (evaluate.py, predict, the logged model):
    the setting takes the default of its group's default option in conf/."""
    from btxrd.config import stored_run_settings, to_dict

    config = to_dict(compose_config(["debug=tiny", "data.max_image_pixels=1000", "data.root=/data/x"]))
    del config["data"]["max_image_pixels"], config["tracking"]["connect_timeout_s"]
    stored = stored_run_settings(config, ClassifierConfig, "x")
    defaults = settings([])
    assert stored.data.max_image_pixels == defaults.data.max_image_pixels != 1000
    assert stored.tracking.connect_timeout_s == defaults.tracking.connect_timeout_s
    assert stored.data.root == "/data/x" and stored.model.image_size == 64  # what it has is kept


def test_run_settings_read_no_file_and_are_plain_dataclasses() -> None:
    run = run_settings(compose_config([]))
    assert type(run.train).__module__ == "btxrd.settings" and run.train.epochs >= 1


# --------------------------------------------------------------- launchers


@pytest.mark.parametrize(
    ("override", "said"),
    [
        (
            "train.lr=abc",
            "Error merging override train.lr=abc: Value 'abc' of type 'str' could not be converted to Float",
        ),
        (
            "model=vgg19",
            "In 'config': Could not find 'model/vgg19'. available: ae_attention, ae_attention_residual, "
            "ae_residual, b0, b3, resnet50_cbam",
        ),
        (
            "train.lrr=0.1",
            "Could not override 'train.lrr': Key 'lrr' not in 'TrainConfig'. To append to your config "
            "use +train.lrr=0.1",
        ),
        ("train.lr=[1", "train.lr=[1: no viable alternative at input '[1'"),
    ],
)
def test_a_command_line_that_does_not_compose_is_said_in_one_line_naming_the_override(override: str, said: str) -> None:
    from hydra.errors import CompactHydraException

    from btxrd.entry import composition_error_line

    with pytest.raises(CompactHydraException) as failed:
        compose_config([override])
    line = composition_error_line(failed.value)
    assert line.startswith(said) and "\n" not in line, line


@pytest.mark.parametrize(
    ("script", "override", "said"),
    [
        ("train.py", "train.lr=abc", "error: Error merging override train.lr=abc: Value 'abc'"),
        ("evaluate.py", "eval.n_bootstrap=many", "error: Error merging override eval.n_bootstrap=many: Value 'many'"),
    ],
)
@pytest.mark.fresh_store  # no store copied in: the folder must stay empty
def test_the_entry_points_end_such_a_command_line_with_that_line_and_exit_code_2(
    tmp_path: Path, script: str, override: str, said: str
) -> None:
    result = run_script(script, [override], cwd=tmp_path, timeout=120)
    assert result.returncode == 2  # a user error, like every other (Hydra itself: a few lines, exit code 1)
    assert result.stderr.startswith(said) and result.stderr.count("\n") == 1, result.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_hydra_full_error_keeps_hydras_own_trace(tmp_path: Path) -> None:
    result = run_script("train.py", ["train.lr=abc"], cwd=tmp_path, timeout=120, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1 and "Traceback" in result.stderr and "full_key: train.lr" in result.stderr


def test_default_launcher_runs_one_job_at_a_time_and_experiments_work_with_every_launcher() -> None:
    from btxrd.jobs.context import is_submitit

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
    cfg = compose_config(
        [
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.timeout_min=90",
            "hydra.launcher.setup=[module load cuda]",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        with_hydra=True,
    )
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
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --job-name=train",
        f"#SBATCH --output={tmp_path / 'sweep'}/.submitit/%j/%j_0_log.out",
        "module load cuda",
    ):
        assert line in script, line


def test_jobs_get_their_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    from btxrd.jobs.context import concurrent_jobs
    from btxrd.runtime import environment

    monkeypatch.setattr(environment, "available_cores", lambda: 8)
    pool = compose_config(["hydra.launcher.n_jobs=2"], with_hydra=True).hydra.launcher
    slurm_overrides = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=6"]
    slurm = compose_config(slurm_overrides, with_hydra=True).hydra.launcher
    local = compose_config(["hydra/launcher=local"], with_hydra=True).hydra.launcher
    assert concurrent_jobs(pool) == (2, None) and environment.threads_per_job(None, 2) == 4
    assert concurrent_jobs(slurm) == (1, 6) and environment.threads_per_job(None, 1, 6) == 6
    assert concurrent_jobs(local) == (1, 1) and environment.threads_per_job(None, 1, 1) == 1
    assert environment.threads_per_job(None, 1, 64) == 8  # never more than the machine has
    assert environment.threads_per_job(3, 2) == 3  # a number is taken as it is
    assert concurrent_jobs(OmegaConf.create({"n_jobs": -1}))[0] >= 1


MLFLOW_REFUSES = [  # what MLflow would refuse only when the sweep ends, or what would hammer the store
    ("sweep.model_alias=latest", "sweep.model_alias='latest': 1-255 letters, digits, '_' or '-'; not 'latest'"),
    ("sweep.model_alias=V3", "sweep.model_alias='V3': "),
    ("sweep.model_alias='a b'", "sweep.model_alias='a b': "),
    ("sweep.model_name=team/classifier", "sweep.model_name='team/classifier': must not be blank, '.' or '..'"),
    ("sweep.model_name=..", "sweep.model_name='..': "),
    ("tracking.system_metrics_interval_s=0.5", "tracking.system_metrics_interval_s=0.5: must be >= 1"),
]


@pytest.mark.parametrize(("override", "message"), MLFLOW_REFUSES, ids=[o for o, _ in MLFLOW_REFUSES])
def test_a_model_name_alias_or_sampling_interval_mlflow_would_refuse_fails_before_any_work(
    tmp_path: Path, override: str, message: str
) -> None:
    cfg = compose_config([f"paths.root={tmp_path / 'work'}", override])
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        train_job(cfg)
    assert not (tmp_path / "work").exists()
