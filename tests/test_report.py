"""The sweep report on runs with known truths: seeds aggregated, real differences found, noise not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from btxrd.data.schema import CLASS_NAMES
from btxrd.report.sweep import write_report
from btxrd.tracking import Tracker

from .helpers import settings


def predictions(rng: np.random.Generator, labels: np.ndarray, groups: np.ndarray, strength: float) -> pd.DataFrame:
    logits = rng.normal(size=(len(labels), 3)) + strength * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return pd.DataFrame(
        {
            "image_id": [f"IMG{i:06d}.jpeg" for i in range(len(labels))],
            "center": 1,
            "group": groups,
            "label": labels,
            "predicted": probs.argmax(1),
            **{f"p_{n}": probs[:, i] for i, n in enumerate(CLASS_NAMES)},
        }
    )


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Tracker, str, Path]:
    """A finished 2 x 3-seed sweep as the jobs log it: annotations=on is a strong model, off a weak
    one, and a third configuration (model=b3) is the strong model again on the same images."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    parent = tracker.start_run("sweep", {"sweep": "parent", "overrides": "model=b0,b3 annotations=on,off seed=0,1,2"})
    rng = np.random.default_rng(0)
    group_labels = rng.choice(3, 200, p=[0.5, 0.35, 0.15])
    sizes = rng.integers(1, 4, 200)
    groups, labels = np.repeat(np.arange(200), sizes), np.repeat(group_labels, sizes)
    job = 0
    for model, ann, strength in (("b0", "on", 2.5), ("b0", "off", 0.8), ("b3", "on", 2.5)):
        for seed in ("0", "1", "2"):
            table = predictions(rng, labels, groups, strength)
            choices = {"model": model, "annotations": ann, "seed": seed}
            if job == 0:  # finished in a rerun with sweep.skip_finished=true: the same configuration
                choices["sweep.skip_finished"] = "True"
            commit = "a" * 40 if job else "b" * 40  # job 0 ran an older commit, with changes
            made_by = {
                "mlflow.source.git.commit": commit,
                "code_version": commit + ("" if job else "+0123456789"),
                "machine.cpu": "AMD EPYC 7B13",
                "machine.cores": "2",
                "machine.accelerator": "none",
                "machine.torch": "2.14.1",
                "machine.cuda": "none",
                "environment.digest": "c0ffee" * 2 if job else "d1ff" * 3,
            }
            run = tracker.start_run(
                f"{model} | ann-{ann}",
                {"task": "classify", "job_num": str(job), "choices": json.dumps(choices), "seed": seed, **made_by},
                parent_id=parent,
            )
            accuracy = float((table["predicted"] == table["label"]).mean())
            tracker.log_metrics(run, {"test_accuracy": accuracy, "test_macro_f1": accuracy, "epochs_run": 3})
            path = tmp_path / f"predictions_{job}" / "predictions_test.csv"
            path.parent.mkdir()
            table.to_csv(path, index=False)
            tracker.log_artifact(run, path)
            tracker.end_run(run)
            job += 1
    failed = tracker.start_run(
        "b3 | ann-off",
        {
            "task": "classify",
            "job_num": str(job),
            "error": "ValueError: x",
            "choices": json.dumps({"model": "b3", "annotations": "off", "seed": "0"}),
        },
        parent_id=parent,
    )
    tracker.end_run(failed, "FAILED")
    return tracker, parent, tmp_path / "report"


def test_the_report_aggregates_seeds_and_finds_only_the_real_differences(sweep) -> None:
    tracker, parent, out = sweep
    write_report(tracker, parent, out, settings(["eval.n_bootstrap=500"]).eval)
    configurations = pd.read_csv(out / "sweep_configurations.csv")
    assert configurations["n_seeds"].tolist() == [3, 3, 3]  # the failed job is no configuration of its own
    assert (configurations["test_accuracy_sd"] > 0).all()
    assert (configurations["test_accuracy_ci_low"] < configurations["test_accuracy_mean"]).all()

    tested = pd.read_csv(out / "sweep_comparisons.csv")
    bootstrap = tested[tested["test"] == "bootstrap"]
    # on vs off (b0): real, for every compared metric; b0 vs b3 (both strong): a difference of noise only
    annotations = bootstrap[bootstrap["choice"] == "annotations"]
    assert len(annotations) == 3 and annotations["real"].all() and (annotations["ci_low"] > 0).all()
    assert set(annotations["metric"]) == {"macro-F1", "malignant recall", "AUROC"}
    models = bootstrap[bootstrap["choice"] == "model"]
    assert len(models) == 3 and not models["real"].any()
    assert ((models["ci_low"] < 0) & (models["ci_high"] > 0)).all()
    assert tested["paired"].all() and (tested["seeds"] == 3).all()
    assert (tested["p_holm"] >= tested["p"]).all()  # adjusted for the six comparisons

    markdown = (out / "sweep_report.md").read_text()
    assert "## Configurations (seeds aggregated)" in markdown and "± " in markdown
    # How to make the numbers again, and on what they were made
    assert "- command: `python train.py -m model=b0,b3 annotations=on,off seed=0,1,2`" in markdown
    assert f"- code: commit {'b' * 12} with uncommitted changes (0123456789) (1 job), {'a' * 12} (8 jobs)" in markdown
    assert "- machine: AMD EPYC 7B13, 2 cores, no GPU; torch 2.14.1\n" in markdown
    listed = "(each run's environment/requirements.txt)"
    assert (
        f"- environment: packages {'d1ff' * 3} {listed} (1 job), packages {'c0ffee' * 2} {listed} (8 jobs)\n"
        in markdown
    )
    assert re.search(r"- runs: 20\d\d-\d\d-\d\d \d\d:\d\d UTC to 20\d\d-\d\d-\d\d \d\d:\d\d UTC", markdown)
    labels = pd.read_csv(out.parent / "predictions_0" / "predictions_test.csv")["label"]
    share = labels.value_counts(normalize=True).max()  # what always answering "normal" scores
    assert f"- the test part ({len(labels)} images): accuracy {share:.3f}, " in markdown
    assert f"macro-F1 {2 * share / (1 + share) / 3:.3f}" in markdown and "AUROC 0.500" in markdown
    assert "3 difference(s) real after Holm's adjustment" in markdown
    assert "annotations on vs off (model=b0): bootstrap Δ macro-F1 +" in markdown
    assert (out / "sweep_report.png").stat().st_size > 5000
    logged = {a.path for a in tracker.client.list_artifacts(parent, "report")}
    assert {"report/sweep_comparisons.csv", "report/sweep_configurations.csv", "report/sweep_report.png"} <= logged
    # Subgroups: each job's test part per subgroup (here: its one centre), made from the per-image tables
    subgroups = pd.read_csv(out / "sweep_subgroups.csv")
    assert sorted(subgroups["job"].unique()) == list(range(9)) and set(subgroups["attribute"]) == {"centre"}
    whole = subgroups[(subgroups["metric"] == "accuracy")].set_index("job")["estimate"]
    finished = {
        int(r.data.tags["job_num"]): r.data.metrics["test_accuracy"]
        for r in tracker.children(parent)
        if r.info.status == "FINISHED"
    }
    assert whole.to_dict() == pytest.approx(finished)  # one centre: the whole part
    assert "## Subgroups\n" in markdown and f"| centre: 1 | {len(labels)} | 0.9" in markdown
    assert "| job 0 (b0, ann-on) |" in markdown


def test_one_seed_adds_delong_and_mcnemar_and_a_different_test_part_is_unpaired(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "btxrd", tmp_path / "mlruns")
    parent = tracker.start_run("sweep", {"sweep": "parent"})
    rng = np.random.default_rng(1)
    labels = np.repeat(rng.choice(3, 150, p=[0.5, 0.35, 0.15]), 2)
    groups = np.repeat(np.arange(150), 2)
    runs = [
        ("stratified", "on", predictions(rng, labels, groups, 2.0)),
        ("stratified", "off", predictions(rng, labels, groups, 2.0)),
        ("center", "on", predictions(rng, labels[:200], groups[:200], 2.0)),
    ]
    for job, (split, ann, table) in enumerate(runs):
        run = tracker.start_run(
            f"{split} {ann}",
            {
                "task": "classify",
                "job_num": str(job),
                "choices": json.dumps({"split": split, "annotations": ann}),
                "mlflow.source.git.commit": "c" * 40,
            },  # runs of a version that named no machine
            parent_id=parent,
        )
        path = tmp_path / str(job) / "predictions_test.csv"
        path.parent.mkdir()
        table.to_csv(path, index=False)
        tracker.log_artifact(run, path)
        tracker.end_run(run)
    write_report(tracker, parent, tmp_path / "report", settings(["eval.n_bootstrap=300"]).eval)
    tested = pd.read_csv(tmp_path / "report" / "sweep_comparisons.csv")
    annotations = tested[tested["choice"] == "annotations"]
    assert set(annotations["test"]) == {"bootstrap", "delong", "mcnemar"} and annotations["paired"].all()
    split = tested[tested["choice"] == "split"]
    assert set(split["test"]) == {"bootstrap"} and not split["paired"].any()  # other test images: unpaired
    markdown = (tmp_path / "report" / "sweep_report.md").read_text()
    assert "UNPAIRED (different test images)" in markdown
    assert "- machine: not recorded (runs made before runs named their machine)\n" in markdown
    assert "- environment: not recorded\n" in markdown


def test_evidence_writes_a_block_from_a_finished_sweep_and_leaves_the_rest_of_the_page(
    sweep, tmp_path: Path, capsys
) -> None:
    from btxrd.report.evidence import main

    tracker, parent, out = sweep
    write_report(tracker, parent, out, settings(["eval.n_bootstrap=500"]).eval)
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nprose before\n\n", "\n\nprose after\n"
    old = "<!-- evidence annotations-demo -->\nold table\n<!-- /evidence annotations-demo -->"
    readme.write_text(before + old + after)
    assert main(["annotations-demo", "--sweep", str(out), "--page", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(before + "<!-- evidence annotations-demo -->\nWritten by `make evidence NAME=annotations-")
    assert text.endswith("<!-- /evidence annotations-demo -->" + after) and "old table" not in text
    configurations = pd.read_csv(out / "sweep_configurations.csv").set_index("configuration")
    on = configurations.loc["model=b0 annotations=on"]
    assert (
        f"| model=b0 annotations=on | 3 | {on['test_macro_f1_mean']:.3f} ± {on['test_macro_f1_sd']:.3f} "
        f"[{on['test_macro_f1_ci_low']:.3f}, {on['test_macro_f1_ci_high']:.3f}] |"
    ) in text
    tested = pd.read_csv(out / "sweep_comparisons.csv")
    row = tested[(tested["choice"] == "annotations") & (tested["metric"] == "macro-F1")].iloc[0]
    assert (
        f"| annotations on vs off | model=b0 | macro-F1 | {row['delta']:+.3f} [{row['ci_low']:+.3f}, "
        f"{row['ci_high']:+.3f}] | {row['p']:.2g} | {row['p_holm']:.2g} | **yes** |"
    ) in text
    assert "Holm-adjusted over the sweep report's 6 tests" in text
    assert "- machine: AMD EPYC 7B13, 2 cores, no GPU; torch 2.14.1\n" in text and "\n- runs: 20" in text
    assert text == readme.read_text() and capsys.readouterr().out.startswith("<!-- evidence annotations-demo -->")

    # The same again gives the same file: what a re-run changes is what git diff shows
    assert main(["annotations-demo", "--sweep", str(out), "--page", str(readme)]) == 0
    assert readme.read_text() == text


def test_evidence_refuses_a_page_without_the_block_and_every_block_names_a_section(tmp_path: Path) -> None:
    from btxrd.bench.tables import BLOCKS
    from btxrd.errors import ConfigError
    from btxrd.report.blocks import blocks_in, page_holding, pages, write_block
    from btxrd.report.evidence import SECTIONS

    from .conftest import PROJECT_ROOT
    from .helpers import compose_config

    readme = tmp_path / "README.md"
    readme.write_text("no blocks\n")
    with pytest.raises(ConfigError, match=r"README.md: no block <!-- evidence showcase --> \.\.\. "):
        write_block(readme, "showcase", "x")
    assert readme.read_text() == "no blocks\n"
    with pytest.raises(ConfigError, match=r"block <!-- evidence showcase --> must be in exactly one .*found in: none"):
        page_holding(tmp_path, "showcase")
    (tmp_path / "docs").mkdir()
    for page in ("a.md", "b.md"):
        (tmp_path / "docs" / page).write_text("<!-- evidence showcase -->\n<!-- /evidence showcase -->\n")
    with pytest.raises(ConfigError, match=r"found in: docs/a.md, docs/b.md\)"):
        page_holding(tmp_path, "showcase")

    # The project's own pages: every block is a known one, each in exactly one page
    written_by_bench = {name for names in BLOCKS.values() for name in names}
    held = [name for page in pages(PROJECT_ROOT) for name in blocks_in(page)]
    assert sorted(held) == sorted(set(SECTIONS) | written_by_bench)
    assert page_holding(PROJECT_ROOT, "annotations-demo") == PROJECT_ROOT / "docs" / "annotations.md"
    assert page_holding(PROJECT_ROOT, "bench-gpu") == PROJECT_ROOT / "docs" / "performance.md"
    for section in SECTIONS.values():  # each sweep's first job composes
        compose_config([o.split(",")[0] for o in section.overrides if not o.startswith("hydra.")])


def test_a_metric_a_configuration_does_not_have_is_a_blank_cell_not_nan() -> None:
    from btxrd.report.render import seeds_markdown

    summary = pd.DataFrame(
        [
            {
                "configuration": "model=ae_residual",
                "n_seeds": 3,
                "test_psnr_mean": 27.66,
                "test_psnr_sd": 0.72,
                "test_psnr_ci_low": 26.96,
                "test_psnr_ci_high": 28.41,
                "val_channel_gates_mean_mean": np.nan,
                "val_channel_gates_mean_sd": np.nan,
            },
            {
                "configuration": "model=ae_attention",
                "n_seeds": 3,
                "test_psnr_mean": 23.84,
                "test_psnr_sd": 1.64,
                "test_psnr_ci_low": 22.0,
                "test_psnr_ci_high": 25.11,
                "val_channel_gates_mean_mean": 0.51,
                "val_channel_gates_mean_sd": 0.004,
            },
        ]
    )
    table = seeds_markdown(summary, {"test_psnr": "PSNR (dB)", "val_channel_gates_mean": "channel gates"})
    assert "| model=ae_residual | 3 | 27.660 ± 0.720 [26.960, 28.410] |  |" in table  # B has no gates
    assert "| model=ae_attention | 3 | 23.840 ± 1.640 [22.000, 25.110] | 0.510 ± 0.004 |" in table
    assert "nan" not in table


def test_the_baseline_line_says_which_runs_clear_it_by_their_whole_interval() -> None:
    """A newcomer reads whether every model learnt: a run counts only if the lower end of its interval lies
    above the majority-class level on balanced accuracy, macro-F1 and AUROC alike."""
    from btxrd.report.render import chance_markdown
    from btxrd.report.runs import RunRecord
    from btxrd.tasks.classify import ClassifyTask

    per_image = pd.DataFrame({"image_id": [f"i{k}" for k in range(10)], "label": [0] * 6 + [1] * 2 + [2] * 2})
    # majority share 0.6: balanced accuracy 1/3, macro-F1 2 * 0.6 / 1.6 / 3 = 0.25, AUROC 0.5
    lows = {"learnt": (0.50, 0.40, 0.70), "f1 below": (0.50, 0.24, 0.70), "auroc below": (0.50, 0.40, 0.45)}
    records = [
        RunRecord(
            job,
            f"run{job}",
            name,
            "FINISHED",
            ClassifyTask,
            {"split": "stratified"},
            "0",
            "",
            dict(
                zip(
                    ["test_balanced_accuracy_ci_low", "test_macro_f1_ci_low", "test_auroc_macro_ci_low"],
                    low,
                    strict=True,
                )
            ),
            1.0,
            "",
            "",
            f"run{job}",
            per_image=per_image,
        )
        for job, (name, low) in enumerate(lows.items())
    ]
    text = chance_markdown(records, ClassifyTask.report_columns, ["split"])
    assert "- split=stratified test part (10 images): accuracy 0.600, bal. acc. 0.333, macro-F1 0.250" in text
    assert text.rstrip().endswith(
        "Runs whose whole interval lies above it on bal. acc., macro-F1, AUROC: 1 of 3 (not: f1 below, auroc below)"
    )
