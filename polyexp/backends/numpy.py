"""NumPy arrays, gradients by hand: the seed's first program, with the features computed once.

Kept line for line parallel to polyexp.backends.torch, so a diff shows only the array library;
the model's forward and backward pass are polyexp.models' by-hand math, shared by both.
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
        y = problem.y.astype(dtype)
        self.model = models.by_hand(settings.model, x, y, np, settings.seed)
        self.theta = problem.initial.astype(dtype)  # the model's parameters, e.g. (a, b, c, d)
        self.optimizer = optimizers.build(settings.optimizer, settings.hyper, np)
        self.state = self.optimizer.init(self.theta)
        self.device = "cpu"

    def step(self) -> Any:
        loss, grad, used = self.model.loss_and_grad(self.theta)
        theta, state = self.optimizer.update(self.theta, grad, self.state)
        if used is not None:  # the pass left parameters out: they keep their value and state
            theta, state = optimizers.keep_unused(
                used, (theta, state), (self.theta, self.state), np
            )
        self.theta, self.state = theta, state
        return loss

    def fetch(self, losses: list[Any]) -> np.ndarray:
        return np.array(losses, dtype=np.float64)

    def coefficients(self) -> np.ndarray:
        return self.theta.astype(np.float64)


def build(settings: Settings, problem: Problem) -> NumpyFit:
    return NumpyFit(settings, problem)
