"""Training: the loop, early stopping, checkpoints. Knows nothing of Hydra, MLflow or the task."""

from btxrd.engine.checkpoint import load_checkpoint, save_checkpoint
from btxrd.engine.fit import FitResult, fit
from btxrd.engine.inputs import InputPipeline, InputSpec, autocast, place_model
from btxrd.engine.loop import NonFiniteLossError, Objective

__all__ = [
    "FitResult",
    "InputPipeline",
    "InputSpec",
    "NonFiniteLossError",
    "Objective",
    "autocast",
    "fit",
    "load_checkpoint",
    "place_model",
    "save_checkpoint",
]
