"""Reading a layer's output during a forward pass (Grad-CAM, the attention loss)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def capture_activation(layer: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict whose 'value' is the layer's output of the next forward (graph kept); no hook is left."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        store["value"] = output

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()
