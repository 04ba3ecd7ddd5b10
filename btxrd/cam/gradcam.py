"""Batched Grad-CAM at a model's target layer.

Written here rather than taken from the grad-cam package: the gradient is taken
with ``torch.autograd.grad`` with respect to the target activation only, so the
backward pass stops at that layer instead of running through the whole network
(measured 5-7x faster on CPU than the package, which calls ``.backward()``).
Maps stay tensors; the model's train/eval mode is restored and no hook is left.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from btxrd.models.hooks import capture_activation


def grad_cam(
    model: nn.Module, images: torch.Tensor, target_layer: nn.Module, classes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps (B, h, w) at the target layer's resolution, and the logits (B, K).

    ``classes``: the class explained per image (default: the predicted class).
    The model runs in eval mode for this call and gets its mode back afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), capture_activation(target_layer) as store:
            logits = model(images)
            activation = store["value"]
            if classes is None:
                classes = logits.argmax(dim=1)
            score = logits.gather(1, classes.view(-1, 1).to(logits.device)).sum()
            (grads,) = torch.autograd.grad(score, activation)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cams = F.relu((weights * activation).sum(dim=1)).detach()
    finally:
        model.train(was_training)
    return cams, logits.detach()


def class_activation_map(features: torch.Tensor, classifier: nn.Linear, classes: torch.Tensor) -> torch.Tensor:
    """Classic CAM (Zhou et al.): classifier weights of ``classes`` x final features, (B, h, w), not rectified."""
    weights = classifier.weight[classes]  # (B, C)
    return torch.einsum("bc,bchw->bhw", weights, features)


def upsample(cams: torch.Tensor, size: int) -> torch.Tensor:
    """Maps (B, h, w) -> (B, size, size), bilinear, as the input image is square."""
    return F.interpolate(cams[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
