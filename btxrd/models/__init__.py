"""Networks and the registry that builds them by name."""

from btxrd.models.registry import build_model, cam_target, list_models, model_task, register_model

__all__ = ["build_model", "cam_target", "list_models", "model_task", "register_model"]
