"""Results per subgroup of a scored part: per centre, sex, age band, anatomical region and site (and any
extra column an external test table brings), each headline metric with its group-bootstrap interval.

A model that fails on one centre or on children is invisible in the overall numbers. Each subgroup is
resampled on its own, by its patient-proxy groups (``resample``), as the whole part is; a subgroup with
fewer groups than ``MIN_GROUPS`` gets its estimate but no interval (a bootstrap over a handful of
patients says nothing), and a metric the subgroup cannot define (malignant recall without a malignant
image, AUROC without every class) is reported as such, never as a number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from btxrd.metrics.uncertainty import percentile_interval

MIN_GROUPS = 10  # patient-proxy groups a subgroup needs for an interval
COLUMNS = ("attribute", "value", "n_images", "n_groups", "metric", "estimate", "ci_low", "ci_high", "note")
SEXES = {"M": "male", "F": "female", "MALE": "male", "FEMALE": "female"}


def age_band(ages: pd.Series, edges: Sequence[int]) -> pd.Series:
    """Each age's band of ``edges`` (years): [18, 40] -> '<18', '18-39', '>=40'; unknown ages 'unknown'."""
    edges = sorted(edges)
    labels = [f"<{edges[0]}", *(f"{a}-{b - 1}" for a, b in zip(edges[:-1], edges[1:], strict=True)), f">={edges[-1]}"]
    which = np.searchsorted(edges, pd.to_numeric(ages, errors="coerce").to_numpy(), side="right")
    known = pd.to_numeric(ages, errors="coerce").notna().to_numpy()
    return pd.Series([labels[i] if ok else "unknown" for i, ok in zip(which, known, strict=True)], index=ages.index)


def attributes(per_image: pd.DataFrame, age_edges: Sequence[int], extra: Sequence[str] = ()) -> dict[str, pd.Series]:
    """The attributes subgroups are made of, each a value per image (a list of values for the sites an
    image shows: it counts in each)."""
    found: dict[str, pd.Series] = {}
    if "center" in per_image:
        found["centre"] = per_image["center"].astype(str)
    if "gender" in per_image:
        found["sex"] = per_image["gender"].astype(str).str.strip().str.upper().map(SEXES).fillna("unknown")
    if "age" in per_image:
        found["age band"] = age_band(per_image["age"], age_edges)
    if "region" in per_image:
        found["region"] = per_image["region"].fillna("").astype(str).replace("", "none (normal)")
    if "site" in per_image:
        found["site"] = per_image["site"].fillna("").astype(str).map(lambda s: s.split(";") if s else ["none"])
    for column in extra:
        found[column] = per_image[column].fillna("unknown").astype(str)
    return found


def subgroup_table(
    per_image: pd.DataFrame,
    metrics: dict[str, str],
    age_edges: Sequence[int],
    level: float,
    replicates: Callable[[pd.DataFrame, np.ndarray], dict[str, np.ndarray]],
    resample: Callable[[pd.DataFrame], np.ndarray],
    extra: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per (attribute, value, metric): n images and groups, the estimate and its interval.
    ``metrics``: replicate name -> the name shown; ``replicates(table, weights)`` and ``resample(table)``:
    the task's metrics per bootstrap weight row, and the part's bootstrap weights (btxrd.tasks)."""
    rows = []
    for attribute, values in attributes(per_image, age_edges, extra).items():
        exploded = values.explode()
        for value in sorted(exploded.dropna().unique(), key=_order):
            subset = per_image.loc[exploded.index[exploded == value].unique()].reset_index(drop=True)
            n_groups = int(subset["group"].nunique())
            point = replicates(subset, np.ones((1, len(subset)), dtype=np.float32))
            reps = replicates(subset, resample(subset)) if n_groups >= MIN_GROUPS else {}
            for name, shown in metrics.items():
                estimate = float(point[name][0]) if name in point else float("nan")
                low = high = float("nan")
                if not np.isfinite(estimate):
                    note = "not defined in this subgroup (a class it needs is absent)"
                elif n_groups < MIN_GROUPS:
                    note = f"too small for an interval ({n_groups} patient group(s), {MIN_GROUPS} needed)"
                else:
                    low, high = percentile_interval(reps[name], level)
                    note = ""
                rows.append(
                    {
                        "attribute": attribute,
                        "value": value,
                        "n_images": len(subset),
                        "n_groups": n_groups,
                        "metric": shown,
                        "estimate": estimate,
                        "ci_low": low,
                        "ci_high": high,
                        "note": note,
                    }
                )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _order(value: object) -> tuple:
    """Numbers and age bands in their order ('<18' < '18-39' < '>=65'), then names alphabetically."""
    found = re.match(r"(<|>=)?(\d+(?:\.\d+)?)", str(value))
    if found is None:
        return (1, 0.0, str(value))
    shift = {"<": -0.5, ">=": 0.5}.get(found[1] or "", 0.0)
    return (0, float(found[2]) + shift, str(value))


def plot_subgroups(table: pd.DataFrame, metric: str, overall: float, path: str | Path, title: str) -> Path:
    """A forest plot of ``metric`` per subgroup: estimate, interval, the part's overall value as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[(table["metric"] == metric) & np.isfinite(table["estimate"])].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, 0.32 * max(len(rows), 4) + 1.2))
    y = np.arange(len(rows))[::-1]
    has_ci = np.isfinite(rows["ci_low"]).to_numpy()
    ax.errorbar(
        rows.loc[has_ci, "estimate"],
        y[has_ci],
        xerr=[
            rows.loc[has_ci, "estimate"] - rows.loc[has_ci, "ci_low"],
            rows.loc[has_ci, "ci_high"] - rows.loc[has_ci, "estimate"],
        ],
        fmt="o",
        color="tab:blue",
        capsize=3,
        label="95% interval",
    )
    ax.plot(
        rows.loc[~has_ci, "estimate"],
        y[~has_ci],
        "o",
        mfc="white",
        color="tab:gray",
        label=f"too few groups for an interval (< {MIN_GROUPS})",
    )
    ax.axvline(overall, color="tab:red", ls="--", lw=1, label="whole part")
    ax.set_yticks(
        y,
        [f"{a}: {v} (n={n})" for a, v, n in zip(rows["attribute"], rows["value"], rows["n_images"], strict=True)],
        fontsize=8,
    )
    ax.set_xlabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
