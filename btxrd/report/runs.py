"""The runs of a sweep as the report sees them: one row per job, and each run's per-image table."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from btxrd.runtime.software import ENVIRONMENT_DIGEST_TAG
from btxrd.settings import EvalConfig
from btxrd.tasks import Task, task_names, task_type
from btxrd.tracking import Tracker

SEED = "seed"
FOLD = "split.fold"
# Choices that replicate a configuration rather than change it: its runs are pooled (mean, sd, an interval
# over them) and paired with another configuration's, never compared with each other
REPLICATE_AXES = (SEED, FOLD)
# Overrides that say how a sweep runs, not what a job computes: a job skipped or resumed by a
# rerun with sweep.skip_finished=true is the same configuration as the first run of it.
HOW_NOT_WHAT = ("sweep.", "tracking.", "paths.", "hydra.")
PROVENANCE_TAGS = ("mlflow.source.git.commit", "code_version", ENVIRONMENT_DIGEST_TAG)


@dataclass
class RunRecord:
    """One child run of a sweep."""

    job: int
    run_id: str
    name: str
    status: str  # FINISHED | FAILED | KILLED | SKIPPED (reused an earlier FINISHED run) | RUNNING
    task: type[Task] | None
    choices: dict[str, str]  # the job's overrides (what the sweep varied)
    seed: str
    fold: str  # split.fold of a cross-validation sweep ("" otherwise)
    metrics: dict[str, float]
    minutes: float
    error: str
    params: str  # the values a search (Optuna) picked
    artifacts_of: str  # the run whose artifacts hold its per-image table (an earlier one for SKIPPED)
    made_by: dict[str, str] = field(default_factory=dict)  # commit, code version and machine tags
    started: float = math.nan  # ms since the epoch, as MLflow keeps it
    ended: float = math.nan
    per_image: pd.DataFrame | None = field(default=None, repr=False)
    subgroups: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def usable(self) -> bool:
        return self.status in ("FINISHED", "SKIPPED") and self.task is not None

    @property
    def configuration(self) -> tuple[tuple[str, str], ...]:
        """What the job is, apart from its seed and fold."""
        return tuple(sorted((k, v) for k, v in self.choices.items() if k not in REPLICATE_AXES))

    @property
    def replicate(self) -> str:
        """Which replicate of its configuration the run is: its seed, and its fold in cross-validation."""
        return f"seed {self.seed}" + (f", fold {self.fold}" if self.fold else "")


def collect_runs(tracker: Tracker, parent_id: str) -> list[RunRecord]:
    records = []
    for run in tracker.children(parent_id):
        tags = run.data.tags
        end = run.info.end_time or run.info.start_time
        error = tags.get("error", "").splitlines()[0][:200] if tags.get("error") else ""
        if tags.get("skipped_for"):
            error = f"finished earlier as run {tags['skipped_for']}"
        name = tags.get("task", "")
        choices = {
            key: value
            for key, value in (json.loads(tags["choices"]) if tags.get("choices") else {}).items()
            if not key.startswith(HOW_NOT_WHAT)
        }
        records.append(
            RunRecord(
                job=int(tags.get("job_num", -1)),
                run_id=run.info.run_id,
                name=run.info.run_name,
                status="SKIPPED" if tags.get("skipped") == "true" else run.info.status,
                task=task_type(name) if name in task_names() else None,
                choices=choices,
                seed=tags.get(SEED, choices.get(SEED, "")),
                fold=choices.get(FOLD, ""),
                metrics=dict(run.data.metrics),
                minutes=round((end - run.info.start_time) / 60000, 2),
                error=error,
                params=tags.get("trial_params", ""),
                artifacts_of=tags.get("skipped_for") or run.info.run_id,
                made_by={k: v for k, v in tags.items() if k in PROVENANCE_TAGS or k.startswith("machine.")},
                started=run.info.start_time,
                ended=end,
            )
        )
    return sorted(records, key=lambda r: r.job)


def load_per_image(tracker: Tracker, records: list[RunRecord], part: str = "test") -> list[str]:
    """Fetch each usable run's per-image table (sorted by image: the same images give the same resamples).
    A run whose table cannot be read stays in the report without it; what went wrong is returned."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="btxrd-report-") as scratch:
        for record in records:
            if not record.usable:
                continue
            name = record.task.per_image_file.format(part=part)
            destination = Path(scratch) / record.run_id
            destination.mkdir()
            try:
                path = tracker.download_artifact(record.artifacts_of, name, destination)
                record.per_image = pd.read_csv(path).sort_values("image_id").reset_index(drop=True)
            except Exception as exc:  # any store error: one run without its table, rather than no report at all
                problems.append(
                    f"job {record.job} ({record.name}): no {name} ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:160]})"
                )
    return problems


def load_subgroups(tracker: Tracker, records: list[RunRecord], evaluation: EvalConfig, part: str = "test") -> None:
    """Each run's subgroup table: the one it logged (``subgroups_<part>.csv``), or, for a run logged before
    there were any, made from its per-image table."""
    with tempfile.TemporaryDirectory(prefix="btxrd-report-") as scratch:
        for record in records:
            if record.per_image is None or record.task is None:
                continue
            name = f"subgroups_{part}.csv"
            try:
                record.subgroups = pd.read_csv(tracker.download_artifact(record.artifacts_of, name, scratch))
            except Exception:  # not logged (an older run, or another task): computed here
                record.subgroups = record.task.subgroups(record.per_image, evaluation)


def report_columns(records: list[RunRecord]) -> dict[str, str]:
    """Test metric -> column title, for the tasks of these runs."""
    tasks = dict.fromkeys(r.task for r in records if r.task is not None)
    return {key: title for task in tasks for key, title in task.report_columns.items()}


def runs_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per job: its choices, status, every report metric with its interval, time, error."""
    columns = report_columns(records)
    varied = varied_choices(records)
    rows: list[dict[str, Any]] = []
    for r in records:
        row: dict[str, Any] = {
            "job": r.job,
            "run": r.name,
            **{k: r.choices.get(k, "") for k in varied},
            "task": r.task.name if r.task else "",
            "status": r.status,
        }
        for key in columns:
            for suffix in ("", "_ci_low", "_ci_high"):
                row[f"{key}{suffix}"] = r.metrics.get(f"{key}{suffix}", math.nan)
        row.update(
            params=r.params,
            epochs=r.metrics.get("epochs_run", math.nan),
            minutes=r.minutes,
            error=r.error,
            run_id=r.run_id,
        )
        rows.append(row)
    return pd.DataFrame(rows)


def varied_choices(records: list[RunRecord]) -> list[str]:
    """The choices that differ between the sweep's jobs (seed included), in the order first seen."""
    keys = list(dict.fromkeys(k for r in records for k in r.choices))
    return [k for k in keys if len({r.choices.get(k) for r in records}) > 1]
