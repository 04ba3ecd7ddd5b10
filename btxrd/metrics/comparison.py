"""Tests of a difference between two models scored on the same images.

- Paired bootstrap: both models' metrics under the same resampled groups; the difference's
  percentile interval, and a two-sided p-value from its bootstrap standard error (z = difference /
  SE). Counting resampled differences beyond zero would floor p at 2 / (resamples + 1), which a
  Holm adjustment over dozens of comparisons would turn into "never significant".
- DeLong's test for two correlated AUROCs (DeLong, DeLong & Clarke-Pearson, 1988), computed from
  midranks (Sun & Xu, 2014). With ``groups`` the variance sums each patient's placement values
  before squaring (Obuchowski, 1997, clustered ROC data): views of one patient count once.
  Written here (scipy and statsmodels have no DeLong); checked in the tests against an independent
  implementation (MLstatkit's, which follows R's pROC) and a brute-force placement count.
- McNemar's test on paired correctness (statsmodels), exact binomial for few discordant pairs.
- Holm's step-down adjustment for several comparisons in one report (statsmodels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata


@dataclass(frozen=True)
class Difference:
    """A - B with its interval and p-value."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float


def bootstrap_difference(delta: float, replicates: np.ndarray, level: float) -> Difference:
    """The difference's percentile interval and two-sided p-value (bootstrap standard error) from its replicates."""
    finite = replicates[np.isfinite(replicates)]
    if len(finite) < 2:
        return Difference(delta, float("nan"), float("nan"), float("nan"))
    low, high = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    se = float(finite.std(ddof=1))
    if se <= 1e-12:  # no resample moves the difference: identical predictions
        p_value = 1.0 if abs(delta) <= 1e-12 else 0.0
    else:
        p_value = float(2 * norm.sf(abs(delta) / se))
    return Difference(float(delta), float(low), float(high), p_value)


def _placements(scores: np.ndarray, positive: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(AUROC, V10 per positive, V01 per negative): each positive's share of negatives it outranks
    and each negative's share of positives that outrank it, ties counted half (midranks)."""
    pos_scores, neg_scores = scores[positive], scores[~positive]
    m, n = len(pos_scores), len(neg_scores)
    all_ranks = rankdata(np.concatenate([pos_scores, neg_scores]))
    v10 = (all_ranks[:m] - rankdata(pos_scores)) / n
    v01 = 1.0 - (all_ranks[m:] - rankdata(neg_scores)) / m
    return float(v10.mean()), v10, v01


def _cluster_sums(values: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Per cluster, the sum of ``values`` (rows: models)."""
    _, index = np.unique(clusters, return_inverse=True)
    out = np.zeros((values.shape[0], index.max() + 1))
    for row in range(values.shape[0]):
        np.add.at(out[row], index, values[row])
    return out


def _stratum_covariance(centred: np.ndarray, clusters: np.ndarray | None, count: int) -> np.ndarray:
    """DeLong's S/count for one stratum (positives or negatives): sum of outer products of the
    (cluster-summed) centred placements, with the C/(C-1) correction; equals DeLong's unbiased
    covariance / count when every image is its own cluster."""
    sums = centred if clusters is None else _cluster_sums(centred, clusters)
    c = sums.shape[1]
    return (sums @ sums.T) * c / (max(c - 1, 1) * count**2)


def delong_covariance(
    positive: np.ndarray, scores: np.ndarray, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (M,) of the M score rows (M, N) against ``positive`` (N,), and their covariance (M, M)."""
    positive = positive.astype(bool)
    m, n = int(positive.sum()), int((~positive).sum())
    aucs, v10, v01 = zip(*(_placements(row, positive) for row in np.atleast_2d(scores)), strict=True)
    aucs = np.asarray(aucs)
    centred10 = np.stack(v10) - aucs[:, None]
    centred01 = np.stack(v01) - aucs[:, None]
    pos_groups = groups[positive] if groups is not None else None
    neg_groups = groups[~positive] if groups is not None else None
    covariance = _stratum_covariance(centred10, pos_groups, m) + _stratum_covariance(centred01, neg_groups, n)
    return aucs, covariance


def delong_test(
    positive: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, groups: np.ndarray | None = None
) -> tuple[float, float, float]:
    """(AUROC_A - AUROC_B, z, two-sided p) for two models scored on the same images."""
    aucs, cov = delong_covariance(positive, np.stack([scores_a, scores_b]), groups)
    delta = float(aucs[0] - aucs[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if variance <= 1e-15:  # identical rankings: no difference to test
        return delta, 0.0, 1.0 if abs(delta) < 1e-12 else 0.0
    z = delta / np.sqrt(variance)
    return delta, float(z), float(2 * norm.sf(abs(z)))


def delong_macro_test(
    labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, groups: np.ndarray | None = None
) -> tuple[float, float, float]:
    """(macro AUROC_A - macro AUROC_B, z, p) for the one-vs-rest macro AUROC (mean over classes).

    The variance of the mean of the K per-class differences is taken from each image's influence
    on it (its centred placement values, divided by its stratum's size, averaged over the classes),
    summed per patient group and squared: the classes' differences are correlated (every image
    is a negative of the other classes), which the per-class DeLong variances alone would miss.
    """
    n_images, k = probs_a.shape
    clusters = groups if groups is not None else np.arange(n_images)
    influence = np.zeros(n_images)
    delta = 0.0
    for c in range(k):
        positive = labels == c
        m, n = int(positive.sum()), int((~positive).sum())
        for sign, probs in ((1.0, probs_a), (-1.0, probs_b)):
            auc, v10, v01 = _placements(probs[:, c], positive)
            delta += sign * auc / k
            influence[positive] += sign * (v10 - auc) / m / k
            influence[~positive] += sign * (v01 - auc) / n / k
    sums = _cluster_sums(influence[None], clusters)[0]
    variance = float((sums**2).sum() * len(sums) / max(len(sums) - 1, 1))
    if variance <= 1e-15:
        return delta, 0.0, 1.0 if abs(delta) < 1e-12 else 0.0
    z = delta / np.sqrt(variance)
    return float(delta), float(z), float(2 * norm.sf(abs(z)))


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """McNemar's two-sided p-value for paired correctness; exact binomial below 25 discordant pairs."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = correct_a.astype(bool), correct_b.astype(bool)
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    discordant = table[0][1] + table[1][0]
    if discordant == 0:
        return 1.0
    return float(mcnemar(table, exact=discordant < 25, correction=True).pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN)."""
    from statsmodels.stats.multitest import multipletests

    values = np.asarray(p_values, dtype=float)
    out = np.full(len(values), np.nan)
    finite = np.isfinite(values)
    if finite.any():
        out[finite] = multipletests(values[finite], method="holm")[1]
    return out.tolist()
