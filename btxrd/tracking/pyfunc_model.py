"""The MLflow model of a classification run, logged as code ("models from code"): MLflow stores
this file beside the run's checkpoint and runs it to load the model, so nothing is unpickled.
MLflow's PyTorch flavour would pickle the whole module (code included); here the checkpoint is
read with ``weights_only=True`` and the network rebuilt from the model registry and the config
stored in it (``btxrd.tasks.inference.Classifier``). Loading needs the btxrd project installed.

Input: radiographs as a uint8 array (N, H, W), any size of at least 32 px a side (one image: (1, H, W)),
decoded to gray; they are letterboxed and resized as the run's evaluation did. Input the model cannot
score is refused (an MLflow INVALID_PARAMETER_VALUE error: HTTP 400 from ``mlflow models serve``):
another dtype, too small or too large, or a picture with no contrast, which is what float pixels in
0-1 become when the server casts a JSON request to the uint8 schema. Output: one row per image with
p_normal, p_benign, p_malignant, the predicted class, and malignant_at_spec90 / _spec95 (p(malignant)
above the threshold chosen on the run's validation part for that specificity).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from btxrd.errors import DataError
from btxrd.tracking.models import CHECKPOINT

# Grey levels between a picture's darkest and brightest pixel below which it is no radiograph: float
# pixels in 0-1, cast to uint8 by the server, are all 0 (or 1)
MIN_CONTRAST = 16


class ClassifierModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from btxrd.tasks.inference import Classifier

        self.classifier = Classifier(context.artifacts[CHECKPOINT])

    # np.ndarray and pd.DataFrame are hints MLflow infers no schema from: the logged signature stays the
    # input's schema. (A richer hint would replace it; none at all makes MLflow warn, in colour, twice a job.)
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = np.asarray(model_input)
        if images.ndim != 3 or images.dtype != np.uint8 or len(images) == 0:
            _refuse(f"expected uint8 radiographs (N, H, W) with values 0-255, got {images.dtype} {images.shape}")
        prepared = []
        for i, image in enumerate(images):
            try:
                prepared.append(self.classifier.prepare(image, f"image {i}"))
            except DataError as exc:
                _refuse(str(exc))
            low, high = int(image.min()), int(image.max())
            if high - low < MIN_CONTRAST:
                _refuse(
                    f"image {i}: every pixel lies in {low}-{high}, no radiograph: send uint8 values 0-255 (a float "
                    "picture in 0-1 must be multiplied by 255 first)"
                )
        batch = self.classifier.settings.train.eval_batch_size  # a request of thousands is scored a batch at a time
        tables = [self.classifier.predict(np.stack(prepared[i : i + batch]))[0] for i in range(0, len(prepared), batch)]
        return pd.concat(tables, ignore_index=True)


def _refuse(message: str) -> None:
    """Input the model cannot score: MLflow's server answers 400 with ``message``."""
    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


set_model(ClassifierModel())
