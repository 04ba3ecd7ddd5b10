"""The launching side of a sweep, before any job: launcher settings checked, the sweep's command line as
it is shown and stored (secrets hidden), what every job is told through Hydra, and the dataset prepared by
a process of its own."""

from __future__ import annotations

import atexit
import re
import subprocess
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, read_write

from btxrd.config import typed_settings
from btxrd.data.prepare import start_preparing
from btxrd.errors import ConfigError
from btxrd.redaction import redact_text
from btxrd.settings import DataConfig
from btxrd.sweep.slurm import is_slurm


def _quoted(value: str) -> str:
    """A Hydra override value that parses back to ``value`` (backslashes are escaped only before a quote)."""
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped) + "'"


# What loky (the joblib launcher's pool) says when it replaces a worker
WORKER_REPLACED = "A worker stopped while some jobs were given to the executor"


def quiet_worker_replacement() -> None:
    """With psutil installed (MLflow's system metrics need it), loky replaces a worker whose memory grew
    300 MB past its first job, as a training job's image cache and model do, and warns of "a too short
    worker timeout or a memory leak". Neither is the case: the next job starts in a fresh worker."""
    warnings.filterwarnings("ignore", message=WORKER_REPLACED, category=UserWarning)


def check_launcher(launcher: DictConfig) -> None:
    """Launcher settings that cannot work, named before any job is launched."""
    n_jobs = launcher.get("n_jobs")
    if n_jobs is not None and int(n_jobs) == 0:
        raise ConfigError("hydra.launcher.n_jobs=0: give the jobs to run at once (1 or more; -1: one per core)")


def task_overrides(config: DictConfig) -> str:
    """The sweep's command-line overrides, as they are shown and stored: secrets hidden."""
    return redact_text(" ".join(config.hydra.overrides.task))


def describe_sweep(config: DictConfig, total: int | None) -> str:
    """The parent run's description (MLflow shows it on the run's page): what the sweep is and where to look."""
    swept = task_overrides(config)
    return (
        f"Sweep of {total if total else 'several'} jobs: `{swept}`.\n\n"
        "Each job is a child run (expand this run in the runs table). To compare them, add the columns "
        "Metrics > test_macro_f1, test_macro_f1_ci_low / _ci_high, test_auroc_macro, test_malignant_recall, "
        "test_cam_pointing (Columns button), or open the Chart view. The statistics (intervals, seeds "
        "aggregated, tested differences) are in this run's artifacts: report/sweep_report.md."
    )


def pass_to_jobs(config: DictConfig, env: dict[str, str]) -> None:
    """Set environment variables in every job of this multirun, wherever the launcher runs it."""
    overrides = [f"++hydra.job.env_set.{name}={_quoted(value)}" for name, value in env.items()]
    with read_write(config.hydra):
        config.hydra.overrides.hydra.extend(overrides)


def prepare_data(config: DictConfig) -> subprocess.Popen | None:
    """A local sweep's dataset probed and decoded into its image cache by a process of its own, started
    now (``btxrd.data.prepare``; its log: ``prepare_data.log`` in the sweep folder), stopped with this one.
    Not with sweep.prepare_data=false, nor for Slurm, whose jobs run on other nodes, nor with settings
    that every job will refuse anyway."""
    if not config.sweep.prepare_data or is_slurm(config.hydra.launcher):
        return None
    try:
        data = typed_settings(OmegaConf.to_container(config.data, resolve=True), DataConfig, "data.")
        image_size = int(config.model.image_size)
    except (ConfigError, ValueError, TypeError):  # each job says what is wrong, in its own run
        return None
    if not Path(data.root).expanduser().is_dir():
        return None
    try:
        process = start_preparing(data, image_size, Path(config.hydra.sweep.dir) / "prepare_data.log")
    except OSError:  # no process to spare, or no sweep folder: the jobs prepare it themselves
        return None
    atexit.register(lambda: process.poll() is None and process.terminate())  # a stopped sweep stops it too
    return process
