"""What classification scoring is made of: the per-image table, the subgroups' columns and metrics, the
operating points' sensitivity and specificity with their intervals, one class's AUROC."""

from __future__ import annotations

import numpy as np
import pandas as pd

from btxrd.data.schema import CLASS_NAMES
from btxrd.metrics.calibration import softmax
from btxrd.metrics.uncertainty import operating_point_replicates, percentile_interval
from btxrd.settings import EvalConfig
from btxrd.tasks.base import PartToScore


def per_image_table(
    part: PartToScore, index: np.ndarray, labels: np.ndarray, logits: np.ndarray, temperature: float
) -> pd.DataFrame:
    """One row per image of ``part`` (in loader order ``index``): who it is, its label, the calibrated
    probabilities and predicted class, the logits before calibration, the columns subgroups are made of."""
    rows, probs = part.rows.iloc[index], softmax(logits, temperature)
    return pd.DataFrame(
        {
            "image_id": rows["image_id"].to_numpy(),
            "center": rows["center"].to_numpy(),
            "group": rows["group"].to_numpy(),
            "label": labels,
            "predicted": probs.argmax(axis=1),
            **{
                column: rows[column].to_numpy() for column in (*SUBGROUP_SOURCES, *part.extra_columns) if column in rows
            },
            **{f"p_{name}": probs[:, i] for i, name in enumerate(CLASS_NAMES)},
            **{f"logit_{name}": logits[:, i] for i, name in enumerate(CLASS_NAMES)},
        }
    )


MALIGNANT = CLASS_NAMES.index("malignant")
# The per-image columns subgroups are made of (the dataset's; an external table may bring more)
SUBGROUP_SOURCES = ("age", "gender", "region", "site")
# Metrics reported per subgroup: replicate name -> name shown
SUBGROUP_METRICS = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "malignant_recall": "malignant recall",
    "auroc_macro": "macro AUROC",
}


def spec_key(specificity: float) -> str:
    """0.9 -> 'spec90', 0.95 -> 'spec95' (metric names)."""
    return f"spec{round(specificity * 100):d}"


def binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, scores)) if 0 < positive.sum() < len(positive) else float("nan")


def operating_point_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    thresholds: dict[str, float],
    weights: np.ndarray,
    evaluation: EvalConfig,
    prefix: str,
) -> tuple[dict[str, float], list[tuple[float, float, str]]]:
    """Malignant sensitivity and specificity at each threshold chosen on validation (``weights``: the
    bootstrap's resampling weights, for their intervals); and the ROC plot's marks."""
    metrics, marks = {}, []
    positive, scores = labels == MALIGNANT, probs[:, MALIGNANT]
    ones = np.ones((1, len(labels)), dtype=np.float32)
    for key, threshold in thresholds.items():
        (sens,), (spec,) = operating_point_replicates(scores, positive, threshold, ones)
        sens_reps, spec_reps = operating_point_replicates(scores, positive, threshold, weights)
        for name, value, reps in (("sensitivity", sens, sens_reps), ("specificity", spec, spec_reps)):
            metric = f"{prefix}malignant_{name}_at_{key}"
            metrics[metric] = float(value)
            metrics[f"{metric}_ci_low"], metrics[f"{metric}_ci_high"] = percentile_interval(reps, evaluation.ci_level)
        metrics[f"malignant_threshold_at_{key}"] = threshold
        marks.append((1 - spec, sens, f"{key.replace('spec', 'val spec. ')}%: sens. {sens:.2f}, spec. {spec:.2f}"))
    return metrics, marks
