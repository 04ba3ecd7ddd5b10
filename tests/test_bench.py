"""How the benchmark judges and prints its figures (the measurements themselves: make bench)."""

from __future__ import annotations

import pytest

from btxrd.bench.common import described_efficiency, efficiency_finding, spread
from btxrd.bench.cpu import implausible


def test_a_figure_is_its_median_with_the_spread_of_its_rounds() -> None:
    figure = spread([3.0, 1.0, 2.0, 10.0])
    assert (figure["median"], figure["min"], figure["max"]) == (2.5, 1.0, 10.0)
    assert figure["rounds"] == [3.0, 1.0, 2.0, 10.0]


@pytest.mark.parametrize(("ratios", "verdict", "printed"), [
    ([0.91, 0.95, 0.93], "loss", "0.93 (0.91-0.95)"),
    ([0.97, 1.04, 1.01], "no measurable loss", "~1, no loss measurable (0.97-1.04)"),
    ([1.09, 1.12, 1.15], "implausible", "IMPLAUSIBLE 1.12 (1.09-1.15)"),
])  # fmt: skip
def test_an_efficiency_above_1_is_never_printed_as_a_result(ratios: list[float], verdict: str, printed: str) -> None:
    finding = efficiency_finding(ratios)
    assert finding["verdict"] == verdict
    assert described_efficiency(finding).startswith(printed)
    results = {"throughput": {"128px": {"efficiency": finding, "naive_efficiency": efficiency_finding([0.5, 0.6])}}}
    assert implausible(results) == (["128px efficiency"] if verdict == "implausible" else [])
