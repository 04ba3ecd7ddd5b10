"""The model card of a registered version: what the model does, what it was trained and tested on, how
well (every test metric with its interval), where it may fail, and what it is not for. MLflow shows it as
the version's description; it is built from the run alone (params, tags, dataset inputs, metrics and its
``subgroups_test.csv``), so any registered btxrd run gets the same card.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

import pandas as pd

from btxrd.data.schema import CLASS_NAMES
from btxrd.tracking.mlflow_store import Tracker

# MLflow's SQL stores hold a version's description in a VARCHAR(5000) (PostgreSQL refuses longer ones)
DESCRIPTION_LIMIT = 5000
PER_CLASS = ("f1", "precision", "recall", "auroc")  # test_<metric>_<class>, shown as one row each
SYNTHETIC_TAG = "data.synthetic"  # "true" when the run's dataset was generated (btxrd.data.synth)
TRAINING_PARAMS = (
    ("model", "model.name"),
    ("input", "model.image_size"),
    ("pretrained", "model.pretrained"),
    ("epochs", "train.epochs"),
    ("batch", "model.batch_size"),
    ("learning rate", "train.lr"),
    ("weight decay", "train.weight_decay"),
    ("class weights", "train.class_weights"),
    ("annotations", "annotations.enabled"),
    ("attention loss weight", "annotations.cam_loss_weight"),
    ("preprocessing", "data.preprocess"),
    ("seed", "seed"),
)
INTENDED_USE = (
    "Research: comparing methods for bone-tumour classification on plain radiographs of the BTXRD kind. "
    "Not a medical device and not validated for any clinical decision; a prediction is no diagnosis."
)
LIMITATIONS = (
    "Trained on one public dataset (three centres, adults and children, limbs and pelvis): other scanners, "
    "populations or body parts are outside what it has seen; score them with `evaluate.py external=...` first.",
    "Intervals are percentile bootstraps over the test part's patient-proxy groups (a patient's views together); "
    "they cover test-set sampling, not the variation between training runs.",
    "Probabilities are temperature-scaled on the validation part; a new site needs its own calibration check.",
    "Input: one grayscale radiograph (uint8), resized to the model's input; lesions smaller than a few pixels "
    "at that size may be missed.",
)
SUBGROUPS_ELSEWHERE = (
    "Every subgroup and metric (sites too): `subgroups_test.csv` and `.png` among the run's artifacts."
)
SYNTHETIC_WARNING = (
    "**Trained and tested on generated data** (btxrd.data.synth), not on radiographs: these numbers say "
    "nothing about real images. Use it to try the pipeline, never on patients."
)


def model_card(tracker: Tracker, run: Any, monitor: str, score: float, sweep_dir: str) -> str:
    """The card of ``run`` (an MLflow Run, chosen by its validation ``monitor`` at ``score``), as Markdown
    that fits a version's description: where it would not, the subgroup table, then the operating points,
    then the test metrics give way to a pointer to the run (the use and limitations always stay)."""
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    head = [
        f"# {tags.get('model', params.get('model.name', 'model'))}: the best of a sweep by validation",
        f"Run `{run.info.run_name}` ({run.info.run_id}) of the sweep `{_shortened(sweep_dir)}`, chosen by its "
        f"validation `{monitor}` = {score:.4f} (never by a test metric). "
        f"Code: `{tags.get('code_version', 'unknown')}`.",
        SYNTHETIC_WARNING if tags.get(SYNTHETIC_TAG) == "true" else "",
        "## Task\n\nOne radiograph in, the probabilities of its three classes out: "
        + ", ".join(f"`{name}`" for name in CLASS_NAMES)
        + " (BTXRD's labels: no tumour, benign, malignant bone tumour); the predicted class is the most "
        "probable, and the malignant decisions follow the operating points below.",
        _data_section(run),
        "## Training\n\n" + _param_table(params, metrics),
    ]
    use = ["## Intended use\n\n" + INTENDED_USE, "## Limitations\n\n" + "\n".join(f"- {i}" for i in LIMITATIONS)]
    # (section, what replaces it when the card is too long), in the order they give way: last first
    parts = [
        (
            _metric_section(metrics, params),
            "## Test results\n\nEvery `test_*` metric with its interval: the run's metrics.",
        ),
        (_operating_points(metrics), "## Operating points\n\nThe run's `malignant_threshold_at_*` metrics."),
        (_subgroup_section(tracker, run), f"## Subgroups\n\n{SUBGROUPS_ELSEWHERE}"),
    ]
    for kept in range(len(parts), -1, -1):
        metrics_text, points, subgroups = (
            full if i < kept else short * bool(full) for i, (full, short) in enumerate(parts)
        )
        card = "\n\n".join(s for s in [*head, metrics_text, points, *use, subgroups] if s)
        if len(card) <= DESCRIPTION_LIMIT:
            return card
    return card[: card.rfind("\n", 0, DESCRIPTION_LIMIT)]  # a run name of thousands of characters


def _shortened(path: str, keep: int = 200) -> str:
    """A path's last ``keep`` characters (a folder name can be as long as the filesystem allows)."""
    return path if len(path) <= keep else "..." + path[-keep:]


def _data_section(run: Any) -> str:
    params = run.data.params
    lines = ["## Data and split", "", f"Split `{params.get('split.name', '?')}`"]
    if params.get("split.name") == "center":
        lines[-1] += (
            f": trained on centre(s) {params.get('split.train_centers')}, tested on {params.get('split.test_centers')}"
        )
    lines[-1] += f"; patients kept within one part: {params.get('split.group_patients', '?')}."
    parts = []
    for dataset_input in run.inputs.dataset_inputs if run.inputs else []:
        context = next((t.value for t in dataset_input.tags if t.key == "mlflow.data.context"), "?")
        profile = json.loads(dataset_input.dataset.profile or "{}")
        counts = ", ".join(f"{profile.get(name, 0)} {name}" for name in CLASS_NAMES)
        parts.append(
            f"| {context} | {profile.get('images', '?')} | {counts} | "
            f"{dataset_input.dataset.name} ({dataset_input.dataset.digest}) |"
        )
    if parts:
        lines += ["", "| part | images | classes | dataset (digest of its files) |", "|---|---|---|---|", *parts]
    return "\n".join(lines)


def _param_table(params: dict[str, str], metrics: dict[str, float]) -> str:
    rows = [(label, params[key]) for label, key in TRAINING_PARAMS if key in params]
    if "epochs_run" in metrics:
        rows.append(("epochs run (best)", f"{metrics['epochs_run']:.0f} ({metrics.get('best_epoch', 0):.0f})"))
    if "temperature" in metrics:
        rows.append(("temperature", f"{metrics['temperature']:.3f}"))
    return "\n".join(["| setting | value |", "|---|---|", *(f"| {label} | {value} |" for label, value in rows)])


def _interval(metrics: dict[str, float], name: str) -> str:
    if name not in metrics:
        return ""
    return f"{metrics[name]:.3f} [{metrics[f'{name}_ci_low']:.3f}, {metrics[f'{name}_ci_high']:.3f}]"


def _metric_section(metrics: dict[str, float], params: dict[str, str]) -> str:
    """Every test metric that has an interval, with it: the per-class ones as a table of classes, the
    operating points' in their own section, the rest one per row."""
    names = {k for k in metrics if k.startswith("test_") and f"{k}_ci_low" in metrics}
    if not names:
        return ""
    per_class = [m for m in PER_CLASS if any(f"test_{m}_{c}" in names for c in CLASS_NAMES)]
    names -= {f"test_{m}_{c}" for m in per_class for c in CLASS_NAMES}
    names = {n for n in names if not n.startswith(("test_malignant_sensitivity_at_", "test_malignant_specificity_at_"))}
    level = float(params.get("eval.ci_level", 0.95))
    lines = [
        f"## Test results ({level:.0%} interval, {params.get('eval.n_bootstrap', '?')} bootstrap resamples)",
        "",
        "| metric | value [interval] |",
        "|---|---|",
        *(f"| {name.removeprefix('test_')} | {_interval(metrics, name)} |" for name in sorted(names)),
    ]
    if per_class:
        lines += ["", f"| per class | {' | '.join(CLASS_NAMES)} |", "|---" * (len(CLASS_NAMES) + 1) + "|"]
        lines += [
            f"| {m} | {' | '.join(_interval(metrics, f'test_{m}_{c}') for c in CLASS_NAMES)} |" for m in per_class
        ]
    return "\n".join(lines)


def _operating_points(metrics: dict[str, float]) -> str:
    """The malignant thresholds chosen on the validation part, and what they gave on the test part."""
    rows = [
        f"| {point} | {metrics[f'malignant_threshold_at_{point}']:.4f} | "
        f"{_interval(metrics, f'test_malignant_sensitivity_at_{point}')} | "
        f"{_interval(metrics, f'test_malignant_specificity_at_{point}')} |"
        for point in sorted(
            k.removeprefix("malignant_threshold_at_") for k in metrics if k.startswith("malignant_threshold_at_")
        )
    ]
    if not rows:
        return ""
    return "\n".join(
        [
            "## Operating points (malignant vs the rest)",
            "",
            "Thresholds on p(malignant) chosen on the validation part for a specificity; the model's output "
            "columns `malignant_at_<point>`.",
            "",
            "| point | threshold | test sensitivity | test specificity |",
            "|---|---|---|---|",
            *rows,
        ]
    )


def _subgroup_section(tracker: Tracker, run: Any) -> str:
    """Macro-F1 by subgroup of the test part (centre, sex, age band, region; the sites, many and small, stay
    in the run's table), from the run's ``subgroups_test.csv``."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            table = pd.read_csv(tracker.download_artifact(run.info.run_id, "subgroups_test.csv", folder))
        except Exception:  # a run scored before subgroups were recorded, or another task: no section
            return ""
    table = table[(table["metric"] == "macro-F1") & (table["attribute"] != "site")]
    if table.empty:
        return ""
    rows = [
        f"| {r.attribute} | {r.value} | {r.n_images} | "
        + (
            f"{r.estimate:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] |"
            if pd.notna(r.ci_low)
            else f"{r.estimate:.3f} (too few patients for an interval) |"
        )
        for r in table.itertuples()
    ]
    return "\n".join(
        [
            "## Subgroups (test part, macro-F1)",
            "",
            "| attribute | value | images | macro-F1 [interval] |",
            "|---|---|---|---|",
            *rows,
            "",
            SUBGROUPS_ELSEWHERE,
        ]
    )
