"""Dataset summary for ``python -m btxrd.data check``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from btxrd.data.limits import DEFAULT_LIMITS, InputLimits
from btxrd.data.reader import inspect_dataset
from btxrd.data.schema import CENTERS, CLASS_NAMES


def summarise(
    root: str | Path,
    on_bad_image: str = "error",
    duplicate_distance: int | None = None,
    limits: InputLimits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Counts, sizes, duplicates and every problem of the dataset at ``root``; ``usable`` says if it can
    be trained on."""
    inspection = inspect_dataset(root, on_bad_image=on_bad_image, duplicate_distance=duplicate_distance, limits=limits)
    table = inspection.table
    summary: dict[str, Any] = {
        "root": str(Path(root).expanduser().resolve()) if str(root).strip() else "",
        "usable": inspection.usable,
        "n_images": 0,
        "by_class": {name: 0 for name in CLASS_NAMES},
        "by_center": {},
        "n_annotated": 0,
        "n_lesions": 0,
        "width_range": None,
        "height_range": None,
        "n_patient_groups": 0,
        "n_groups": 0,
        "duplicates": [],
        "problems": [str(p) for p in inspection.problems],
    }
    if table is None or len(table) == 0:
        return summary
    summary["n_images"] = int(len(table))
    summary["by_class"] = {name: int((table["label"] == i).sum()) for i, name in enumerate(CLASS_NAMES)}
    centers = sorted(set(CENTERS) | set(table["center"].tolist()))
    summary["by_center"] = {
        str(c): {
            name: int(((table["center"] == c) & (table["label"] == i)).sum()) for i, name in enumerate(CLASS_NAMES)
        }
        for c in centers
    }
    summary["n_annotated"] = int((table["annotation_path"] != "").sum())
    summary["n_lesions"] = int(table["n_lesions"].sum())
    summary["width_range"] = [int(table["width"].min()), int(table["width"].max())]
    summary["height_range"] = [int(table["height"].min()), int(table["height"].max())]
    summary["n_patient_groups"] = int(table["patient_group"].nunique())
    summary["n_groups"] = int(table["group"].nunique())
    summary["duplicates"] = table.attrs["duplicates"].to_dict(orient="records")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"BTXRD dataset at {summary['root']}", ""]
    header = f"{'centre':>8}" + "".join(f"{n:>11}" for n in CLASS_NAMES) + f"{'total':>9}"
    lines.append(header)
    for center, row in summary["by_center"].items():
        lines.append(f"{center:>8}" + "".join(f"{row[n]:>11}" for n in CLASS_NAMES) + f"{sum(row.values()):>9}")
    by_class = summary["by_class"]
    lines.append(f"{'all':>8}" + "".join(f"{by_class[n]:>11}" for n in CLASS_NAMES) + f"{summary['n_images']:>9}")
    lines.append("")
    lines.append(f"annotated images: {summary['n_annotated']}, lesions: {summary['n_lesions']}")
    lines.append(
        f"patient-proxy groups: {summary['n_patient_groups']}; with duplicate images joined: "
        f"{summary['n_groups']} groups ({len(summary['duplicates'])} duplicate pair(s))"
    )
    if summary["width_range"]:
        (w0, w1), (h0, h1) = summary["width_range"], summary["height_range"]
        lines.append(f"image width {w0}-{w1} px, height {h0}-{h1} px")
    lines.append("")
    if summary["problems"]:
        lines.append(f"{len(summary['problems'])} problem(s):")
        lines.extend(f"  {p}" for p in summary["problems"])
    else:
        lines.append("no problems found")
    lines.append("usable: yes" if summary["usable"] else "usable: NO")
    return "\n".join(lines)
