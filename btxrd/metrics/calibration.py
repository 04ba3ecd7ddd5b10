"""Calibration: expected calibration error, Brier score, temperature scaling; ROC / reliability plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def reliability_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Top-label confidence bins: mean confidence, accuracy and count per bin (equal width)."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(float)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges": edges, "confidence": conf_sum / count, "accuracy": acc_sum / count, "count": count}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE (Guo et al., 2017): sum over bins of |accuracy - confidence| weighted by the bin's share.

    scikit-learn has no multi-class ECE (its calibration_curve is binary), hence these few lines.
    """
    bins = reliability_bins(labels, probs, n_bins)
    filled = bins["count"] > 0
    weights = bins["count"][filled] / bins["count"].sum()
    return float(np.sum(weights * np.abs(bins["accuracy"][filled] - bins["confidence"][filled])))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of ``logits / temperature`` (rows), computed in float64, given in float32 as
    every probability table of the project holds them."""
    from scipy.special import softmax as scipy_softmax

    return scipy_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1).astype(np.float32)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    from scipy.special import log_softmax

    scaled = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-scaled[np.arange(len(labels)), labels].mean())


# Temperatures searched: a trained network is rarely off by more than 10x either way (Guo et al. 2017 fit 1-3)
TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling (Guo et al., 2017): the one T > 0 that minimises the negative log-likelihood of
    softmax(logits / T), found by a bounded 1-D search over log T (scipy). T > 1 softens over-confident
    probabilities; the predicted class never changes."""
    from scipy.optimize import minimize_scalar

    low, high = np.log(TEMPERATURE_RANGE)
    found = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(found.x))


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of the squared distance between the probabilities and
    the one-hot label (0 is perfect; 2 the worst)."""
    from btxrd.metrics.uncertainty import brier_replicates

    return float(brier_replicates(labels, probs, np.ones((1, len(labels))))[0])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc_curves(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    marks: Sequence[tuple[float, float, str]] = (),
    title: str = "ROC, one vs rest",
) -> Path:
    """One-vs-rest ROC curve per class (scikit-learn's RocCurveDisplay); ``marks``: operating points
    (false positive rate, true positive rate, label) drawn on top."""
    from sklearn.metrics import RocCurveDisplay

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 4.8), dpi=120)
    for k, name in enumerate(class_names):
        if 0 < (labels == k).sum() < len(labels):
            RocCurveDisplay.from_predictions(labels == k, probs[:, k], name=name, ax=ax)
    for (fpr, tpr, label), marker in zip(marks, "osD^v", strict=False):
        ax.plot(
            [fpr],
            [tpr],
            marker=marker,
            markersize=8,
            markerfacecolor="none",
            markeredgewidth=1.8,
            color="black",
            linestyle="none",
            label=label,
        )
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    if marks:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_reliability(labels: np.ndarray, probs: np.ndarray, path: str | Path, n_bins: int = 10) -> Path:
    plt = _pyplot()
    bins = reliability_bins(labels, probs, n_bins)
    centres = (bins["edges"][:-1] + bins["edges"][1:]) / 2
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.bar(centres, np.nan_to_num(bins["accuracy"]), width=1 / n_bins, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfect calibration")
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability, ECE = {expected_calibration_error(labels, probs, n_bins):.3f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
