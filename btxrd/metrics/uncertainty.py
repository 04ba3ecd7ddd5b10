"""Confidence intervals by bootstrap over patient-proxy groups, vectorised.

Views of one patient are not independent, so the unit of resampling is the group (the release's
patient proxy, duplicates merged into it), not the image: each resample draws, within each class,
as many groups as the part has, with replacement (stratified, so every class keeps its share).
A resample is a row of weights (how often each image was drawn); every metric is computed for
all resamples at once from those weights (confusion matrices and rank sums as matrix products),
which costs seconds for 2,000 resamples of a 600-image part instead of the minutes a loop of
scikit-learn calls would. The point estimate is the same computation with all weights 1, which
equals scikit-learn's value (tested, as is every weighted metric against scikit-learn's
``sample_weight``). Intervals are percentile intervals.

Written here, not taken from ``scipy.stats.bootstrap``: scipy resamples observations, not
clusters, and would call the statistic once per resample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def group_bootstrap(groups: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, images) weights: each row one resample of whole groups, stratified by class.

    A group's class is its images' label (groups are class-homogeneous by construction; one that
    is not counts as its most frequent label).
    """
    rng = np.random.default_rng(seed)
    _, group_of = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = group_of.max() + 1 if len(group_of) else 0
    by_group = np.zeros((n_groups, int(labels.max()) + 1 if len(labels) else 1), dtype=np.int64)
    np.add.at(by_group, (group_of, labels), 1)
    group_label = by_group.argmax(axis=1)
    counts = np.zeros((n, n_groups), dtype=np.float32)
    for label in np.unique(group_label):
        members = np.flatnonzero(group_label == label)
        m = len(members)
        draws = rng.integers(0, m, size=(n, m)) + (np.arange(n) * m)[:, None]
        counts[:, members] = np.bincount(draws.ravel(), minlength=n * m).reshape(n, m)
    return counts[:, group_of]


def percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` interval of the bootstrap replicates (NaN replicates left out)."""
    finite = replicates[np.isfinite(replicates)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (positive vs rest) for each row of ``weights`` (R, N): the weighted Mann-Whitney
    statistic, ties counted half, from one sort of the scores. NaN where a class has no weight."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # blocks of tied scores
    w = weights[:, order].astype(np.float64)
    pos = positive[order].astype(bool)
    pos_block = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)
    neg_block = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)
    neg_below = np.cumsum(neg_block, axis=1) - neg_block
    wins = (pos_block * (neg_below + 0.5 * neg_block)).sum(axis=1)
    pairs = pos_block.sum(axis=1) * neg_block.sum(axis=1)
    return np.divide(wins, pairs, out=np.full(len(wins), np.nan), where=pairs > 0)


def calibration_error(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Expected calibration error (top-label, equal-width bins; Guo et al. 2017) per row of ``weights``."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    onehot = np.eye(n_bins)[which]
    w = weights.astype(np.float64)
    gap = np.abs(w @ (onehot * correct[:, None]) - w @ (onehot * confidence[:, None]))
    return gap.sum(axis=1) / w.sum(axis=1)


def classification_replicates(
    labels: np.ndarray, probs: np.ndarray, weights: np.ndarray, class_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Every classification metric for each row of ``weights`` (R, N): accuracy, balanced accuracy,
    macro-F1, per-class precision / recall / F1, one-vs-rest AUROC (per class and macro), ECE, Brier score."""
    k = len(class_names)
    predicted = probs.argmax(axis=1)
    cells = np.zeros((len(labels), k * k))
    cells[np.arange(len(labels)), labels * k + predicted] = 1.0
    confusion = (weights.astype(np.float64) @ cells).reshape(-1, k, k)  # rows: true class
    true_counts, predicted_counts = confusion.sum(axis=2), confusion.sum(axis=1)
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    recall = _safe_ratio(hits, true_counts)
    precision = _safe_ratio(hits, predicted_counts)
    f1 = _safe_ratio(2 * hits, true_counts + predicted_counts)
    present = true_counts > 0
    out = {
        "accuracy": hits.sum(axis=1) / confusion.sum(axis=(1, 2)),
        "balanced_accuracy": np.where(present, recall, 0).sum(axis=1) / np.maximum(present.sum(axis=1), 1),
        "macro_f1": f1.mean(axis=1),
    }
    aurocs = []
    for i, name in enumerate(class_names):
        out[f"precision_{name}"], out[f"recall_{name}"], out[f"f1_{name}"] = precision[:, i], recall[:, i], f1[:, i]
        aurocs.append(weighted_auc(probs[:, i], labels == i, weights))
    out["auroc_macro"] = np.mean(aurocs, axis=0)  # NaN when a class is absent, as scikit-learn refuses it
    for name, auroc in zip(class_names, aurocs, strict=True):
        out[f"auroc_{name}"] = auroc
    out["ece"] = calibration_error(labels, probs, weights)
    out["brier"] = brier_replicates(labels, probs, weights)
    return out


def brier_replicates(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The multi-class Brier score per row of ``weights``."""
    squared = ((probs - np.eye(probs.shape[1])[labels]) ** 2).sum(axis=1)
    return mean_replicates(squared, weights)


def mean_replicates(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean of per-image ``values`` for each row of ``weights``; NaN values are left out."""
    valid = np.isfinite(values)
    w = weights[:, valid].astype(np.float64)
    total = w.sum(axis=1)
    return np.divide(w @ values[valid], total, out=np.full(len(total), np.nan), where=total > 0)


def threshold_at_specificity(negative_scores: np.ndarray, specificity: float) -> float:
    """The lowest threshold t (positive: score > t) at which at least ``specificity`` of the
    negatives score <= t: the most sensitive operating point that keeps the specificity."""
    if len(negative_scores) == 0:
        return float("nan")
    ordered = np.sort(negative_scores)
    return float(ordered[min(len(ordered), int(np.ceil(specificity * len(ordered)))) - 1])


def operating_point_replicates(
    scores: np.ndarray, positive: np.ndarray, threshold: float, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(sensitivity, specificity) at ``threshold`` for each row of ``weights``."""
    flagged = (scores > threshold).astype(np.float64)
    pos = positive.astype(bool)
    w = weights.astype(np.float64)
    sensitivity = _safe_ratio(w[:, pos] @ flagged[pos], w[:, pos].sum(axis=1))
    specificity = _safe_ratio(w[:, ~pos] @ (1 - flagged[~pos]), w[:, ~pos].sum(axis=1))
    return sensitivity, specificity
