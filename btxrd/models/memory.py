"""What a model costs: parameter counts and the activation memory of one training step.

Activation memory is measured, not estimated: the tensors autograd saves for the backward
pass are intercepted (``saved_tensors_hooks``) during a real forward + loss, and their distinct
storages summed. It is measured at batch 1 and 2 and is linear in the batch size, which gives
the figure for any batch (float32; AMP on a GPU roughly halves it). Optimiser state (AdamW:
2 x parameters) and the weights and gradients (2 x parameters) come on top.
"""

from __future__ import annotations

import torch
from torch import nn

MB = 2**20
REPORTED_BATCHES = (1, 8, 16, 32, 64)


def saved_activation_bytes(model: nn.Module, batch: int, image_size: int, training: bool = True) -> int:
    """Bytes of the distinct tensors autograd keeps for backward in one forward (on the model's device):
    a training step's, or with ``training=False`` an evaluation-mode one's (Grad-CAM's backward pass)."""
    device = next(model.parameters()).device
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    was_training = model.training
    model.train(training)
    x = torch.rand(batch, int(getattr(model, "in_channels", 1)), image_size, image_size, device=device)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = model(x)
        output = output[0] if isinstance(output, tuple) else output
        loss = output.float().pow(2).mean()
    del loss, output
    model.train(was_training)
    return sum(nbytes for ptr, nbytes in storages.items() if ptr not in params)


def activation_bytes(model: nn.Module, image_size: int) -> tuple[int, int]:
    """(bytes per image, bytes whatever the batch) of one training step's saved activations: measured
    at batch 1 and 2, linear in the batch."""
    one = saved_activation_bytes(model, 1, image_size)
    two = saved_activation_bytes(model, 2, image_size)
    return two - one, 2 * one - two


def autoencoder_params(model: nn.Module, image_size: int) -> dict[str, str]:
    """MLflow params: parameter counts, compression ratio, activation MB per batch size (float32,
    measured where the model is)."""
    counts = model.count_parameters()
    per_image, fixed = activation_bytes(model, image_size)
    out = {f"model.params_{k}": str(v) for k, v in counts.items()}
    out["model.compression_ratio"] = f"{model.get_compression_ratio():.1f}"
    out["model.latent_size"] = "x".join(str(v) for v in model.get_latent_size())
    for batch in REPORTED_BATCHES:
        out[f"memory.activation_mb_batch{batch}"] = f"{(fixed + per_image * batch) / MB:.0f}"
    out["memory.weights_grads_adamw_mb"] = f"{4 * counts['total'] * 4 / MB:.0f}"
    return out


SCORING_PROBE_SIZE = 128  # px: measured there, scaled to the input size (activations grow with the pixels)


def scoring_bytes(model: nn.Module, image_size: int, batch: int) -> int:
    """Memory that scoring one batch of ``batch`` images at ``image_size`` takes at its peak: the
    activations Grad-CAM keeps for its backward pass (measured at most at ``SCORING_PROBE_SIZE`` px, in
    evaluation mode, and scaled by the pixels: at 64 -> 128 -> 256 px they grew 3.8x then 3.96x), the
    weights and their gradients, and the float input batch. For refusing, before any work, a setting
    that cannot fit: an estimate, not an allocation plan."""
    side = min(image_size, SCORING_PROBE_SIZE)
    one = saved_activation_bytes(model, 1, side, training=False)
    two = saved_activation_bytes(model, 2, side, training=False)
    per_image, fixed = two - one, max(0, 2 * one - two)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    scale = (image_size / side) ** 2
    return int((fixed + per_image * batch) * scale + 2 * weights + batch * image_size**2 * 4)
