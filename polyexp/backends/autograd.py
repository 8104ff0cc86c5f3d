"""torch nn.Modules, gradients from loss.backward(): the seed's last four programs and the
tutorial's two more.

`polynomial3` is the seed's custom Polynomial3 module; `sequential` its
Sequential(Linear(3, 1), Flatten(0, 1)) over the features (x, x^2, x^3); `legendre3` the
tutorial's a + b P3(c + d x) with P3 a torch.autograd.Function; `dynamic` the tutorial's
DynamicNet. `manual_sgd` is the seed's `p -= lr * p.grad` under no_grad; `sgd` and `rmsprop`
are torch.optim's own.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from polyexp import models
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


class LegendreP3(torch.autograd.Function):
    """P3(z) = (5 z^3 - 3 z) / 2 with its own backward pass, P3'(z) = 3 (5 z^2 - 1) / 2."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z)
        return models.p3(z)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (z,) = ctx.saved_tensors
        return grad_output * models.dp3(z)


class Legendre3(Polynomial3):
    """y = a + b P3(c + d x): Polynomial3's four scalar Parameters, the tutorial's forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a + self.b * LegendreP3.apply(self.c + self.d * x)


class DynamicNet(torch.nn.Module):
    """The tutorial's dynamic network: the cubic plus 0 to 2 more terms e x^4, e x^5 chosen at
    random on every forward pass, reusing one Parameter e. `draw` is the random source
    (the tutorial's `random.randint`; here a generator seeded by the run's seed)."""

    def __init__(self, coefficients: torch.Tensor, draw: Callable[[int, int], int]) -> None:
        super().__init__()
        a, b, c, d, e = coefficients
        self.a = torch.nn.Parameter(a.clone())
        self.b = torch.nn.Parameter(b.clone())
        self.c = torch.nn.Parameter(c.clone())
        self.d = torch.nn.Parameter(d.clone())
        self.e = torch.nn.Parameter(e.clone())
        self.draw = draw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a + self.b * x + self.c * x**2 + self.d * x**3
        for exp in range(4, self.draw(4, 6)):
            y = y + self.e * x**exp
        return y


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
                if param.grad is not None:  # None: the forward pass did not use it (dynamic)
                    param -= lr * param.grad  # type: ignore[misc]

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
            if settings.model == "legendre3":
                self.model = Legendre3(initial)
            elif settings.model == "dynamic":
                self.model = DynamicNet(initial, random.Random(settings.seed).randint)
            else:
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
        if isinstance(self.model, torch.nn.Sequential):
            state = self.model.state_dict()
            theta = torch.cat([state["0.bias"], state["0.weight"].flatten()])
        else:  # one scalar Parameter per name, in the model's order
            theta = torch.stack(list(self.model.parameters()))
        return theta.detach().to("cpu", torch.float64).numpy()


def build(settings: Settings, problem: Problem) -> AutogradFit:
    torch.manual_seed(settings.seed)
    return AutogradFit(settings, problem)
