"""torch nn.Modules, gradients from loss.backward(): the seed's last four programs.

`polynomial3` is the seed's custom Polynomial3 module; `sequential` its
Sequential(Linear(3, 1), Flatten(0, 1)) over the features (x, x^2, x^3). `manual_sgd` is the
seed's `p -= lr * p.grad` under no_grad; `sgd` and `rmsprop` are torch.optim's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from polyexp.backends.torch import resolve_device
from polyexp.config import Settings
from polyexp.data import Problem


class Polynomial3(torch.nn.Module):
    """y = a + b x + c x^2 + d x^3 with four scalar Parameters, as in the seed."""

    def __init__(self, coefficients: torch.Tensor) -> None:
        super().__init__()
        a, b, c, d = coefficients
        self.a = torch.nn.Parameter(a.clone())
        self.b = torch.nn.Parameter(b.clone())
        self.c = torch.nn.Parameter(c.clone())
        self.d = torch.nn.Parameter(d.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a + self.b * x + self.c * x**2 + self.d * x**3


def sequential(coefficients: torch.Tensor) -> torch.nn.Sequential:
    """Linear(3, 1) + Flatten(0, 1), bias = a and weight = [b, c, d], in their dtype and device."""
    linear = torch.nn.Linear(3, 1, device=coefficients.device, dtype=coefficients.dtype)
    with torch.no_grad():
        linear.bias.copy_(coefficients[:1])
        linear.weight.copy_(coefficients[1:].reshape(1, 3))
    return torch.nn.Sequential(linear, torch.nn.Flatten(0, 1))


def _update(settings: Settings, params: list[torch.nn.Parameter]) -> Callable[[], None]:
    """One optimizer step over params whose .grad is set."""
    if settings.optimizer == "manual_sgd":
        lr = settings.hyper["lr"]

        @torch.no_grad()
        def manual_step() -> None:
            for param in params:
                param -= lr * param.grad  # type: ignore[misc]  # .grad is set by backward()

        return manual_step
    optimizer_class = {"sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}[settings.optimizer]
    optimizer = optimizer_class(params, **settings.hyper)
    return optimizer.step


class AutogradFit:
    def __init__(self, settings: Settings, problem: Problem) -> None:
        dtype, device = getattr(torch, settings.dtype), resolve_device(settings.device)
        x = torch.as_tensor(problem.x, device=device).to(dtype)
        self.y = torch.as_tensor(problem.y, device=device).to(dtype)
        initial = torch.as_tensor(problem.initial, device=device).to(dtype)
        self.model: torch.nn.Module
        if settings.model == "sequential":
            # The seed's input: (x, x^2, x^3) as columns, shape (n, 3).
            self.inputs = x.unsqueeze(-1).pow(torch.tensor([1, 2, 3], device=device))
            self.model = sequential(initial)
        else:
            self.inputs = x
            self.model = Polynomial3(initial)
        self.optimizer_step = _update(settings, list(self.model.parameters()))
        self.device = str(device)

    def step(self) -> Any:
        y_pred = self.model(self.inputs)
        loss = F.mse_loss(y_pred, self.y, reduction="sum")
        self.model.zero_grad()
        loss.backward()
        self.optimizer_step()
        return loss.detach()

    def fetch(self, losses: list[Any]) -> np.ndarray:
        return torch.stack(losses).to("cpu", torch.float64).numpy()

    def coefficients(self) -> np.ndarray:
        if isinstance(self.model, Polynomial3):
            theta = torch.stack([self.model.a, self.model.b, self.model.c, self.model.d])
        else:
            state = self.model.state_dict()
            theta = torch.cat([state["0.bias"], state["0.weight"].flatten()])
        return theta.detach().to("cpu", torch.float64).numpy()


def build(settings: Settings, problem: Problem) -> AutogradFit:
    torch.manual_seed(settings.seed)
    return AutogradFit(settings, problem)
