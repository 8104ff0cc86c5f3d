"""The torch pieces of the models, imported only by the autograd backend (a numpy run never
imports torch): a module of one scalar Parameter per name, and P3 as an autograd Function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from polyexp.parts.models import dp3, p3


class Scalars(torch.nn.Module):
    """One scalar Parameter per name (a, b, c, d, ... as in the seed's Polynomial3), in that
    order; the forward pass is `forward(theta, x)` over them."""

    def __init__(
        self,
        names: Sequence[str],
        initial: torch.Tensor,
        forward: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__()
        self.names = tuple(names)
        for name, value in zip(self.names, initial, strict=True):
            setattr(self, name, torch.nn.Parameter(value.clone()))
        self._forward = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward([getattr(self, name) for name in self.names], x)


class LegendreP3(torch.autograd.Function):
    """P3(z) = (5 z^3 - 3 z) / 2 with its own backward pass, P3'(z) = 3 (5 z^2 - 1) / 2."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z)
        return p3(z)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (z,) = ctx.saved_tensors
        return grad_output * dp3(z)
