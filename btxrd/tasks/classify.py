"""Classification of radiographs: normal / benign / malignant.

Objective: class-weighted cross-entropy, plus with ``annotations=on`` an attention loss on tumour
images (in the same forward/backward): weight x (1 - share of the true class's CAM mass inside
the dilated lesion mask). Scoring: scikit-learn metrics, calibration, Grad-CAM localisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from btxrd.cam.explain import explain_rows
from btxrd.cam.guidance import attention_loss
from btxrd.data.limits import InputLimits
from btxrd.data.loaders import Batch
from btxrd.data.reader import with_annotations
from btxrd.data.schema import CLASS_NAMES
from btxrd.engine import InputPipeline, InputSpec, autocast
from btxrd.errors import ConfigError
from btxrd.metrics import classification_metrics, plot_confusion_matrix
from btxrd.metrics.calibration import (
    brier_score,
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
    plot_roc_curves,
    softmax,
)
from btxrd.metrics.comparison import delong_macro_test, mcnemar_test
from btxrd.metrics.localization import LOCALIZATION_COLUMNS, localization_scores
from btxrd.metrics.subgroups import plot_subgroups, subgroup_table
from btxrd.metrics.uncertainty import (
    brier_replicates,
    calibration_error,
    classification_replicates,
    mean_replicates,
    threshold_at_specificity,
)
from btxrd.models import capture_activation
from btxrd.settings import AnnotationsConfig, EvalConfig, TrainConfig
from btxrd.tasks.base import Calibration, PartToScore, Scores, Task, register_task, resample
from btxrd.tasks.classify_metrics import (
    MALIGNANT,
    SUBGROUP_METRICS,
    binary_auroc,
    operating_point_metrics,
    per_image_table,
    spec_key,
)


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights from the training part: n / (K * n_c); absent classes get 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: DataLoader, inputs: InputPipeline, amp: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (float32), true labels and dataset indices over ``loader`` (model in eval mode)."""
    was_training = model.training
    model.eval()
    logits, labels, indices = [], [], []
    for batch in loader:
        with autocast(inputs.device, amp):
            out = model(inputs(batch.images))
        logits.append(out.float().cpu())
        labels.append(batch.labels)
        indices.append(batch.index)
    model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy(), torch.cat(indices).numpy()


def predict(
    model: nn.Module, loader: DataLoader, inputs: InputPipeline, amp: bool, temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class probabilities (softmax of the logits / ``temperature``), true labels and dataset indices."""
    logits, labels, indices = predict_logits(model, loader, inputs, amp)
    return softmax(logits, temperature), labels, indices


class ClassificationObjective:
    """Class-weighted cross-entropy (+ the attention loss on annotated tumour images); val metrics."""

    def __init__(
        self,
        inputs: InputSpec,
        train: TrainConfig,
        annotations: AnnotationsConfig,
        image_size: int,
        cam_target_name: str,
    ) -> None:
        self.inputs, self.amp, self.channels_last = inputs, train.amp, train.channels_last
        self.use_class_weights, self.label_smoothing = train.class_weights, train.label_smoothing
        self.cam_loss_weight = annotations.cam_loss_weight if annotations.enabled else 0.0
        self.mask_dilation = round(annotations.mask_dilation * image_size)  # pixels at the input resolution
        self.cam_target_name = cam_target_name

    def setup(self, model: nn.Module, device: torch.device, train_labels: np.ndarray) -> None:
        weight = class_weights(train_labels, len(CLASS_NAMES)).to(device) if self.use_class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=self.label_smoothing)
        self.pipeline = InputPipeline(device, self.inputs, self.channels_last)
        if self.cam_loss_weight > 0:
            self.target, self.head = model.get_submodule(self.cam_target_name), model.get_classifier()

    def loss(self, model: nn.Module, x: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict]:
        y = batch.labels.to(x.device, non_blocking=True)
        use_cam_loss = self.cam_loss_weight > 0
        with capture_activation(self.target) if use_cam_loss else nullcontext() as store:
            loss = self.criterion(model(x).float(), y)
        if not use_cam_loss:
            return loss, {}
        # Same forward, same backward: the CAM comes from the captured final features. Images without
        # a lesion mask count 0 (no branch on the host: no sync).
        chosen = batch.has_mask.to(x.device, non_blocking=True)
        per_image = attention_loss(
            store["value"], self.head.weight, y, batch.masks.to(x.device, non_blocking=True), self.mask_dilation
        )
        count = chosen.sum()
        cam_loss = (per_image * chosen).sum() / count.clamp_min(1)
        return loss + self.cam_loss_weight * cam_loss, {"train_cam_loss": (cam_loss * count, count)}

    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        probs, labels, _ = predict(model, loader, self.pipeline, self.amp)
        with torch.no_grad():  # CE from probabilities: softmax(log p) = p
            log_probs = torch.from_numpy(np.log(np.clip(probs, 1e-12, 1))).to(device)
            val_loss = float(self.criterion(log_probs, torch.from_numpy(labels).to(device)))
        metrics, _ = classification_metrics(labels, probs, CLASS_NAMES, prefix="val_")
        keep = ("val_accuracy", "val_macro_f1", "val_balanced_accuracy", "val_auroc_macro")
        return {"val_loss": val_loss, **{k: metrics[k] for k in keep}}


@register_task
class ClassifyTask(Task):
    name = "classify"
    monitors = ("val_macro_f1", "val_accuracy", "val_balanced_accuracy", "val_auroc_macro")
    servable = True
    headline = ("test_macro_f1", "test_accuracy")
    compared = {
        "macro_f1": "macro-F1",
        "malignant_recall": "malignant recall",
        "auroc_macro": "AUROC",
        "cam_pointing": "CAM pointing",
        "cam_energy": "CAM energy in box",
    }
    per_image_file = "predictions_{part}.csv"
    report_columns = {
        "test_accuracy": "accuracy",
        "test_balanced_accuracy": "bal. acc.",
        "test_macro_f1": "macro-F1",
        "test_malignant_recall": "malig. recall",
        "test_auroc_macro": "AUROC",
        "test_cam_pointing": "CAM pointing",
        "test_cam_energy": "CAM energy",
        "test_cam_energy_baseline": "energy baseline",
        "test_ece": "ECE",
        "test_ece_uncalibrated": "ECE uncal.",
    }
    chart_metrics = ("test_macro_f1", "test_auroc_macro", "test_cam_pointing")
    # A model that learnt beats the majority class on the metrics that weigh every class alike (accuracy
    # and malignant recall can favour predicting the most frequent class)
    learnt_beyond = ("test_balanced_accuracy", "test_macro_f1", "test_auroc_macro")
    report_notes = """\
Published on the real BTXRD (not measured here; different protocols):
- Yao et al. 2025, YOLOv8s-cls 600 px, random 80/20 split: precision normal/benign/malignant
  91.3/88.1/73.4, recall 89.8/87.5/83.9.
- A reproduction of that baseline: accuracy 0.886, macro-F1 0.856, macro AUROC 0.945.
- EfficientNet-B0 224 px: accuracy 67.9% (stratified split), 47.2% trained on centre 1 and
  tested on centres 2+3.
"""
    required_classes = tuple(range(len(CLASS_NAMES)))

    @property
    def reads_annotations(self) -> bool:
        """Training reads the lesion annotations only with annotations=on."""
        return self.settings.annotations.enabled

    def training_dataset_options(self) -> dict[str, bool]:
        ann = self.settings.annotations
        return {"lesion_crops": ann.enabled and ann.lesion_crops, "with_masks": ann.enabled and ann.cam_loss_weight > 0}

    def run_name_part(self) -> str:
        return f"ann-{'on' if self.settings.annotations.enabled else 'off'}"

    def check(self) -> None:
        ann = self.settings.annotations
        if self.settings.train.compile and ann.enabled and ann.cam_loss_weight > 0:
            raise ConfigError(
                "train.compile=true cannot train with the attention loss (annotations=on hooks into "
                "the network); use annotations.cam_loss_weight=0 or train.compile=false"
            )

    def tags(self) -> dict[str, str]:
        return {"task": self.name, "annotations": "on" if self.settings.annotations.enabled else "off"}

    def input_spec(self) -> InputSpec:
        d = self.settings.data
        return InputSpec(mean=d.mean, std=d.std, brightness=d.brightness, contrast=d.contrast)

    def objective(self, model: nn.Module) -> ClassificationObjective:
        run = self.settings
        return ClassificationObjective(
            self.input_spec(), run.train, run.annotations, run.model.image_size, model.cam_target_name
        )

    def calibrate(
        self, model: nn.Module, val: PartToScore, device: torch.device, evaluation: EvalConfig
    ) -> Calibration:
        """On the validation part: the temperature of its logits (``eval.calibrate``; else 1), then the
        malignant-vs-rest thresholds on the calibrated p(malignant), each the most sensitive one that keeps
        its specificity."""
        inputs = InputPipeline(device, self.input_spec(), self.settings.train.channels_last)
        logits, labels, _ = predict_logits(model, val.loader, inputs, amp=False)  # float32, as test and served
        temperature = fit_temperature(logits, labels) if evaluation.calibrate else 1.0
        negatives = softmax(logits, temperature)[labels != MALIGNANT, MALIGNANT]
        return Calibration(
            temperature, {spec_key(s): threshold_at_specificity(negatives, s) for s in evaluation.specificities}
        )

    def predictions(
        self, model: nn.Module, part: PartToScore, device: torch.device, calibration: Calibration
    ) -> pd.DataFrame:
        """The per-image table of ``part`` without the pictures and Grad-CAM: what a cross-validation sweep
        pools of each fold's validation part (out-of-fold results)."""
        inputs = InputPipeline(device, self.input_spec(), self.settings.train.channels_last)
        logits, labels, index = predict_logits(model, part.loader, inputs, amp=False)
        return per_image_table(part, index, labels, logits, calibration.temperature)

    @classmethod
    def pooled(cls, tables: list[pd.DataFrame]) -> pd.DataFrame:
        """Per image, the mean of the tables' calibrated probabilities (a fold ensemble; several seeds of one
        fold): one row per image, sorted by image."""
        probabilities = [f"p_{name}" for name in CLASS_NAMES]
        stacked = pd.concat(tables, ignore_index=True)
        first = stacked.groupby("image_id", sort=True).first()
        mean = stacked.groupby("image_id", sort=True)[probabilities].mean()
        keep = [
            c
            for c in first.columns
            if c not in probabilities
            and not c.startswith("logit_")
            and c not in LOCALIZATION_COLUMNS
            and c != "predicted"
        ]
        out = pd.concat([first[keep], mean], axis=1).reset_index()
        out["predicted"] = out[probabilities].to_numpy().argmax(axis=1)
        return out

    def score(
        self,
        model: nn.Module,
        part: PartToScore,
        device: torch.device,
        out_dir: Path,
        title: str,
        evaluation: EvalConfig,
        calibration: Calibration,
    ) -> Scores:
        prefix = f"{part.name}_"
        inputs = InputPipeline(device, self.input_spec(), self.settings.train.channels_last)
        amp = False  # scored in float32, as the operating points were chosen and as the logged model serves
        logits, labels, index = predict_logits(model, part.loader, inputs, amp)
        probs = softmax(logits, calibration.temperature)
        point, matrix = classification_metrics(labels, probs, CLASS_NAMES, prefix=prefix)
        point[f"{prefix}malignant_recall"] = point[f"{prefix}recall_malignant"]
        point[f"{prefix}ece"] = expected_calibration_error(labels, probs)
        point[f"{prefix}ece_uncalibrated"] = expected_calibration_error(labels, softmax(logits))
        point[f"{prefix}brier"] = brier_score(labels, probs)
        point[f"{prefix}brier_uncalibrated"] = brier_score(labels, softmax(logits))
        point["temperature"] = calibration.temperature
        for i, name in enumerate(CLASS_NAMES):
            point[f"{prefix}auroc_{name}"] = binary_auroc(labels == i, probs[:, i])
        # The part's annotations are read here, after prediction, only to score the maps.
        annotated = (
            part.rows
            if part.annotations_read
            else with_annotations(part.rows, part.root, InputLimits.of(self.settings.data))
        )
        cams, grids = explain_rows(model, part.loader, inputs, amp, annotated, part.cache, out_dir / "gradcam", title)
        point.update({f"{prefix}{k}": v for k, v in localization_scores(cams).items()})
        per_image = per_image_table(part, index, labels, logits, calibration.temperature)
        per_image = per_image.assign(**{name: cams.loc[index, name].to_numpy() for name in cams.columns})
        metrics = self.with_intervals(per_image, point, evaluation, prefix)
        marks = []
        if calibration.operating_points:
            weights = resample(per_image, evaluation)
            found, marks = operating_point_metrics(
                labels, probs, calibration.operating_points, weights, evaluation, prefix
            )
            metrics.update(found)
        predictions = out_dir / f"predictions_{part.name}.csv"
        per_image.to_csv(predictions, index=False)
        subgroups = self.subgroups(per_image, evaluation, part.extra_columns)
        subgroups.to_csv(out_dir / f"subgroups_{part.name}.csv", index=False)
        subgroup_plot = plot_subgroups(
            subgroups,
            "macro-F1",
            point[f"{prefix}macro_f1"],
            out_dir / f"subgroups_{part.name}.png",
            f"{title}: macro-F1 by subgroup",
        )
        artifacts = [
            plot_confusion_matrix(matrix, CLASS_NAMES, out_dir / f"confusion_matrix_{part.name}.png", title),
            plot_roc_curves(
                labels,
                probs,
                CLASS_NAMES,
                out_dir / f"roc_{part.name}.png",
                marks,
                f"{title}: ROC ({part.name}); markers: malignant thresholds chosen on val",
            ),
            plot_reliability(labels, probs, out_dir / f"reliability_{part.name}.png"),
            predictions,
            out_dir / f"subgroups_{part.name}.csv",
            subgroup_plot,
            *grids,
        ]
        return Scores(metrics, artifacts, per_image)

    @classmethod
    def replicates(cls, per_image: pd.DataFrame, weights: np.ndarray) -> dict[str, np.ndarray]:
        labels = per_image["label"].to_numpy()
        probs = per_image[[f"p_{name}" for name in CLASS_NAMES]].to_numpy()
        out = classification_replicates(labels, probs, weights, CLASS_NAMES)
        malignant = weights.astype(np.float64) @ (labels == MALIGNANT)  # no malignant image: no recall of them
        out["malignant_recall"] = np.where(malignant > 0, out["recall_malignant"], np.nan)
        logits = [f"logit_{name}" for name in CLASS_NAMES]
        if all(column in per_image for column in logits):  # tables written before temperature scaling have none
            uncalibrated = softmax(per_image[logits].to_numpy())
            out["ece_uncalibrated"] = calibration_error(labels, uncalibrated, weights)
            out["brier_uncalibrated"] = brier_replicates(labels, uncalibrated, weights)
        for name in LOCALIZATION_COLUMNS:
            if name in per_image:
                out[name] = mean_replicates(per_image[name].to_numpy(dtype=float), weights)
        return out

    @classmethod
    def subgroups(cls, per_image: pd.DataFrame, evaluation: EvalConfig, extra: Sequence[str] = ()) -> pd.DataFrame:
        return subgroup_table(
            per_image,
            SUBGROUP_METRICS,
            evaluation.age_bands,
            evaluation.ci_level,
            cls.replicates,
            lambda table: resample(table, evaluation),
            extra,
        )

    @classmethod
    def chance_levels(cls, per_image: pd.DataFrame) -> dict[str, float]:
        """Always predicting the part's most frequent class (constant scores: AUROC 0.5)."""
        counts = np.bincount(per_image["label"].to_numpy(), minlength=len(CLASS_NAMES))
        majority = int(counts.argmax())
        share = counts[majority] / counts.sum()
        return {
            "test_accuracy": float(share),
            "test_balanced_accuracy": 1 / len(CLASS_NAMES),
            "test_macro_f1": float(2 * share / (1 + share)) / len(CLASS_NAMES),
            "test_malignant_recall": float(majority == MALIGNANT),
            "test_auroc_macro": 0.5,
        }

    @classmethod
    def paired_tests(cls, a: pd.DataFrame, b: pd.DataFrame) -> dict[str, float]:
        """DeLong's test of the macro AUROC (patient groups as clusters) and McNemar's of accuracy."""
        labels, groups = a["label"].to_numpy(), a["group"].to_numpy()
        columns = [f"p_{name}" for name in CLASS_NAMES]
        _, z, p = delong_macro_test(labels, a[columns].to_numpy(), b[columns].to_numpy(), groups)
        correct_a = a["predicted"].to_numpy() == labels
        correct_b = b["predicted"].to_numpy() == labels
        return {
            "delong_auroc_macro_z": z,
            "delong_auroc_macro_p": p,
            "mcnemar_accuracy_p": mcnemar_test(correct_a, correct_b),
        }
