"""The attention loss of annotation-guided training (``annotations=on``): how much of the true class's CAM
lies outside the lesion. Computed from the classifier weights and the final feature map in the training
forward pass, so it adds no backward pass of its own."""

from __future__ import annotations

import torch


def attention_loss(
    features: torch.Tensor, classifier_weight: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, dilation: int
) -> torch.Tensor:
    """Per image: 1 - share of the true class's CAM mass inside the (dilated) lesion mask.

    CAM = classifier weights of the true class x final feature map (exact for GAP + linear heads),
    rectified; the mask is dilated at input resolution, then max-pooled to the feature grid.
    Returns (B,) losses, 0 where the CAM has no positive mass inside or out.
    """
    cams = torch.relu(torch.einsum("bc,bchw->bhw", classifier_weight[labels].to(features.dtype), features)).float()
    m = masks.float()
    if dilation > 0:
        m = torch.nn.functional.max_pool2d(m, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    m = torch.nn.functional.adaptive_max_pool2d(m, cams.shape[-2:])[:, 0]
    total = cams.sum(dim=(1, 2))
    inside = (cams * m).sum(dim=(1, 2))
    return torch.where(total > 0, 1 - inside / total.clamp_min(1e-12), torch.zeros_like(total))
