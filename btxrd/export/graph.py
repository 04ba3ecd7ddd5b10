"""A classifier as an ONNX graph (torch's exporter), its metadata, and onnxruntime to score it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from btxrd.data.schema import CLASS_NAMES
from btxrd.errors import ConfigError
from btxrd.tasks.inference import Classifier

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
OPSET = 18
MISSING_EXTRA = "ONNX export needs onnx, onnxscript and onnxruntime: pip install -e '.[onnx]'"


class ProbabilityGraph(nn.Module):
    """What ``Classifier.predict`` computes from prepared inputs, as one module: uint8 (N, S, S) scaled to
    0-1, normalised as in training, the network, softmax of the logits over the run's temperature."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        spec = classifier.task.input_spec()
        self.network = classifier.model
        self.mean, self.std = float(spec.mean), float(spec.std)
        self.temperature = float(classifier.calibration.temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images[:, None].float() / 255.0 - self.mean) / self.std
        return torch.softmax(self.network(x) / self.temperature, dim=1)


def export_onnx(classifier: Classifier, path: Path, source: str) -> None:
    """Write ``classifier`` (on the CPU, float32) to ``path``: a dynamic batch, the metadata a deployer needs."""
    try:
        import onnx
        import onnxscript  # noqa: F401 (torch's exporter writes the graph through it)
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    classifier.to("cpu")
    graph = ProbabilityGraph(classifier).eval()
    size = classifier.image_size
    example = torch.full((2, size, size), 128, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: batch}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,  # one file: a ResNet-50 is about 100 MB, under protobuf's 2 GB
            verbose=False,
        )
    model = onnx.load(str(path))
    settings = classifier.settings
    metadata = {
        "source": source,
        "classes": json.dumps(list(CLASS_NAMES)),
        "input": f"uint8 (N, {size}, {size}): a grayscale radiograph letterboxed and resized to {size} x {size}",
        "preprocess": settings.data.preprocess,  # none, or clahe: applied before the graph
        "temperature": f"{classifier.calibration.temperature:.6g}",
        "malignant_thresholds": json.dumps(dict(sorted(classifier.operating_points.items()))),
        "model": settings.model.name,
    }
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def onnx_probabilities(path: Path, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities (N, 3) of prepared uint8 inputs (N, S, S), computed by onnxruntime on the CPU,
    ``batch_size`` images at a time."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batches = [
        np.ascontiguousarray(images[i : i + batch_size], dtype=np.uint8) for i in range(0, len(images), batch_size)
    ]
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0] for batch in batches])
