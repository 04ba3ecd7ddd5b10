"""The typed schema of every setting: types and keys checked by Hydra when it composes, ranges here.

The values live in ``conf/`` (YAML), once: these dataclasses declare what each key is (type,
allowed range or choices), never its value, so every field defaults to MISSING. Hydra merges the
YAML onto them (``btxrd.config`` registers them in its ConfigStore), which refuses an unknown
key or a value of the wrong type at composition with an error naming the key. Ranges and
choices, which OmegaConf cannot express, are field metadata (``btxrd.setting_fields``) checked right after
composition, before any file is read: a bad value fails in one line naming its full key.

Plain dataclasses, standard library only: the data, models and engine layers may take these
objects without knowing anything of Hydra. Task-specific settings (``task.*``) are declared by
each task's own module (``btxrd.tasks``), so that a new task is one module and one YAML file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from btxrd.errors import ConfigError
from btxrd.setting_fields import auto_bool, auto_int, auto_or_bool, auto_or_int, device_name, setting

# ----------------------------------------------------------------------------------- groups


@dataclass
class PathsConfig:
    root: str = setting()
    cache_dir: str = setting()


@dataclass
class ClaheConfig:
    clip_limit: float = setting(gt=0)
    tiles: int = setting(ge=1)


@dataclass
class DataConfig:
    root: str = setting()
    on_bad_image: str = setting(choices=("error", "skip"))
    # Every file of a dataset is untrusted: limits checked before a byte is decoded
    max_image_pixels: int = setting(ge=1)  # width x height an image may declare (a decompression bomb declares more)
    max_file_mb: float = setting(gt=0)  # size of any file read (image, annotation, sheet)
    allow_links_outside_root: bool = setting()  # follow symbolic links that lead out of the dataset root
    canvas_scale: float = setting(ge=1.0, le=2.0)
    cache_source_size: int | None = setting(ge=32)
    cache_dir: str = setting()
    duplicate_distance: int | None = setting(ge=0, le=128)  # perceptual-hash bits; null: identical files only
    preprocess: str = setting(choices=("none", "clahe"))
    clahe: ClaheConfig = field(default_factory=ClaheConfig)
    num_workers: str = setting(check=auto_or_int(0))
    feed: str = setting(choices=("auto", "workers", "device"))  # where training batches are cropped (data/feed.py)
    mean: float = setting(ge=0, le=1)
    std: float = setting(gt=0)
    crop_min_scale: float = setting(gt=0, le=1)
    crop_max_scale: float = setting(gt=0, le=1)
    hflip: bool = setting()
    brightness: float = setting(ge=0, le=1)
    contrast: float = setting(ge=0, le=1)

    @property
    def worker_count(self) -> int | None:
        return auto_int(self.num_workers)

    def validate(self) -> str | None:
        if not self.root.strip():  # Path("") is the working folder: it would be read as the dataset
            return "data.root is empty: give the folder of the dataset (dataset.xlsx, images/, Annotations/)"
        if self.crop_min_scale > self.crop_max_scale:
            return f"data.crop_min_scale={self.crop_min_scale} is larger than data.crop_max_scale={self.crop_max_scale}"
        return None


@dataclass
class ModelConfig:
    """What every model has; a model family adds its own keys (below)."""

    name: str = setting()
    image_size: int = setting(ge=32, le=4096)  # the networks downsample 32x
    batch_size: int = setting(ge=1)
    in_chans: int = setting(ge=1)
    pretrained: bool = setting()  # start from ImageNet weights (where the model has them)


@dataclass
class ClassifierConfig(ModelConfig):
    weights: str | None = setting()  # a local weights file instead of the hub
    num_classes: int = setting(ge=2)
    dropout: float = setting(ge=0, lt=1)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments


@dataclass
class AutoencoderConfig(ModelConfig):
    base_channels: int = setting(ge=1)
    latent_channels: int = setting(ge=1)

    def validate(self) -> str | None:
        if self.image_size % 16:
            return f"model.image_size={self.image_size}: the autoencoders downsample 16x; use a multiple of 16"
        return None


@dataclass
class AttentionAutoencoderConfig(AutoencoderConfig):
    cbam_placement: str = setting(choices=("after", "residual"))  # CBAM after each block, or on its residual branch
    cbam_reduction: int = setting(ge=1)  # channel attention: hidden units = channels / reduction (at least 4)
    cbam_kernel_size: int = setting(ge=1, check=lambda k: None if k % 2 else "must be odd (same-size output)")
    cbam_gate_bias: float | None = setting()  # null: no gate biases (reference); e.g. 3: gates start open (0.95)


def _fraction(**bounds: float) -> Any:
    return setting(gt=0, lt=1, **bounds)


@dataclass
class SplitConfig:
    name: str = setting(choices=("stratified", "center", "kfold"))
    seed: int = setting(ge=0)
    group_patients: bool = setting()


@dataclass
class StratifiedSplitConfig(SplitConfig):
    train: float = _fraction()
    val: float = _fraction()
    test: float = _fraction()

    def validate(self) -> str | None:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            return f"split.train + split.val + split.test = {total:.3f}; they must sum to 1"
        return None


@dataclass
class CenterSplitConfig(SplitConfig):
    train_centers: list[int] = setting()
    test_centers: list[int] = setting()
    val_fraction: float = _fraction()

    def validate(self) -> str | None:
        for key in ("train_centers", "test_centers"):
            if not getattr(self, key):
                return f"split.{key} is empty"
        overlap = sorted(set(self.train_centers) & set(self.test_centers))
        if overlap:
            return f"split.train_centers and split.test_centers share centre(s) {overlap}"
        return None


@dataclass
class KFoldSplitConfig(SplitConfig):
    k: int = setting(ge=2)
    fold: int = setting(ge=0)
    test: float = _fraction()

    def validate(self) -> str | None:
        if self.fold >= self.k:
            return f"split.fold={self.fold} is out of range for split.k={self.k} (0..{self.k - 1})"
        return None


@dataclass
class AnnotationsConfig:
    enabled: bool = setting()
    lesion_crops: bool = setting()
    cam_loss_weight: float = setting(ge=0)
    mask_dilation: float = setting(ge=0, le=0.5)  # fraction of the input size


@dataclass
class TrainConfig:
    epochs: int = setting(ge=1)
    lr: float = setting(gt=0, le=10)
    weight_decay: float = setting(ge=0)
    warmup_epochs: float = setting(ge=0)
    min_lr_ratio: float = setting(ge=0, le=1)
    patience: int = setting(ge=0)
    monitor: str = setting()  # checked against the task's metrics (btxrd.tasks)
    class_weights: bool = setting()
    label_smoothing: float = setting(ge=0, lt=1)
    grad_clip: float = setting(ge=0)
    device: str = setting(check=device_name)
    jobs_per_gpu: int = setting(ge=1)  # jobs of this machine that share one GPU (runtime/gpus.py)
    amp: bool = setting()
    channels_last: bool = setting()
    compile: bool = setting()
    num_threads: str = setting(check=auto_or_int(1))
    deterministic: str = setting(check=auto_or_bool)  # auto: strict on the CPU, fast on a GPU
    progress: str = setting(check=auto_or_bool)
    sync_every: int = setting(ge=1)
    eval_batch_size: int = setting(ge=1)
    resume: str = setting(check=auto_or_bool)
    checkpoint_dir: str = setting()

    @property
    def thread_count(self) -> int | None:
        return auto_int(self.num_threads)

    @property
    def strict_determinism(self) -> bool | None:
        return auto_bool(self.deterministic)

    @property
    def progress_bar(self) -> bool | None:
        return auto_bool(self.progress)

    @property
    def resume_mode(self) -> bool | None:
        return auto_bool(self.resume)


@dataclass
class TrackingConfig:
    enabled: bool = setting()
    uri: str | None = setting()
    experiment: str = setting()
    artifact_root: str = setting()
    log_last_checkpoint: bool = setting()
    log_model: bool = setting()
    ui_url: str = setting()
    outage_patience_s: float = setting(ge=0)
    connect_timeout_s: float = setting(gt=0)
    http_retries: int = setting(ge=0, le=10)  # MLflow refuses more than 10
    http_timeout_s: int = setting(ge=1)
    system_metrics_interval_s: float | None = setting(ge=1)  # each sample also asks the store for the run


def _model_name(name: str) -> str | None:
    """MLflow's rule for a registered model's name."""
    if not name.strip() or set(name) & {"/", ":"} or name.strip() in (".", ".."):
        return "must not be blank, '.' or '..', nor hold '/' or ':'"
    return None


def _model_alias(alias: str) -> str | None:
    """MLflow's rule for an alias, checked before the sweep runs rather than when it registers."""
    if re.fullmatch(r"[\w-]{1,255}", alias) and alias.lower() != "latest" and not re.fullmatch(r"[vV]\d+", alias):
        return None
    return "1-255 letters, digits, '_' or '-'; not 'latest' nor a version such as 'v3' (MLflow reserves those)"


@dataclass
class SweepConfig:
    skip_finished: bool = setting()
    register_best: bool = setting()
    model_name: str = setting(check=_model_name)
    model_alias: str | None = setting(check=_model_alias)
    prepare_data: bool = setting()


@dataclass
class EvalConfig:
    """Uncertainty and operating points of every scored part (training's test phase and evaluate.py)."""

    ci_level: float = _fraction(ge=0.5)
    n_bootstrap: int = setting(ge=100)  # 0 would mean no intervals: refused, intervals are the point
    bootstrap_seed: int = setting(ge=0)
    specificities: list[float] = setting()  # malignant sensitivity at these specificities
    calibrate: bool = setting()  # temperature scaling on the validation part
    age_bands: list[int] = setting()  # subgroup results: the ages (years) where a band starts

    def validate(self) -> str | None:
        if not self.age_bands or self.age_bands != sorted(set(self.age_bands)) or self.age_bands[0] <= 0:
            return f"eval.age_bands={self.age_bands}: give ascending ages above 0, e.g. [18, 40, 65]"
        bad = [s for s in self.specificities if not 0 < s < 1]
        if bad or not self.specificities:
            return f"eval.specificities={self.specificities}: give one or more values strictly between 0 and 1"
        return None


@dataclass
class EvalOverrides:
    """evaluate.py's ``eval.*``: null keeps the trained run's own setting (so a re-scoring reproduces
    the run's intervals); a value replaces it."""

    ci_level: float | None = _fraction(ge=0.5)
    n_bootstrap: int | None = setting(ge=100)
    bootstrap_seed: int | None = setting(ge=0)
    specificities: list[float] | None = setting()

    def applied_to(self, run: EvalConfig) -> EvalConfig:
        changes = {k: v for k, v in vars(self).items() if v is not None}
        merged = EvalConfig(**{**vars(run), **changes})
        problem = merged.validate()
        if problem:
            raise ConfigError(problem)
        return merged


@dataclass
class RunConfig:
    """Everything one training job is made of (conf/config.yaml)."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = setting()  # ClassifierConfig or AutoencoderConfig, chosen by the model's YAML
    split: Any = setting()  # one of the split configs, chosen by the split's YAML
    annotations: AnnotationsConfig = field(default_factory=AnnotationsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    task: Any = setting()  # name + the task's own settings (declared by the task's module)
    seed: int = setting(ge=0)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    optimized_metric: str = setting()


@dataclass
class EvaluateDataConfig:
    root: str | None = setting()
    cache_dir: str | None = setting()

    def validate(self) -> str | None:
        if self.root is not None and not self.root.strip():
            return "data.root is empty: give the folder of a dataset, or leave it null for the run's own"
        return None


@dataclass
class EvaluateConfig:
    """Re-scoring a trained model (conf/evaluate.yaml)."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalOverrides = field(default_factory=EvalOverrides)
    run_id: str | None = setting()
    checkpoint: str | None = setting()
    model_uri: str | None = setting()
    external: str | None = setting()  # a CSV of path,label (+ optional columns): an external test set
    part: str = setting(choices=("train", "val", "test", "all"))
    device: str = setting(check=device_name)
    num_threads: str = setting(check=auto_or_int(1))
    batch_size: int | None = setting(ge=1)  # images scored at once; null: the run's train.eval_batch_size
    data: EvaluateDataConfig = field(default_factory=EvaluateDataConfig)

    @property
    def thread_count(self) -> int | None:
        return auto_int(self.num_threads)

    def validate(self) -> str | None:
        if sum(bool(source) for source in (self.run_id, self.checkpoint, self.model_uri)) != 1:
            return "give exactly one of run_id=<mlflow run id>, checkpoint=PATH or model_uri=models:/NAME/VERSION"
        if self.external is not None and (not self.external.strip() or self.data.root is not None):
            return "external=TABLE.csv names a table of its own images: give it alone, without data.root"
        return None


MODEL_FAMILIES: dict[str, type[ModelConfig]] = {
    "classifier": ClassifierConfig,
    "autoencoder": AutoencoderConfig,
    "attention_autoencoder": AttentionAutoencoderConfig,
}
SPLITS: dict[str, type[SplitConfig]] = {
    "stratified": StratifiedSplitConfig,
    "center": CenterSplitConfig,
    "kfold": KFoldSplitConfig,
}
