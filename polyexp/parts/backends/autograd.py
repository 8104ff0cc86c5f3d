"""torch nn.Modules, gradients from loss.backward(): the seed's last four programs and the
tutorial's two more.

The module is the model's own (Model.torch_module: the seed's Polynomial3, Sequential, the
tutorial's Legendre3 with its autograd Function and DynamicNet); the step is the optimizer's
torch.optim counterpart (Optimizer.torch_step; manual_sgd is the seed's p -= lr * p.grad).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from polyexp.parts.backends import Backend
from polyexp.parts.backends.torch import TorchBatch, resolve_device

if TYPE_CHECKING:
    from polyexp.config import Settings
    from polyexp.parts.data import Problem


class AutogradFit:
    def __init__(self, s: Settings, problem: Problem) -> None:
        dtype, device = getattr(torch, s.dtype), resolve_device(s.device)
        x = torch.as_tensor(problem.x, device=device).to(dtype)
        self.y = torch.as_tensor(problem.y, device=device).to(dtype)
        initial = torch.as_tensor(problem.initial, device=device).to(dtype)
        self.spec = s.model
        self.inputs = s.model.torch_inputs(x)
        self.model = s.model.torch_module(initial, s.seed)
        self.optimizer_step = s.optimizer.torch_step(list(self.model.parameters()))
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
        theta = self.spec.theta_of(self.model)
        return theta.detach().to("cpu", torch.float64).numpy()


class AutogradBatch(TorchBatch):
    """AutogradFit by rows: each parameter a column (B, 1) through the model's forward pass;
    the gradients come from backward() of the sum of the runs' losses, so each row gets its
    own. The update is the optimizer's own rule (torch.optim takes one lr for all rows)."""

    def __init__(self, settings: Sequence[Settings], problems: Sequence[Problem]) -> None:
        super().__init__(settings, problems)
        self.spec = settings[0].model
        self.params = [p.clone().requires_grad_() for p in self.theta.split(1, 1)]
        self.states = [self.optimizer.init(p.detach()) for p in self.params]

    def step(self) -> Any:
        y_pred = self.spec.forward(self.params, self.x, torch)
        losses = ((y_pred - self.y) ** 2).sum(1)
        grads = torch.autograd.grad(losses.sum(), self.params)
        with torch.no_grad():
            for i, (param, grad) in enumerate(zip(self.params, grads, strict=True)):
                new, self.states[i] = self.optimizer.update(param.detach(), grad, self.states[i])
                self.params[i] = new.requires_grad_()
        return losses.detach()

    def coefficients(self) -> np.ndarray:
        theta = torch.cat([p.detach() for p in self.params], 1)
        return theta.to("cpu", torch.float64).numpy()


@dataclasses.dataclass(frozen=True)
class Autograd(Backend):
    """torch tensors and nn.Modules, gradients from loss.backward()."""

    def build(self, s: Settings, problem: Problem) -> AutogradFit:
        torch.manual_seed(s.seed)
        return AutogradFit(s, problem)

    def build_batch(
        self, settings: Sequence[Settings], problems: Sequence[Problem]
    ) -> AutogradBatch:
        return AutogradBatch(settings, problems)
