"""The yardstick for every run: the closed-form least-squares fit of the run's own data.

The cubics and `dynamic` are linear in their parameters, so the best parameters for the summed
squared error over the run's points are one least-squares solve over their features, in
float64. For `dynamic` the loss is averaged over its three equally likely graphs, which is
still quadratic in the parameters: the solve stacks the three graphs' rows. `legendre3` is not
linear in its parameters and has no closed form: its runs carry no optimum.
A run's `gap_to_optimum` says how far training got: final_loss / optimal_loss - 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from polyexp.parts.models import LinearModel


@dataclass(frozen=True)
class Optimum:
    names: tuple[str, ...]  # the model's parameters
    coefficients: np.ndarray  # their best values, float64
    loss: float  # their loss, computed as the run computes final_loss

    def gap(self, final_loss: float) -> float:
        """final_loss / optimal_loss - 1: 0 at the optimum (inf if the optimum fits exactly)."""
        if self.loss == 0:
            return 0.0 if final_loss == 0 else float("inf")
        return final_loss / self.loss - 1

    def metrics(self, final_loss: float) -> dict[str, float]:
        """What a run logs: optimal_loss, optimal_<name> per parameter and gap_to_optimum."""
        best = {
            f"optimal_{k}": float(v) for k, v in zip(self.names, self.coefficients, strict=True)
        }
        return {"optimal_loss": self.loss, **best, "gap_to_optimum": self.gap(final_loss)}


def least_squares(model: LinearModel, x: np.ndarray, y: np.ndarray) -> Optimum:
    """The least-squares fit of a model linear in its parameters to the points x, y."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    graphs = model.features(x, np)  # one (p, n) block per graph
    # Every graph's rows, equally weighted (a view, not a copy, for a single graph).
    design = graphs[0].T if len(graphs) == 1 else np.concatenate([f.T for f in graphs])
    coefficients, *_ = np.linalg.lstsq(design, np.tile(y, len(graphs)), rcond=None)
    # The same formula as the run's final_loss, so a run at the optimum has a gap of ~0.
    loss = model.loss(coefficients, x, y)
    return Optimum(names=model.names, coefficients=coefficients, loss=loss)
