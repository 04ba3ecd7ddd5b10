"""What a task is: what it needs from the data, its models, its objective, how it scores a part.

A task is one module in ``btxrd/tasks/`` (registered with ``@register_task``) and one YAML file
in ``conf/task/``; nothing outside the task modules tests a task's name. Its own settings (the
keys under ``task:`` besides ``name``) are a dataclass of the module, checked like every other
setting before any work (``btxrd.settings.check``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from btxrd.config import typed_settings
from btxrd.data.cache import ImageCache
from btxrd.engine import Objective
from btxrd.errors import ConfigError
from btxrd.metrics.uncertainty import group_bootstrap, percentile_interval
from btxrd.models import model_entry
from btxrd.settings import EvalConfig, RunConfig


@dataclass
class PartToScore:
    """A part of a dataset to score: its rows (in loader order), loader, image cache and dataset root."""

    name: str  # train | val | test | all
    rows: pd.DataFrame
    loader: DataLoader
    cache: ImageCache
    root: str
    extra_columns: tuple[str, ...] = ()  # columns of an external table that make subgroups too
    annotations_read: bool = False  # its rows hold their lesion boxes already (an external table's)


@dataclass
class Scores:
    """What scoring a part gives: metrics (``<part>_<name>``), files to log, and one row per image."""

    metrics: dict[str, float]
    artifacts: list[Path] = field(default_factory=list)
    per_image: pd.DataFrame | None = None


@dataclass(frozen=True)
class Calibration:
    """What the validation part fixes for scoring, kept in the best checkpoint and applied unchanged
    wherever the model is scored (the test part, evaluate.py, the served model): the temperature its
    logits are divided by (1: none), and decision thresholds chosen on the calibrated probabilities."""

    temperature: float = 1.0
    operating_points: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, state: dict[str, Any]) -> Calibration:
        """From a checkpoint (one written before temperature scaling has none: 1)."""
        return cls(float(state.get("temperature", 1.0)), dict(state.get("operating_points", {})))

    def into(self, state: dict[str, Any]) -> None:
        state["temperature"], state["operating_points"] = self.temperature, dict(self.operating_points)


@dataclass
class NoSettings:
    """A task without settings of its own."""


class Task(ABC):
    """One kind of learning problem on the radiographs."""

    name: ClassVar[str]
    settings_type: ClassVar[type] = NoSettings
    monitors: ClassVar[tuple[str, ...]]  # validation metrics early stopping may follow; the first is the default
    servable: ClassVar[bool] = False  # its runs log an MLflow model that scores new images (tracking/models.py)
    headline: ClassVar[tuple[str, ...]]  # test metrics a finished run names in its log line
    report_columns: ClassVar[dict[str, str]]  # test metric -> column title in the sweep report
    chart_metrics: ClassVar[tuple[str, ...]]  # test metrics drawn in the sweep report's chart
    chart_unit: ClassVar[str] = "test score"
    report_notes: ClassVar[str] = ""  # appended to a sweep report holding runs of this task
    # chance levels (``chance_levels``) a run that learnt must clear by its whole interval (the report says which do)
    learnt_beyond: ClassVar[tuple[str, ...]] = ()
    reads_annotations: ClassVar[bool] = False  # whether training may read the lesion annotations
    required_classes: ClassVar[Sequence[int]] = ()  # classes every split part must hold
    compared: ClassVar[dict[str, str]]  # metric -> title: what the sweep report compares between configurations
    per_image_file: ClassVar[str]  # the per-image table a scored part leaves, e.g. "predictions_{part}.csv"

    def __init__(self, settings: RunConfig) -> None:
        self.settings = settings  # the run's settings (RunConfig)
        self.task_settings = self._own_settings(settings.task)
        entry = model_entry(settings.model.name)
        if entry.task != self.name:
            raise ConfigError(
                f"model={entry.name} is a {entry.task} model but task={self.name}; "
                f"choose one of {', '.join(_models_of(self.name))}"
            )
        if not isinstance(settings.model, entry.config):
            raise ConfigError(
                f"conf/model/{entry.name}.yaml: its schema must be /schema/model for {entry.config.__name__}"
            )
        monitor = settings.train.monitor
        if monitor != "auto" and monitor not in self.monitors:
            raise ConfigError(f"train.monitor={monitor!r}: task={self.name} reports {', '.join(self.monitors)}")
        optimized = settings.optimized_metric
        if optimized != "auto" and optimized not in self.monitors:
            raise ConfigError(f"optimized_metric={optimized!r}: task={self.name} reports {', '.join(self.monitors)}")
        self.check()

    def check(self) -> None:  # noqa: B027 (a hook: most tasks have nothing more to check)
        """Relations between settings that only this task knows (checked before any work)."""

    def _own_settings(self, node: dict[str, Any]) -> Any:
        values = {k: v for k, v in dict(node).items() if k != "name"}
        return typed_settings(values, self.settings_type, "task.")

    @property
    def monitor(self) -> str:
        """The validation metric that picks the best checkpoint and stops early."""
        return self.monitors[0] if self.settings.train.monitor == "auto" else self.settings.train.monitor

    @property
    def optimized_metric(self) -> str:
        """The validation metric whose best value the job returns to a Hydra sweeper (Optuna)."""
        return self.monitor if self.settings.optimized_metric == "auto" else self.settings.optimized_metric

    # --- data
    def training_rows(self, part: str, rows: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``part`` (train | val) the model trains and validates on."""
        return rows

    def training_dataset_options(self) -> dict[str, bool]:
        """Keyword arguments of the training ``BTXRDImages`` (lesion-keeping crops, masks)."""
        return {}

    # --- naming
    def run_name_part(self) -> str:
        """What this task adds to a run's name after model and split (e.g. 'ann-on')."""
        return self.name

    def tags(self) -> dict[str, str]:
        return {"task": self.name}

    # --- training and scoring
    def describe_model(self, model: nn.Module) -> dict[str, str]:
        """Extra MLflow params about the network (e.g. its memory), measured where it is."""
        return {}

    @abstractmethod
    def objective(self, model: nn.Module) -> Objective: ...

    def calibrate(
        self, model: nn.Module, val: PartToScore, device: torch.device, evaluation: EvalConfig
    ) -> Calibration:
        """What the validation part (never the test part) fixes for scoring. Nothing by default."""
        return Calibration()

    def predictions(
        self, model: nn.Module, part: PartToScore, device: torch.device, calibration: Calibration
    ) -> pd.DataFrame | None:
        """The per-image table of ``part`` alone (no pictures), for out-of-fold results; None: the task has none."""
        return None

    @classmethod
    def pooled(cls, tables: list[pd.DataFrame]) -> pd.DataFrame | None:
        """Per-image tables of one set of images pooled into one (a fold ensemble); None: the task cannot."""
        return None

    @abstractmethod
    def score(
        self,
        model: nn.Module,
        part: PartToScore,
        device: torch.device,
        out_dir: Path,
        title: str,
        evaluation: EvalConfig,
        calibration: Calibration,
    ) -> Scores:
        """Metrics with confidence intervals, pictures and the per-image table of ``model`` on ``part``.

        The one scoring path: a run's test phase and evaluate.py both call it.
        """

    # --- uncertainty: the same per-image table serves a run's intervals and the sweep report's tests
    @classmethod
    @abstractmethod
    def replicates(cls, per_image: pd.DataFrame, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric with an interval, for each row of bootstrap ``weights`` over the table's images."""

    @classmethod
    def subgroups(cls, per_image: pd.DataFrame, evaluation: EvalConfig, extra: Sequence[str] = ()) -> pd.DataFrame:
        """Metrics per subgroup of the part (``btxrd.metrics.subgroups``' columns); none by default."""
        return pd.DataFrame()

    @classmethod
    def chance_levels(cls, per_image: pd.DataFrame) -> dict[str, float]:
        """What a model that learnt nothing scores on this part (test metric -> value), for the report."""
        return {}

    @classmethod
    def paired_tests(cls, a: pd.DataFrame, b: pd.DataFrame) -> dict[str, float]:
        """Tests of a difference beyond the bootstrap (e.g. DeLong), on two aligned per-image tables."""
        return {}

    @classmethod
    def with_intervals(
        cls, per_image: pd.DataFrame, point: dict[str, float], evaluation: EvalConfig, prefix: str
    ) -> dict[str, float]:
        """``point`` (metric -> value, as computed by the task) with each metric's bootstrap interval
        over the part's patient-proxy groups (``_ci_low`` / ``_ci_high``)."""
        weights = resample(per_image, evaluation)
        out = dict(point)
        for name, replicates in cls.replicates(per_image, weights).items():
            if f"{prefix}{name}" in out:
                low, high = percentile_interval(replicates, evaluation.ci_level)
                out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = low, high
        return out


_TASKS: dict[str, type[Task]] = {}


def resample(per_image: pd.DataFrame, evaluation: EvalConfig) -> np.ndarray:
    """Bootstrap weights over a per-image table's patient-proxy groups (``group``), stratified by ``label``."""
    return group_bootstrap(
        per_image["group"].to_numpy(), per_image["label"].to_numpy(), evaluation.n_bootstrap, evaluation.bootstrap_seed
    )


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} is registered twice")
    _TASKS[cls.name] = cls
    return cls


def task_names() -> list[str]:
    _load_tasks()
    return sorted(_TASKS)


def task_type(name: str) -> type[Task]:
    """The registered task class (for what it declares: report columns, monitors)."""
    _load_tasks()
    if name not in _TASKS:
        raise ConfigError(f"task={name!r}: choose one of {', '.join(task_names())}")
    return _TASKS[name]


def make_task(settings: RunConfig) -> Task:
    """The task ``settings.task.name`` names, with its settings checked (no file is read)."""
    return task_type(str(dict(settings.task).get("name")))(settings)


def _models_of(task: str) -> list[str]:
    from btxrd.models import list_models

    return list_models(task=task)


def _load_tasks() -> None:
    """Import every module of this package: each registers its task (a new task is one new module)."""
    import importlib
    import pkgutil

    import btxrd.tasks

    for module in pkgutil.iter_modules(btxrd.tasks.__path__):
        if module.name != "base":
            importlib.import_module(f"btxrd.tasks.{module.name}")
