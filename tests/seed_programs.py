"""The seed's six programs (a walkthrough of PyTorch's "Learning PyTorch with Examples"), written
out as our own reference code, one function each, as the walkthrough writes them.

Changed only where a comparison needs it: the random initial values are the given coefficients
`initial` = [a, b, c, d] (for the Sequential models: bias = a, weight = [b, c, d]), the step
count is a parameter, every step's loss is kept instead of printed every 100 steps, and the
`a.itme()` typo that crashes `seed_tensor` is mended. With `record=False` a program runs as
written: it prints every 100th loss and its result, and keeps nothing (the benchmark times that).

Each returns (loss at every step, final a, b, c, d); with `record=False` the losses are empty.
Each imports what the walkthrough's program imports, inside the function, so a program run on
its own (the benchmark's whole-command timing) pays only its own imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

NAMES = ("seed_numpy", "seed_tensor", "seed_autograd", "seed_nn", "seed_optim", "seed_module")
Program = Callable[..., tuple[np.ndarray, np.ndarray]]


def seed_numpy(initial: list[float], steps: int = 2000, record: bool = True):
    x = np.linspace(-math.pi, math.pi, 2000)
    y = np.sin(x)

    a, b, c, d = (float(v) for v in initial)

    losses = []
    learning_rate = 1e-6
    for t in range(steps):
        y_pred = a + b * x + c * x**2 + d * x**3

        loss = np.square(y_pred - y).sum()
        if record:
            losses.append(float(loss))
        elif t % 100 == 99:
            print(t, loss)

        grad_y_pred = 2.0 * (y_pred - y)
        grad_a = grad_y_pred.sum()
        grad_b = (grad_y_pred * x).sum()
        grad_c = (grad_y_pred * x**2).sum()
        grad_d = (grad_y_pred * x**3).sum()

        a -= learning_rate * grad_a
        b -= learning_rate * grad_b
        c -= learning_rate * grad_c
        d -= learning_rate * grad_d

    if not record:
        print(f"Result: y ={a}, {b} x + {c} x^2 + {d} x^3")
    return np.array(losses), np.array([float(v) for v in (a, b, c, d)])


def seed_tensor(initial: list[float], steps: int = 2000, record: bool = True):
    import torch

    dtype = torch.float
    device = torch.device("cpu")

    x = torch.linspace(-math.pi, math.pi, 2000, device=device, dtype=dtype)
    y = torch.sin(x)

    a, b, c, d = (torch.tensor(float(v), device=device, dtype=dtype) for v in initial)

    losses = []
    learning_rate = 1e-6
    for t in range(steps):
        y_pred = a + b * x + c * x**2 + d * x**3

        loss = (y_pred - y).pow(2).sum().item()
        if record:
            losses.append(loss)
        elif t % 100 == 99:
            print(t, loss)

        grad_y_pred = 2.0 * (y_pred - y)
        grad_a = grad_y_pred.sum()
        grad_b = (grad_y_pred * x).sum()
        grad_c = (grad_y_pred * x**2).sum()
        grad_d = (grad_y_pred * x**3).sum()

        a -= learning_rate * grad_a
        b -= learning_rate * grad_b
        c -= learning_rate * grad_c
        d -= learning_rate * grad_d

    if not record:  # the seed's `a.itme()` mended
        print(f"Result: y = {a.item()} + {b.item()} x + {c.item()} x^2 + {d.item()} x^3")
    return np.array(losses), np.array([a.item(), b.item(), c.item(), d.item()])


def seed_autograd(initial: list[float], steps: int = 2000, record: bool = True):
    import torch

    dtype = float
    device = torch.device("cpu")

    x = torch.linspace(-math.pi, math.pi, 2000, device=device, dtype=dtype)
    y = torch.sin(x)

    a, b, c, d = (
        torch.tensor(float(v), device=device, dtype=dtype, requires_grad=True) for v in initial
    )

    losses = []
    learning_rate = 1e-6
    for t in range(steps):
        y_pred = a + b * x + c * x**2 + d * x**3

        loss = (y_pred - y).pow(2).sum()
        if record:
            losses.append(loss.item())
        elif t % 100 == 99:
            print(t, loss.item())

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

    if not record:
        print(f"Result: y = {a.item()} + {b.item()} x + {c.item()} x^2 + {d.item()} x^3")
    return np.array(losses), np.array([a.item(), b.item(), c.item(), d.item()])


def _set_sequential(model, initial: list[float]) -> None:
    """bias = a, weight = [b, c, d], in place of the Linear layer's random start."""
    import torch

    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([float(initial[0])]))
        model[0].weight.copy_(torch.tensor([[float(v) for v in initial[1:]]]))


def _sequential_result(model) -> np.ndarray:
    linear_layer = model[0]
    return np.array([linear_layer.bias.item(), *linear_layer.weight.flatten().tolist()])


def seed_nn(initial: list[float], steps: int = 2000, record: bool = True):
    import torch

    x = torch.linspace(-math.pi, math.pi, 2000)
    y = torch.sin(x)

    p = torch.tensor([1, 2, 3])
    xx = x.unsqueeze(-1).pow(p)

    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Flatten(0, 1))
    _set_sequential(model, initial)

    loss_fn = torch.nn.MSELoss(reduction="sum")

    losses = []
    learning_rate = 1e-6
    for t in range(steps):
        y_pred = model(xx)

        loss = loss_fn(y_pred, y)
        if record:
            losses.append(loss.item())
        elif t % 100 == 99:
            print(t, loss.item())

        model.zero_grad()

        loss.backward()

        with torch.no_grad():
            for param in model.parameters():
                param -= learning_rate * param.grad

    linear_layer = model[0]
    if not record:
        print(
            f"Result y = {linear_layer.bias.item()} + {linear_layer.weight[:, 0].item()} x"
            f" + {linear_layer.weight[:, 1].item()} x^2 + {linear_layer.weight[:, 2].item()} x^3"
        )
    return np.array(losses), _sequential_result(model)


def seed_optim(initial: list[float], steps: int = 2000, record: bool = True):
    import torch

    x = torch.linspace(-math.pi, math.pi, 2000)
    y = torch.sin(x)

    p = torch.tensor([1, 2, 3])
    xx = x.unsqueeze(-1).pow(p)

    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Flatten(0, 1))
    _set_sequential(model, initial)
    loss_fn = torch.nn.MSELoss(reduction="sum")

    losses = []
    learning_rate = 1e-6  # the seed's lr: RMSprop barely moves (the tutorial uses 1e-3)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=learning_rate)
    for t in range(steps):
        pred_y = model(xx)

        loss = loss_fn(pred_y, y)
        if record:
            losses.append(loss.item())
        elif t % 100 == 99:
            print(t, loss.item())

        optimizer.zero_grad()

        loss.backward()

        optimizer.step()

    linear_layer = model[0]
    if not record:
        print(
            f"Result: y = {linear_layer.bias.item()} + {linear_layer.weight[:, 0].item()} x"
            f" + {linear_layer.weight[:, 1].item()} x^2 + {linear_layer.weight[:, 2].item()} x^3"
        )
    return np.array(losses), _sequential_result(model)


def seed_module(initial: list[float], steps: int = 2000, record: bool = True):
    import torch

    class Polynomial3(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(float(initial[0])))
            self.b = torch.nn.Parameter(torch.tensor(float(initial[1])))
            self.c = torch.nn.Parameter(torch.tensor(float(initial[2])))
            self.d = torch.nn.Parameter(torch.tensor(float(initial[3])))

        def forward(self, x):
            return self.a + self.b * x + self.c * x**2 + self.d * x**3

        def string(self):
            return (
                f"y = {self.a.item()} + {self.b.item()} x + {self.c.item()} x^2"
                f" + {self.d.item()} x^3"
            )

    x = torch.linspace(-math.pi, math.pi, 2000)
    y = torch.sin(x)

    model = Polynomial3()

    loss_fn = torch.nn.MSELoss(reduction="sum")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    losses = []
    for t in range(steps):
        pred_y = model(x)

        loss = loss_fn(pred_y, y)
        if record:
            losses.append(loss.item())
        elif t % 100 == 99:
            print(t, loss.item())

        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    if not record:
        print(f"Result: {model.string()}")
    final = [model.a.item(), model.b.item(), model.c.item(), model.d.item()]
    return np.array(losses), np.array(final)


PROGRAMS: dict[str, Program] = {
    "seed_numpy": seed_numpy,
    "seed_tensor": seed_tensor,
    "seed_autograd": seed_autograd,
    "seed_nn": seed_nn,
    "seed_optim": seed_optim,
    "seed_module": seed_module,
}


def run(
    name: str, initial: list[float], steps: int = 2000, record: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Seed program `name` from `initial` = [a, b, c, d]: (loss at every step, final a, b, c, d)."""
    return PROGRAMS[name](initial, steps, record)
