"""What a job knows about its place in a sweep, read from Hydra's runtime config."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from btxrd.redaction import redact_text


@dataclass
class JobContext:
    choices: dict[str, str] = field(default_factory=dict)  # config group -> chosen option
    overrides: list[str] = field(default_factory=list)  # as the command line gave them, secrets hidden
    output_dir: Path = Path("outputs")
    sweep_dir: str = ""
    job_num: int = 0
    n_jobs: int = 1  # jobs the launcher runs at once on this machine
    cpus_per_job: int | None = None  # submitit: the CPUs each job was given (cpus_per_task)
    multirun: bool = False
    trial: bool = False  # the sweeper picks values (Optuna): several jobs share their config choices
    trial_params: dict[str, str] = field(default_factory=dict)  # the values the sweeper picked for this job
    name_part: str = ""  # what the task adds to the run's name (e.g. 'ann-on', 'reconstruct')

    @property
    def overridden(self) -> dict[str, str]:
        """The job's command-line overrides as {key: value} (what a sweep varies between its jobs)."""
        pairs = (override.partition("=") for override in self.overrides)
        return {key.lstrip("+~"): value for key, _, value in pairs}

    @property
    def run_name(self) -> str:
        """e.g. 'b0 | center | ann-on' or 'ae_attention | stratified | reconstruct' (plus any experiment)."""
        parts = [self.choices.get("model", "?"), self.choices.get("split", "?")]
        if self.name_part:
            parts.append(self.name_part)
        if self.choices.get("experiment"):
            parts.insert(0, self.choices["experiment"])
        if self.trial:
            parts.append(f"trial {self.job_num}")
        return " | ".join(parts)


def is_submitit(launcher: Any) -> bool:
    """Whether a launcher config is submitit's: every job a process of its own (on Slurm, on another
    node) with ``cpus_per_task`` CPUs, which goes on when the launching process is stopped."""
    return "submitit" in str(launcher.get("_target_", ""))


def concurrent_jobs(launcher: Any) -> tuple[int, int | None]:
    """(jobs running at once on this machine, CPUs given to each job or None) for a launcher config.

    joblib: ``n_jobs`` (-1 = all cores). submitit: every job has ``cpus_per_task`` CPUs (on Slurm
    its own allocation; submitit_local starts all jobs at once, so its preset keeps
    jobs x cpus_per_task within the cores).
    """
    if is_submitit(launcher):
        cpus = launcher.get("cpus_per_task")
        return 1, (int(cpus) if cpus else None)
    n_jobs = int(launcher.get("n_jobs", 1) or 1)
    if n_jobs < 0:  # joblib: -1 = all cores
        n_jobs = max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    return n_jobs, None


def job_context(name_part: str = "") -> JobContext:
    """The running Hydra job's context; defaults when called outside Hydra (tests, notebooks).

    ``name_part``: what the task adds to the run's name after model and split."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return JobContext(output_dir=Path.cwd() / "outputs", name_part=name_part)
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    n_jobs, cpus_per_job = concurrent_jobs(hc.launcher) if multirun else (1, None)
    choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    trial = multirun and not str(hc.sweeper.get("_target_", "")).endswith("BasicSweeper")
    searched = set(hc.sweeper.get("params") or {}) if trial else set()
    overrides = [redact_text(override) for override in hc.overrides.task]  # they are shown and stored
    picked = (override.partition("=") for override in overrides)
    trial_params = {key.lstrip("+~"): value for key, _, value in picked if key.lstrip("+~") in searched}
    return JobContext(
        choices=choices,
        overrides=overrides,
        output_dir=Path(hc.runtime.output_dir),
        sweep_dir=str(Path(hc.sweep.dir).resolve()) if multirun else "",
        job_num=int(hc.job.num) if multirun else 0,
        n_jobs=n_jobs,
        cpus_per_job=cpus_per_job,
        multirun=multirun,
        trial=trial,
        trial_params=trial_params,
        name_part=name_part,
    )
