"""Test metrics of a classifier, all computed by scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], prefix: str = ""
) -> tuple[dict[str, float], np.ndarray]:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1, macro one-vs-rest AUROC.

    Returns the metrics (names prefixed by ``prefix``) and the confusion matrix
    (rows: true class, columns: predicted class). AUROC is NaN when a class is
    absent from ``y_true``.
    """
    labels = list(range(len(class_names)))
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    out = {
        "accuracy": accuracy_score(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy_score(y_true, y_pred) if len(y_true) else float("nan"),
        "macro_f1": f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
    }
    for i, name in enumerate(class_names):
        out[f"precision_{name}"] = precision[i]
        out[f"recall_{name}"] = recall[i]
        out[f"f1_{name}"] = f1[i]
    if set(np.unique(y_true)) == set(labels):
        out["auroc_macro"] = roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=labels)
    else:
        out["auroc_macro"] = float("nan")
    metrics = {f"{prefix}{k}": float(v) for k, v in out.items()}
    return metrics, confusion_matrix(y_true, y_pred, labels=labels)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Save the confusion matrix (counts, row-normalised colour) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=120)
    ConfusionMatrixDisplay(matrix, display_labels=list(class_names)).plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set_title(title or "confusion matrix (test)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
