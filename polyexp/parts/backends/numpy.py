"""NumPy arrays, gradients by hand: the seed's first program, with the features computed once.

Kept line for line parallel to polyexp.parts.backends.torch, so a diff shows only the array library;
the model's forward and backward pass are its by-hand math (Model.by_hand), shared by both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from polyexp.parts.backends import Backend, hyper_columns
from polyexp.parts.optimizers import keep_unused

if TYPE_CHECKING:
    from polyexp.config import Settings
    from polyexp.parts.data import Problem


class NumpyFit:
    def __init__(self, s: Settings, problem: Problem) -> None:
        dtype = np.dtype(s.dtype)
        x = problem.x.astype(dtype)
        y = problem.y.astype(dtype)
        self.model = s.model.by_hand(x, y, np, s.seed)
        self.theta = problem.initial.astype(dtype)  # the model's parameters, e.g. (a, b, c, d)
        self.optimizer = s.optimizer.rule(np)
        self.state = self.optimizer.init(self.theta)
        self.device = "cpu"

    def step(self) -> Any:
        loss, grad, used = self.model.loss_and_grad(self.theta)
        theta, state = self.optimizer.update(self.theta, grad, self.state)
        if used is not None:  # the pass left parameters out: they keep their value and state
            theta, state = keep_unused(used, (theta, state), (self.theta, self.state), np)
        self.theta, self.state = theta, state
        return loss

    def fetch(self, losses: list[Any]) -> np.ndarray:
        return np.array(losses, dtype=np.float64)

    def coefficients(self) -> np.ndarray:
        return self.theta.astype(np.float64)


class NumpyBatch:
    """NumpyFit by rows: y_pred (B, n) = theta (B, p) @ features (p, n)."""

    def __init__(self, settings: Sequence[Settings], problems: Sequence[Problem]) -> None:
        s, dtype = settings[0], np.dtype(settings[0].dtype)
        x = problems[0].x.astype(dtype)
        (self.features,) = s.model.features(x, np)  # type: ignore[attr-defined]  # one graph
        self.y = problems[0].y.astype(dtype)
        self.theta = np.stack([p.initial for p in problems]).astype(dtype)
        self.optimizer = s.optimizer.rule(np, hyper_columns(settings, np, dtype=dtype))
        self.state = self.optimizer.init(self.theta)
        self.device = "cpu"

    def step(self) -> Any:
        y_pred = self.theta @ self.features
        residual = y_pred - self.y
        loss = np.einsum("bn,bn->b", residual, residual)
        grad = 2.0 * (residual @ self.features.T)
        self.theta, self.state = self.optimizer.update(self.theta, grad, self.state)
        return loss

    def fetch(self, losses: list[Any]) -> np.ndarray:
        return np.array(losses, dtype=np.float64)

    def coefficients(self) -> np.ndarray:
        return self.theta.astype(np.float64)


@dataclasses.dataclass(frozen=True)
class Numpy(Backend):
    """NumPy, gradients by hand; CPU only, never imports torch."""

    devices: ClassVar[tuple[str, ...]] = ("cpu", "auto")
    by_hand: ClassVar[bool] = True
    uses_torch: ClassVar[bool] = False

    def build(self, s: Settings, problem: Problem) -> NumpyFit:
        return NumpyFit(s, problem)

    def build_batch(self, settings: Sequence[Settings], problems: Sequence[Problem]) -> NumpyBatch:
        return NumpyBatch(settings, problems)
