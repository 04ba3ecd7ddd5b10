"""The only package that talks to MLflow."""

from btxrd.tracking.mlflow_store import PARENT_RUN_ENV, Tracker, default_tracking_uri, flatten

__all__ = ["PARENT_RUN_ENV", "Tracker", "default_tracking_uri", "flatten"]
