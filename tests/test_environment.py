"""What a run records of where it ran: the machine's use over time (MLflow's system metrics) and the
software (every package with its version, the interpreter, a digest to compare runs by)."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from btxrd.runtime.software import environment_digest, installed_packages, requirements_text, software_tags
from btxrd.tracking import Tracker, job_run


def test_a_run_samples_the_machine_s_use_while_it_is_open_and_stops_when_it_closes(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    with job_run(tracker, "job", {}, output_dir=tmp_path / "out", system_metrics_interval_s=0.2) as recorder:
        time.sleep(1.5)
    client = MlflowClient(tracker.uri)
    history = client.get_metric_history(recorder.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 3 and [m.step for m in history] == list(range(len(history)))
    assert all(0 <= m.value <= 100 for m in history)
    memory = client.get_run(recorder.run_id).data.metrics["system/system_memory_usage_megabytes"]
    assert 0 < memory < 1e7
    time.sleep(0.5)  # the monitor stopped with the run: nothing more arrives
    assert len(client.get_metric_history(recorder.run_id, "system/cpu_utilization_percentage")) == len(history)
    with job_run(tracker, "off", {}, output_dir=tmp_path / "off", system_metrics_interval_s=None) as quiet:
        time.sleep(0.5)
    assert not [k for k in client.get_run(quiet.run_id).data.metrics if k.startswith("system/")]


def _normalised(name: str) -> str:  # PEP 503
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_package_list_is_what_pip_lists_and_its_digest_names_it() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    expected = {(_normalised(p["name"]), p["version"]) for p in json.loads(listed.stdout)}
    assert {(_normalised(line.split("==")[0]), line.split("==")[1]) for line in installed_packages()} == expected
    text = requirements_text()
    assert text.startswith(f"# python {platform.python_version()} ") and f"torch=={version('torch')}\n" in text
    tags = software_tags(torch.device("cpu"))
    assert tags["environment.digest"] == environment_digest() and len(environment_digest()) == 12
    assert tags["machine.python"] == platform.python_version() and tags["machine.driver"] == "none"
