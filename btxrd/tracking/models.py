"""Models in MLflow: each classification run's logged model (its "Model" column and the experiment's
Models tab), the best run of a sweep in the Model Registry, and any model URI back to a classifier.

The logged model is ``pyfunc_model.py`` (MLflow stores the code, not a pickle) with the run's best
checkpoint as its artifact. The best run is chosen by its validation monitor (``best_<monitor>``),
never by a test metric; the registered version is tagged with the sweep, the configuration and
the test metrics with their intervals.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from btxrd.data.schema import CLASS_NAMES
from btxrd.errors import ConfigError
from btxrd.redaction import move_credentials, redact_text
from btxrd.tracking.mlflow_store import Tracker
from btxrd.tracking.model_card import model_card
from btxrd.tracking.reach import store_full, unreachable

MODEL_NAME = "model"  # the logged model's name within its run
CHECKPOINT = "checkpoint"  # the name of the checkpoint among the model's artifacts
LOGGED_MODEL_TAG = "logged_model_id"
# One small picture with contrast (the model refuses blank ones): a horizontal ramp, 48 x 64 px
EXAMPLE_INPUT = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (1, 48, 1))
# What the model needs at load time besides the btxrd project itself (pinned to what logged it).
REQUIREMENTS = ("torch", "torchvision", "timm", "numpy", "pandas", "Pillow", "pydicom", "omegaconf", "hydra-core")


def _requirements() -> list[str]:
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(name)
    return pinned


def _signature(operating_points: list[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    outputs = [ColSpec("double", f"p_{name}") for name in CLASS_NAMES] + [ColSpec("string", "predicted")]
    outputs += [ColSpec("boolean", f"malignant_at_{key}") for key in sorted(operating_points)]
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]), outputs=Schema(outputs))


def log_classifier(tracker: Tracker, run_id: str, checkpoint: Path, operating_points: list[str], step: int = 0) -> str:
    """Log ``checkpoint`` as the run's MLflow model; its model id (also the run's tag ``logged_model_id``)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        mlflow.set_tracking_uri(tracker.uri)  # Model.log works on the global URI; a job has one store
        mlflow.set_experiment(experiment_id=tracker.experiment_id)  # else the model lands in experiment Default
        _fail_unfinished_models(tracker, run_id)
        info = Model.log(
            artifact_path=None,
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            step=step,
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={CHECKPOINT: str(checkpoint)},
            signature=_signature(operating_points),
            input_example=EXAMPLE_INPUT,  # checked by MLflow: loads and predicts
            pip_requirements=_requirements(),
            metadata={"btxrd": "needs the btxrd project installed"},
        )
    except (MlflowException, OSError) as exc:  # a server that does not answer, a full disk: kept for later
        down = (unreachable(exc) if isinstance(exc, MlflowException) else None) or store_full(exc, tracker.shown_uri)
        if down is None:
            raise
        raise down from exc
    tracker.set_tags(run_id, {LOGGED_MODEL_TAG: info.model_id})
    return info.model_id


def _fail_unfinished_models(tracker: Tracker, run_id: str) -> None:
    """Mark FAILED the run's logged models left PENDING by an attempt that broke off (a full disk: MLflow
    could not even record the failure), before the model is logged again."""
    from mlflow.entities import LoggedModelStatus

    client = tracker.client
    query = f"source_run_id = '{run_id}'"
    for model in client.search_logged_models([tracker.experiment_id], filter_string=query):
        if model.status == LoggedModelStatus.PENDING:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)


def register_best(tracker: Tracker, parent_id: str, name: str) -> tuple[str, str] | None:
    """Register the logged model of the sweep's best finished run by its validation monitor as a new
    version of ``name``, with its model card as the description; (run name, version), or None when no
    run has a logged model."""
    candidates = []
    for run in tracker.children(parent_id):
        tags, metrics = run.data.tags, run.data.metrics
        model_id, monitor = tags.get(LOGGED_MODEL_TAG), tags.get("monitor")
        if run.info.status == "FINISHED" and model_id and monitor and f"best_{monitor}" in metrics:
            candidates.append((metrics[f"best_{monitor}"], monitor, run))
    if not candidates:
        return None
    if len({monitor for _, monitor, _ in candidates}) > 1:
        raise ConfigError(
            "sweep.register_best: the jobs follow different train.monitor values; "
            "no single validation metric picks the best"
        )
    score, monitor, best = max(candidates, key=lambda c: c[0])
    best = tracker.get_run(best.info.run_id)  # with its dataset inputs, for the card
    client = tracker.client
    try:
        client.get_registered_model(name)
    except Exception:  # not registered yet (MLflow raises its RESOURCE_DOES_NOT_EXIST error)
        client.create_registered_model(name, description="btxrd classifiers: the best run of a sweep by validation")
    sweep_dir = best.data.tags.get("sweep_dir", "")
    tags = {
        "sweep_dir": sweep_dir,
        "run_id": best.info.run_id,
        "configuration": best.data.tags.get("overrides", ""),
        f"best_{monitor}": f"{score:.4f}",
    }
    metrics = best.data.metrics
    for key in sorted(k for k in metrics if k.startswith("test_") and f"{k}_ci_low" in metrics):
        tags[key] = f"{metrics[key]:.4f} [{metrics[f'{key}_ci_low']:.4f}, {metrics[f'{key}_ci_high']:.4f}]"
    model_id = best.data.tags[LOGGED_MODEL_TAG]
    # The model's own storage, not models:/<id>: MLflow resolves that through the process's global
    # tracking URI, which a sweep's launcher never set (the version was not registered).
    logged = client.get_logged_model(model_id)
    version = client.create_model_version(
        name,
        source=logged.artifact_location,
        run_id=best.info.run_id,
        tags=tags,
        model_id=model_id,
        description=model_card(tracker, best, monitor, score, sweep_dir),
    )
    return best.info.run_name, str(version.version)


def point_alias(tracker: Tracker, name: str, alias: str, version: str) -> None:
    """Make ``models:/<name>@<alias>`` name ``version`` (MLflow moves an alias from the version it named)."""
    tracker.client.set_registered_model_alias(name, alias, version)


def model_checkpoint(tracker: Tracker, model_uri: str, dest: str | Path) -> tuple[Path, str]:
    """(the checkpoint inside a logged or registered model, the id of the run that logged it, or "")
    for ``models:/NAME/VERSION``, ``models:/<model id>`` or ``runs:/<run id>/model``."""
    import mlflow
    from mlflow.models import Model

    mlflow.set_tracking_uri(tracker.uri)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest), tracking_uri=tracker.uri)
        )
    except Exception as exc:  # MlflowException: no such model, version or run
        raise ConfigError(f"model_uri={model_uri}: {str(exc).splitlines()[0]}") from None
    found = sorted(local.glob(f"artifacts/{CHECKPOINT}/*.pt")) + sorted(local.glob("artifacts/*.pt"))
    if not found:
        raise ConfigError(f"model_uri={model_uri}: not a btxrd model (no checkpoint among its artifacts)")
    return found[0], Model.load(str(local)).run_id or ""


def load_logged_model(model_uri: str, tracking_uri: str) -> Any:
    """The logged or registered model at ``model_uri`` as MLflow loads it (a pyfunc model)."""
    import mlflow

    uri, credentials = move_credentials(tracking_uri)
    os.environ.update(credentials)
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:  # MlflowException / OSError: no such model
        raise ConfigError(redact_text(f"{model_uri}: {str(exc).splitlines()[0]}")) from None


def load_classifier(model_uri: str, tracking_uri: str, device: str = "cpu") -> Any:
    """The ``Classifier`` inside a logged or registered model (loaded through MLflow's pyfunc), on ``device``."""
    return load_logged_model(model_uri, tracking_uri).unwrap_python_model().classifier.to(device)


def logged_model_uri(tracker: Tracker, given: str) -> str:
    """``given`` as a model URI: a run id (32 hex digits) is its run's logged model; any other text is one."""
    if not re.fullmatch(r"[0-9a-f]{32}", given):
        return given
    run = tracker.find_run(given)
    if run is None:
        raise ConfigError(f"{given}: no run with this id in {tracker.shown_uri}")
    model_id = run.data.tags.get(LOGGED_MODEL_TAG)
    if not model_id:
        raise ConfigError(
            f"run {given} has no logged model (trained with tracking.log_model=false, or not a classifier)"
        )
    return f"models:/{model_id}"


def log_beside_model(tracker: Tracker, model_id: str, path: Path, folder: str) -> str:
    """Add the file ``path`` to the logged model's own artifacts (beside its MLmodel), under ``folder``;
    its artifact URI."""
    tracker.client.log_model_artifact(model_id, str(path), folder)
    return f"models:/{model_id}/{folder}/{path.name}"
