"""System metrics of a run through MLflow's own monitor: CPU and memory, disk and network always, and
each GPU's utilisation, memory and power on NVIDIA machines (nvidia-ml-py), as ``system/...`` metrics
(the run's System metrics tab). A job that keeps its GPU below full use shows it there."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from btxrd.tracking.mlflow_store import Tracker

FINISH_PATIENCE_S = 5.0


@contextmanager
def system_metrics(tracker: Tracker, run_id: str, interval_s: float | None, resumed: bool) -> Iterator[None]:
    """Sample every ``interval_s`` seconds while the block runs (None: not at all); a resumed run goes on
    from its last logged step. Only whole intervals are logged: a block shorter than one logs nothing."""
    if not interval_s:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # MLflow says at INFO that a CPU machine has no GPU to sample, in every job
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval_s, resume_logging=resumed, tracking_uri=tracker.uri
    )
    monitor.start()
    try:
        yield
    finally:
        # MLflow's finish waits for the monitor's last request to the store: bounded here, so that a job
        # stopped while its tracking server is away still closes its run within a scheduler's grace period.
        closing = threading.Thread(target=monitor.finish, name="system-metrics-finish", daemon=True)
        closing.start()
        closing.join(FINISH_PATIENCE_S)
