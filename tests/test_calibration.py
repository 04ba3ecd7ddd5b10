"""Temperature scaling: the fitted temperature against an independent search, and a run that uses it
everywhere its probabilities go (operating points, test part, checkpoint, the served model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from btxrd.metrics.calibration import brier_score, fit_temperature, negative_log_likelihood, softmax


def _overconfident(scale: float, n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), and the logits a network ``scale`` times too sure of itself gives."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 3))
    probs = softmax(z).astype(np.float64)
    labels = np.array([rng.choice(3, p=p / p.sum()) for p in probs])
    return z * scale, labels


def test_the_fitted_temperature_is_the_likelihoods_minimum_found_independently() -> None:
    logits, labels = _overconfident(4.0)
    fitted = fit_temperature(logits, labels)
    grid = torch.linspace(0.5, 10, 4000, dtype=torch.float64)
    nll = torch.stack(
        [torch.nn.functional.cross_entropy(torch.from_numpy(logits) / t, torch.from_numpy(labels)) for t in grid]
    )
    assert fitted == pytest.approx(float(grid[nll.argmin()]), rel=0.01)
    assert fitted == pytest.approx(4.0, rel=0.15)  # it undoes the over-confidence
    assert negative_log_likelihood(logits, labels, fitted) < negative_log_likelihood(logits, labels)
    assert (softmax(logits, fitted).argmax(1) == logits.argmax(1)).all()  # no prediction changes


def test_the_brier_score_against_its_definition() -> None:
    labels = np.array([0, 1, 2, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    squared = [sum((p - (k == y)) ** 2 for k, p in enumerate(row)) for row, y in zip(probs, labels, strict=True)]
    by_hand = np.mean(squared)
    assert brier_score(labels, probs) == pytest.approx(by_hand)


@pytest.mark.slow
@pytest.mark.parametrize("calibrate", ["true", "false"])
def test_a_run_fits_its_temperature_on_validation_and_scores_with_it(
    synth_root: Path, tmp_path: Path, calibrate: str
) -> None:
    from btxrd.engine import load_checkpoint
    from btxrd.jobs.train import train_job

    from .helpers import compose_config, runs, tiny

    train_job(
        compose_config(
            tiny(synth_root, tmp_path, "model.image_size=32", "train.epochs=2", f"eval.calibrate={calibrate}")
        )
    )
    [run] = runs(tmp_path)
    metrics = run.data.metrics
    [best] = (tmp_path / "checkpoints").glob("*/best.pt")
    temperature = load_checkpoint(best)["temperature"]
    assert metrics["temperature"] == pytest.approx(temperature)
    for name in ("test_ece", "test_ece_uncalibrated", "test_brier", "test_brier_uncalibrated"):
        assert metrics[f"{name}_ci_low"] <= metrics[name] <= metrics[f"{name}_ci_high"], name
    if calibrate == "false":
        assert temperature == 1.0 and metrics["test_ece"] == pytest.approx(metrics["test_ece_uncalibrated"])
    else:
        assert temperature != 1.0  # fitted on the validation part's logits
