"""Grad-CAM maps (batched, autograd.grad at the target layer) and their overlays."""

from btxrd.cam.gradcam import capture_activation, class_activation_map, grad_cam, upsample

__all__ = ["capture_activation", "class_activation_map", "grad_cam", "upsample"]
