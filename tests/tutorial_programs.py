"""The two programs of PyTorch's "Learning PyTorch with Examples" that the seed left out,
written as the tutorial writes them (polynomial_custom_function.py and dynamic_net.py).

Changed only where a comparison needs it: the initial values are given instead of drawn,
the step count is a parameter, the dynamic network's `random` is seeded, and every step's loss
is kept instead of printed now and then.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch


class LegendrePolynomial3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)
        return 0.5 * (5 * input**3 - 3 * input)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        return grad_output * 1.5 * (5 * input**2 - 1)


def legendre(initial: list[float], steps: int) -> tuple[np.ndarray, np.ndarray]:
    """polynomial_custom_function.py from `initial` = [a, b, c, d] (the tutorial's own start is
    [0, -1, 0, 0.3]): (loss at every step, final a, b, c, d)."""
    dtype = torch.float
    device = torch.device("cpu")
    x = torch.linspace(-math.pi, math.pi, 2000, device=device, dtype=dtype)
    y = torch.sin(x)
    a, b, c, d = (
        torch.full((), v, device=device, dtype=dtype, requires_grad=True) for v in initial
    )
    learning_rate = 5e-6
    losses = []
    for _t in range(steps):
        P3 = LegendrePolynomial3.apply
        y_pred = a + b * P3(c + d * x)
        loss = (y_pred - y).pow(2).sum()
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            a -= learning_rate * a.grad
            b -= learning_rate * b.grad
            c -= learning_rate * c.grad
            d -= learning_rate * d.grad
            a.grad = None
            b.grad = None
            c.grad = None
            d.grad = None
    return np.array(losses), np.array([a.item(), b.item(), c.item(), d.item()])


class DynamicNet(torch.nn.Module):
    def __init__(self, initial: list[float]) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(initial[0]))
        self.b = torch.nn.Parameter(torch.tensor(initial[1]))
        self.c = torch.nn.Parameter(torch.tensor(initial[2]))
        self.d = torch.nn.Parameter(torch.tensor(initial[3]))
        self.e = torch.nn.Parameter(torch.tensor(initial[4]))

    def forward(self, x):
        y = self.a + self.b * x + self.c * x**2 + self.d * x**3
        for exp in range(4, random.randint(4, 6)):
            y = y + self.e * x**exp
        return y


def dynamic(initial: list[float], steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """dynamic_net.py from `initial` = [a, b, c, d, e], its `random` seeded with `seed`:
    (loss at every step, final a, b, c, d, e)."""
    random.seed(seed)
    x = torch.linspace(-math.pi, math.pi, 2000)
    y = torch.sin(x)
    model = DynamicNet(initial)
    criterion = torch.nn.MSELoss(reduction="sum")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-8, momentum=0.9)
    losses = []
    for _t in range(steps):
        y_pred = model(x)
        loss = criterion(y_pred, y)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    m = model
    return np.array(losses), np.array([p.item() for p in (m.a, m.b, m.c, m.d, m.e)])
