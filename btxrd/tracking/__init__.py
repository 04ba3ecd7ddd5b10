"""The only package that talks to MLflow."""

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

__all__ = [
    "PARENT_RUN_ENV",
    "TRACKING_URI_ENV",
    "Tracker",
    "active_statuses",
    "default_tracking_uri",
    "flatten",
    "parent_from_env",
    "tracker_for",
]
