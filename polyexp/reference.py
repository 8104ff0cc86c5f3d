"""The yardstick for every run: the closed-form least-squares fit of the run's own data.

The cubic is linear in its coefficients, so the best (a, b, c, d) for the summed squared error
over the run's points is one least-squares solve over the features (1, x, x^2, x^3), in
float64. A run's `gap_to_optimum` says how far training got: final_loss / optimal_loss - 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polyexp import models
from polyexp.data import Problem


@dataclass(frozen=True)
class Optimum:
    coefficients: np.ndarray  # the best (a, b, c, d), float64
    loss: float  # their summed squared error, computed as the run computes final_loss

    def gap(self, final_loss: float) -> float:
        """final_loss / optimal_loss - 1: 0 at the optimum (inf if the optimum fits exactly)."""
        if self.loss == 0:
            return 0.0 if final_loss == 0 else float("inf")
        return final_loss / self.loss - 1

    def metrics(self, final_loss: float) -> dict[str, float]:
        """What a run logs: optimal_loss, optimal_a .. optimal_d and gap_to_optimum."""
        best = {
            f"optimal_{k}": float(v)
            for k, v in zip(models.COEFFICIENTS, self.coefficients, strict=True)
        }
        return {"optimal_loss": self.loss, **best, "gap_to_optimum": self.gap(final_loss)}


def optimum(problem: Problem) -> Optimum:
    """The least-squares cubic through the problem's points (same features, same points)."""
    x = problem.x.astype(np.float64)
    features = models.features(x).T  # (n, 4)
    coefficients, *_ = np.linalg.lstsq(features, problem.y.astype(np.float64), rcond=None)
    # The same formula as the run's final_loss, so a run at the optimum has a gap of ~0.
    loss = float(np.sum((models.predict(coefficients, x) - problem.y) ** 2))
    return Optimum(coefficients=coefficients, loss=loss)
