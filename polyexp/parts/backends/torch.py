"""torch tensors, gradients by hand: the seed's second program, with the features computed once.

Kept line for line parallel to polyexp.parts.backends.numpy, so a diff shows only the array library;
the model's forward and backward pass are its by-hand math (Model.by_hand), shared by both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from polyexp.errors import ConfigError
from polyexp.parts.backends import Backend, hyper_columns
from polyexp.parts.optimizers import keep_unused

if TYPE_CHECKING:
    from polyexp.config import Settings
    from polyexp.parts.data import Problem


def resolve_device(name: str) -> torch.device:
    """cpu | cuda | mps | auto -> a torch.device that exists here, or a one-line ConfigError."""
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        here = ", ".join(
            d for d, ok in (("cpu", True), ("cuda", cuda), ("mps", mps), ("auto", True)) if ok
        )
        raise ConfigError(f"device={name!r} is not available on this machine; choose from {here}")
    return torch.device("cuda:0" if name == "cuda" else name)


class TorchFit:
    def __init__(self, s: Settings, problem: Problem) -> None:
        dtype, device = getattr(torch, s.dtype), resolve_device(s.device)
        x = torch.as_tensor(problem.x, device=device).to(dtype)
        y = torch.as_tensor(problem.y, device=device).to(dtype)
        self.model = s.model.by_hand(x, y, torch, s.seed)
        self.theta = torch.as_tensor(problem.initial, device=device).to(dtype)
        self.optimizer = s.optimizer.rule(torch)
        self.state = self.optimizer.init(self.theta)
        self.device = str(device)

    def step(self) -> Any:
        loss, grad, used = self.model.loss_and_grad(self.theta)
        theta, state = self.optimizer.update(self.theta, grad, self.state)
        if used is not None:  # the pass left parameters out: they keep their value and state
            theta, state = keep_unused(used, (theta, state), (self.theta, self.state), torch)
        self.theta, self.state = theta, state
        return loss

    def fetch(self, losses: list[Any]) -> np.ndarray:
        return torch.stack(losses).to("cpu", torch.float64).numpy()

    def coefficients(self) -> np.ndarray:
        return self.theta.to("cpu", torch.float64).numpy()


class TorchBatch:
    """TorchFit by rows: y_pred (B, n) = theta (B, p) @ features (p, n)."""

    def __init__(self, settings: Sequence[Settings], problems: Sequence[Problem]) -> None:
        s = settings[0]
        dtype, device = getattr(torch, s.dtype), resolve_device(s.device)
        x = torch.as_tensor(problems[0].x, device=device).to(dtype)
        self.x = x
        (self.features,) = s.model.features(x, torch)  # type: ignore[attr-defined]  # one graph
        self.y = torch.as_tensor(problems[0].y, device=device).to(dtype)
        initial = np.stack([p.initial for p in problems])
        self.theta = torch.as_tensor(initial, device=device).to(dtype)
        hyper = hyper_columns(settings, torch, dtype=dtype, device=device)
        self.optimizer = s.optimizer.rule(torch, hyper)
        self.state = self.optimizer.init(self.theta)
        self.device = str(device)

    def step(self) -> Any:
        y_pred = self.theta @ self.features
        residual = y_pred - self.y
        loss = (residual * residual).sum(1)
        grad = 2.0 * (residual @ self.features.T)
        self.theta, self.state = self.optimizer.update(self.theta, grad, self.state)
        return loss

    def fetch(self, losses: list[Any]) -> np.ndarray:
        return torch.stack(losses).to("cpu", torch.float64).numpy()

    def coefficients(self) -> np.ndarray:
        return self.theta.to("cpu", torch.float64).numpy()


@dataclasses.dataclass(frozen=True)
class Torch(Backend):
    """torch tensors, gradients by hand (no autograd)."""

    by_hand: ClassVar[bool] = True

    def build(self, s: Settings, problem: Problem) -> TorchFit:
        torch.manual_seed(s.seed)
        return TorchFit(s, problem)

    def build_batch(self, settings: Sequence[Settings], problems: Sequence[Problem]) -> TorchBatch:
        return TorchBatch(settings, problems)
