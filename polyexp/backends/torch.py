"""torch tensors, gradients by hand: the seed's second program, with the features computed once.

Kept line for line parallel to polyexp.backends.numpy, so a diff shows only the array library;
the model's forward and backward pass are polyexp.models' by-hand math, shared by both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from polyexp import models, optimizers
from polyexp.config import ConfigError, Settings
from polyexp.data import Problem


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
    def __init__(self, settings: Settings, problem: Problem) -> None:
        dtype, device = getattr(torch, settings.dtype), resolve_device(settings.device)
        x = torch.as_tensor(problem.x, device=device).to(dtype)
        y = torch.as_tensor(problem.y, device=device).to(dtype)
        self.model = models.by_hand(settings.model, x, y, torch, settings.seed)
        self.theta = torch.as_tensor(problem.initial, device=device).to(dtype)
        self.optimizer = optimizers.build(settings.optimizer, settings.hyper, torch)
        self.state = self.optimizer.init(self.theta)
        self.device = str(device)

    def step(self) -> Any:
        loss, grad, used = self.model.loss_and_grad(self.theta)
        theta, state = self.optimizer.update(self.theta, grad, self.state)
        if used is not None:  # the pass left parameters out: they keep their value and state
            theta, state = optimizers.keep_unused(
                used, (theta, state), (self.theta, self.state), torch
            )
        self.theta, self.state = theta, state
        return loss

    def fetch(self, losses: list[Any]) -> np.ndarray:
        return torch.stack(losses).to("cpu", torch.float64).numpy()

    def coefficients(self) -> np.ndarray:
        return self.theta.to("cpu", torch.float64).numpy()


def build(settings: Settings, problem: Problem) -> TorchFit:
    torch.manual_seed(settings.seed)
    return TorchFit(settings, problem)
