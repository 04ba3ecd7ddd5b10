"""What a job knows about its place in a sweep, read from Hydra's runtime config."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class JobContext:
    choices: dict[str, str] = field(default_factory=dict)  # config group -> chosen option
    overrides: list[str] = field(default_factory=list)
    output_dir: Path = Path("outputs")
    sweep_dir: str = ""
    job_num: int = 0
    n_jobs: int = 1  # jobs the launcher runs at once
    multirun: bool = False

    task: str = "classify"

    @property
    def run_name(self) -> str:
        """e.g. 'b0 | center | ann-on' or 'ae_attention | stratified | reconstruct' (plus any experiment)."""
        parts = [self.choices.get("model", "?"), self.choices.get("split", "?")]
        parts.append(f"ann-{self.choices.get('annotations', '?')}" if self.task == "classify" else self.task)
        if self.choices.get("experiment"):
            parts.insert(0, self.choices["experiment"])
        return " | ".join(parts)


def job_context(task: str = "classify") -> JobContext:
    """The running Hydra job's context; defaults when called outside Hydra (tests, notebooks)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return JobContext(output_dir=Path.cwd() / "outputs", task=task)
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    n_jobs = 1
    if multirun:
        n_jobs = int(hc.launcher.get("n_jobs", 1) or 1)
        if n_jobs < 0:  # joblib: -1 = all cores
            n_jobs = max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    return JobContext(
        choices=choices,
        overrides=list(hc.overrides.task),
        output_dir=Path(hc.runtime.output_dir),
        sweep_dir=str(Path(hc.sweep.dir).resolve()) if multirun else "",
        job_num=int(hc.job.num) if multirun else 0,
        n_jobs=n_jobs,
        multirun=multirun,
        task=task,
    )
