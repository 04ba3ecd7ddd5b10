"""The only package that talks to MLflow."""

from btxrd.tracking.lifecycle import RunRecorder, error_text, job_run, record_skip, source_tags
from btxrd.tracking.mlflow_store import (
    PARENT_RUN_ENV,
    TRACKING_URI_ENV,
    Tracker,
    active_statuses,
    default_tracking_uri,
    flatten,
    parent_from_env,
    tracker_for,
)
from btxrd.tracking.reach import is_server

__all__ = [
    "PARENT_RUN_ENV",
    "RunRecorder",
    "TRACKING_URI_ENV",
    "Tracker",
    "active_statuses",
    "default_tracking_uri",
    "error_text",
    "flatten",
    "is_server",
    "job_run",
    "parent_from_env",
    "record_skip",
    "source_tags",
    "tracker_for",
]
