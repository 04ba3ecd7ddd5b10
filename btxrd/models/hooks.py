"""Reading a layer's output during a forward pass (Grad-CAM, the attention loss, CBAM gate statistics)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from btxrd.models.blocks import CBAM


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


class GateTally:
    """Running counts of CBAM's channel and spatial gates: how many sit near 0 (closed), near 1 (open),
    and their mean. Saturated gates pass no gradient (sigmoid' ~ 0), and a closed gate in front of a
    block's identity path cuts the signal off: the numbers that say whether attention is working."""

    NEAR = 0.05  # closed below NEAR, open above 1 - NEAR

    def __init__(self) -> None:
        self.counts: dict[str, torch.Tensor] = {}  # kind -> (closed, open, sum, count), on the gates' device

    def add(self, kind: str, gates: torch.Tensor) -> None:
        gates = gates.detach().double()  # kept on the device: no host sync per module
        counts = torch.stack(
            [
                gates.lt(self.NEAR).sum(),
                gates.gt(1 - self.NEAR).sum(),
                gates.sum(),
                torch.tensor(float(gates.numel()), device=gates.device),
            ]
        )
        self.counts[kind] = self.counts[kind] + counts if kind in self.counts else counts

    def metrics(self, prefix: str) -> dict[str, float]:
        """e.g. {prefix + 'channel_gates_closed': fraction, ..._open, ..._mean}; {} when nothing was seen."""
        out = {}
        for kind, (closed, opened, total, n) in ((k, v.tolist()) for k, v in self.counts.items()):
            out |= {
                f"{prefix}{kind}_gates_closed": closed / n,
                f"{prefix}{kind}_gates_open": opened / n,
                f"{prefix}{kind}_gates_mean": total / n,
            }
        return out


@contextmanager
def gate_statistics(model: nn.Module) -> Iterator[GateTally]:
    """Tally the CBAM gates of every forward pass inside the block; no hook is left."""
    tally = GateTally()
    handles = []
    for module in model.modules():
        if isinstance(module, CBAM):
            for kind, tap in (("channel", module.channel_gates), ("spatial", module.spatial_gates)):
                handles.append(tap.register_forward_hook(lambda _m, _i, out, kind=kind: tally.add(kind, out)))
    try:
        yield tally
    finally:
        for handle in handles:
            handle.remove()
