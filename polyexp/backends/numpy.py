"""NumPy arrays, gradients by hand: the seed's first program, with the features computed once.

Kept line for line parallel to polyexp.backends.torch, so a diff shows only the array library.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polyexp import models, optimizers
from polyexp.config import Settings
from polyexp.data import Problem


class NumpyFit:
    def __init__(self, settings: Settings, problem: Problem) -> None:
        dtype = np.dtype(settings.dtype)
        x = problem.x.astype(dtype)
        # Features (1, x, x^2, x^3) once, as rows (4, n): a step is two mat-vecs on contiguous rows.
        self.features = models.features(x)
        self.y = problem.y.astype(dtype)
        self.theta = problem.initial.astype(dtype)  # (a, b, c, d)
        self.optimizer = optimizers.build(settings.optimizer, settings.hyper, np)
        self.state = self.optimizer.init(self.theta)
        self.device = "cpu"

    def step(self) -> Any:
        # Forward pass: y_pred = a + b x + c x^2 + d x^3.
        y_pred = self.theta @ self.features
        residual = y_pred - self.y
        loss = residual @ residual  # summed squared error
        # Backward pass: d loss / d theta = 2 * features (y_pred - y).
        grad = 2.0 * (self.features @ residual)
        self.theta, self.state = self.optimizer.update(self.theta, grad, self.state)
        return loss

    def fetch(self, losses: list[Any]) -> np.ndarray:
        return np.array(losses, dtype=np.float64)

    def coefficients(self) -> np.ndarray:
        return self.theta.astype(np.float64)


def build(settings: Settings, problem: Problem) -> NumpyFit:
    return NumpyFit(settings, problem)
