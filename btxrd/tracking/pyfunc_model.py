"""The MLflow model of a classification run, logged as code ("models from code"): MLflow stores
this file beside the run's checkpoint and runs it to load the model, so nothing is unpickled.
MLflow's PyTorch flavour would pickle the whole module (code included); here the checkpoint is
read with ``weights_only=True`` and the network rebuilt from the model registry and the config
stored in it (``btxrd.tasks.inference.Classifier``). Loading needs the btxrd project installed.

Input: radiographs as a uint8 array (N, H, W), any size (one image: (1, H, W)), decoded to gray;
they are letterboxed and resized as the run's evaluation did. Output: one row per image with
p_normal, p_benign, p_malignant, the predicted class, and malignant_at_spec90 / _spec95 (p(malignant)
above the threshold chosen on the run's validation part for that specificity).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from btxrd.tracking.models import CHECKPOINT


class ClassifierModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from btxrd.tasks.inference import Classifier

        self.classifier = Classifier(context.artifacts[CHECKPOINT])

    # np.ndarray and pd.DataFrame are hints MLflow infers no schema from: the logged signature stays the
    # input's schema. (A richer hint would replace it; none at all makes MLflow warn, in colour, twice a job.)
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = np.asarray(model_input)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 radiographs (N, H, W), got {images.dtype} {images.shape}")
        prepared = np.stack([self.classifier.prepare(image) for image in images])
        table, _ = self.classifier.predict(prepared)
        return table


set_model(ClassifierModel())
