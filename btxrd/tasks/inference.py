"""A trained model from its checkpoint alone, and a trained classifier as a function of images.

A checkpoint carries its resolved training config, so the network, its input size and the image
preprocessing are rebuilt exactly as the run had them; it loads with ``weights_only=True`` only.
``Classifier`` is what the logged MLflow model and ``python -m btxrd.predict`` run: images of
any size in, the run's evaluation preprocessing, class probabilities, the malignant decisions at
the operating points chosen on the run's validation part, and Grad-CAM maps on request.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from btxrd.cam.gradcam import grad_cam, upsample
from btxrd.config import stored_run_settings
from btxrd.data.cache import model_input
from btxrd.data.limits import InputLimits
from btxrd.data.schema import CLASS_NAMES
from btxrd.engine import InputPipeline, load_checkpoint, place_model
from btxrd.engine.checkpoint import load_weights
from btxrd.errors import ConfigError, DataError
from btxrd.metrics.calibration import softmax
from btxrd.models import build_model, cam_target, model_entry
from btxrd.models.memory import scoring_bytes
from btxrd.runtime.environment import available_memory
from btxrd.settings import ModelConfig, RunConfig
from btxrd.tasks.base import Calibration, make_task
from btxrd.tasks.classify_metrics import MALIGNANT

MIN_SIDE = 32  # pixels: anything smaller is no radiograph (an icon, a thumbnail, a mistake)


def trained_settings(state: dict, source: str | Path) -> RunConfig:
    """The run's settings as stored in its checkpoint ``state``; DataError when there are none."""
    config = state.get("config")
    if not isinstance(config, dict) or "model" not in config:
        raise DataError(f"{source}: no training config inside; not a btxrd checkpoint")
    schema = model_entry(str(config["model"].get("name"))).config
    return stored_run_settings(config, schema, f"the config stored in {source}")


def restore_model(state: dict, source: str | Path) -> tuple[RunConfig, nn.Module]:
    """(the run's settings, its network with the trained weights, in eval mode, on the CPU)."""
    run = trained_settings(state, source)
    model = build_model(_without_pretrained_weights(run.model))
    load_weights(model, state.get("model"), f"{source} (model.name={run.model.name})")
    return run, model.eval()


def check_scoring_memory(model: nn.Module, image_size: int, batch: int, device: torch.device, batch_key: str) -> None:
    """ConfigError, before any data is read, when scoring batches of ``batch`` images at ``image_size``
    (``batch_key`` names the setting) needs more memory than ``device`` has available."""
    have = available_memory(device)
    if have is None:
        return
    need = scoring_bytes(model, image_size, batch)
    if need > have:
        fits = max(0, int(batch * have / need))
        advice = f"{batch_key}={fits} fits" if fits else "not even one image fits: use a machine with more memory"
        raise ConfigError(
            f"scoring batches of {batch} images at model.image_size={image_size} needs about "
            f"{need / 2**30:.1f} GiB of memory on {device} (estimated), {have / 2**30:.1f} GiB are "
            f"available: {advice}"
        )


def _without_pretrained_weights(model: ModelConfig) -> ModelConfig:
    """The trained weights come from the checkpoint: nothing to download or read first."""
    changes = {"pretrained": False, **({"weights": None} if hasattr(model, "weights") else {})}
    return dataclasses.replace(model, **changes)


class Classifier:
    """A trained classification run, ready to score images."""

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "cpu") -> None:
        state = load_checkpoint(checkpoint)
        self.settings, model = restore_model(state, checkpoint)
        self.task = make_task(self.settings)
        if not self.task.servable:
            raise DataError(f"{checkpoint}: a {self.task.name} model, not a classifier")
        self.model = model
        self.to(device)
        self.calibration = Calibration.of(state)  # the temperature and thresholds fixed on the validation part
        self.operating_points = self.calibration.operating_points
        self.image_size = self.settings.model.image_size
        self.limits = InputLimits.of(self.settings.data)

    def to(self, device: str | torch.device) -> Classifier:
        """Run on ``device`` (the model, and its inputs placed there)."""
        self.device = torch.device(device)
        self.model = place_model(self.model, self.device, self.settings.train.channels_last)
        self.inputs = InputPipeline(self.device, self.task.input_spec(), self.settings.train.channels_last)
        return self

    def prepare(self, image: Image.Image | np.ndarray, name: str = "image") -> np.ndarray:
        """One picture (any size, any supported mode, or a 2-D uint8 array) as the model's input;
        DataError naming it when it is too small to be a radiograph or larger than data.max_image_pixels."""
        picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image
        width, height = picture.size
        if min(width, height) < MIN_SIDE:
            raise DataError(f"{name}: {width} x {height} px is no radiograph (at least {MIN_SIDE} px a side)")
        self.limits.check_pixels(width, height, name)
        return model_input(picture, self.image_size, self.settings.data, name)

    def predict(self, inputs: np.ndarray, with_cam: bool = False) -> tuple[pd.DataFrame, np.ndarray | None]:
        """Prepared inputs (N, S, S) uint8 -> (a table of probabilities, predicted class and the
        malignant decision at each operating point; Grad-CAM maps (N, S, S) of the predicted class or None)."""
        x = self.inputs(torch.from_numpy(np.ascontiguousarray(inputs))[:, None])
        # float32 on every device: the precision the run's test part was scored and its operating points chosen in
        if with_cam:
            maps, logits = grad_cam(self.model, x, cam_target(self.model))
            cams = upsample(maps.float(), inputs.shape[-1]).cpu().numpy().astype(np.float32)
        else:
            with torch.no_grad():
                logits = self.model(x)
            cams = None
        probs = softmax(logits.float().cpu().numpy(), self.calibration.temperature)
        table = pd.DataFrame({f"p_{name}": probs[:, k] for k, name in enumerate(CLASS_NAMES)})
        table["predicted"] = [CLASS_NAMES[k] for k in probs.argmax(axis=1)]
        for key, threshold in sorted(self.operating_points.items()):  # positive: p(malignant) > threshold
            table[f"malignant_at_{key}"] = probs[:, MALIGNANT] > threshold
        return table, cams
