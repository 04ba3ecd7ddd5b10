"""Grad-CAM maps (batched, autograd.grad at the target layer), their localisation scores and overlays."""

from btxrd.cam.gradcam import class_activation_map, grad_cam, upsample

__all__ = ["class_activation_map", "grad_cam", "upsample"]
