"""Every run is judged against the closed-form least-squares fit of its own data."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import polyexp
from conftest import settings
from polyexp.parts import reference

NAMES = ("a", "b", "c", "d")


def _optimum(overrides: list[str]) -> reference.Optimum:
    s = settings(*overrides)
    problem = s.problem()
    best = s.model.optimum(problem.x, problem.y)
    assert best is not None
    return best


def test_the_default_data_has_optimal_loss_8_817165() -> None:
    best = _optimum([])
    assert best.loss == pytest.approx(8.817165, abs=5e-7)
    np.testing.assert_allclose(best.coefficients, [0, 0.856741, 0, -0.093330], atol=5e-7)


def test_the_optimum_solves_the_normal_equations_and_no_nudge_improves_it() -> None:
    problem = settings().problem()
    best = _optimum([])
    features = np.stack([problem.x**k for k in range(4)], axis=1)
    gradient = 2 * features.T @ (features @ best.coefficients - problem.y)
    assert np.abs(gradient).max() < 1e-9  # zero gradient of the summed squared error
    rng = np.random.default_rng(0)
    for nudge in rng.standard_normal((20, 4)) * 1e-4:
        worse = np.sum((features @ (best.coefficients + nudge) - problem.y) ** 2)
        assert worse > best.loss


def test_the_optimum_is_of_the_runs_own_points() -> None:
    best = _optimum(["data.n=50", "data.low=0", "data.high=1"])
    x = np.linspace(0, 1, 50)
    expected = np.polyfit(x, np.sin(x), 3)[::-1]  # an independent solver, highest power first
    np.testing.assert_allclose(best.coefficients, expected, rtol=1e-7, atol=1e-10)
    assert best.loss < 1e-6  # sin is nearly cubic on [0, 1]
    assert best.loss != pytest.approx(_optimum([]).loss)


def test_gap_is_relative_excess_loss_and_zero_only_at_the_optimum() -> None:
    best = reference.Optimum(names=NAMES, coefficients=np.zeros(4), loss=2.0)
    assert best.gap(3.0) == 0.5 and best.gap(2.0) == 0.0
    exact = reference.Optimum(
        names=NAMES, coefficients=np.zeros(4), loss=0.0
    )  # points a cubic fits exactly
    assert exact.gap(0.0) == 0.0 and exact.gap(1e-3) == float("inf")


def test_a_run_logs_the_optimum_and_its_gap_and_prints_the_gap(
    store: MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    result = polyexp.run(["backend=numpy", "steps=100", "log_every=0"])
    metrics = store.get_run(result.run_id).data.metrics
    best = _optimum([])
    assert metrics["optimal_loss"] == result.optimal_loss == best.loss
    assert [metrics[f"optimal_{k}"] for k in "abcd"] == best.coefficients.tolist()
    assert metrics["gap_to_optimum"] == result.gap_to_optimum == result.final_loss / best.loss - 1
    assert result.gap_to_optimum is not None and result.gap_to_optimum > 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Result: ")]
    assert line.endswith(f" x^3  (gap to optimum {result.gap_to_optimum:.4g})")


def test_a_run_started_at_the_optimum_has_no_gap(store: MlflowClient) -> None:
    best = _optimum([])
    start = [float(v) for v in best.coefficients]
    result = polyexp.run(
        [
            "backend=numpy",
            "dtype=float64",
            "init=fixed",
            f"init.coefficients={start}",
            "optimizer=manual_sgd",
            "steps=5",
            "log_every=0",
        ]
    )
    assert result.gap_to_optimum is not None and abs(result.gap_to_optimum) < 1e-12
