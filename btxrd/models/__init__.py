"""Networks and the registry that builds them by name."""

from btxrd.models.hooks import capture_activation
from btxrd.models.registry import build_model, cam_target, list_models, model_entry, register_model

__all__ = ["build_model", "cam_target", "capture_activation", "list_models", "model_entry", "register_model"]
