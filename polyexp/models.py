"""The models: what each computes, what its parameters are called, and its gradients by hand.

A run's parameters are one vector `theta`, in the order of the model's `names`:

- `polynomial3`: y = a + b x + c x^2 + d x^3, four scalars (the seed's custom nn.Module).
- `sequential`: the same cubic as Linear(3, 1): bias = a, weight = [b, c, d].
- `legendre3`: y = a + b P3(c + d x), P3(z) = (5 z^3 - 3 z) / 2 (the tutorial's custom
  autograd Function; on the autograd backend P3 is a torch.autograd.Function).
- `dynamic`: the tutorial's dynamic network: the cubic plus, drawn anew every forward pass,
  0, 1 or 2 more terms e x^4, e x^5 sharing one parameter e (`random.randint(4, 6)` as in the
  tutorial, from a generator seeded by the run's seed).

The cubics and `dynamic` are linear in their parameters: each of their possible graphs is
y = theta @ F with features F as rows (p, n). That one form gives their gradients by hand,
their plots and the closed-form optimum (polyexp.reference). `legendre3` is not linear, so it
has its own forward and backward pass and no closed-form optimum.

The by-hand math below is written once over an array module `xp` (numpy or torch) with
arithmetic operators and a few functions both share, as polyexp.optimizers is, so the numpy and
torch backends run the same lines.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

Array = Any  # np.ndarray or torch.Tensor


@dataclass(frozen=True)
class Model:
    name: str
    names: tuple[str, ...]  # the parameters, in theta's order
    linear: bool  # every graph is theta @ features: gradients, optimum and plots from features
    graphs: tuple[str, ...]  # a label for each graph a forward pass may take (plots)

    def formula(self, theta: np.ndarray) -> str:
        v = dict(zip(self.names, (float(t) for t in theta), strict=True))
        cubic = f"y = {v['a']} + {v['b']} x + {v['c']} x^2 + {v['d']} x^3"
        if self.name == "legendre3":
            return f"y = {v['a']} + {v['b']} * P3({v['c']} + {v['d']} x)"
        if self.name == "dynamic":  # the tutorial's own notation for the random terms
            return f"{cubic} + {v['e']} x^4 ? + {v['e']} x^5 ?"
        return cubic

    def parameters(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """The trained parameters as the model's own state_dict names them."""
        theta = np.asarray(theta, dtype=np.float64)
        if self.name == "sequential":
            return {"0.weight": theta[1:].reshape(1, 3), "0.bias": theta[:1]}
        return {name: np.asarray(value) for name, value in zip(self.names, theta, strict=True)}


_CUBIC = ("fitted cubic",)
MODELS = {
    "polynomial3": Model("polynomial3", ("a", "b", "c", "d"), linear=True, graphs=_CUBIC),
    "sequential": Model("sequential", ("a", "b", "c", "d"), linear=True, graphs=_CUBIC),
    "legendre3": Model(
        "legendre3", ("a", "b", "c", "d"), linear=False, graphs=("fitted a + b P3(c + d x)",)
    ),
    "dynamic": Model(
        "dynamic",
        ("a", "b", "c", "d", "e"),
        linear=True,
        graphs=("fitted cubic, no more terms", "+ e x^4", "+ e x^4 + e x^5"),
    ),
}


def get(name: str) -> Model:
    return MODELS[name]


# --- the math, once for numpy and torch ---------------------------------------------------------


def _rows(model: str, x: Array, xp: ModuleType) -> list[list[Array]]:
    """A linear model's feature rows, one list per graph (shared arrays, nothing stacked)."""
    cubic = [xp.ones_like(x), x, x**2, x**3]
    if model == "dynamic":
        x4 = x**4
        extra = [xp.zeros_like(x), x4, x4 + x**5]  # 0, 1 or 2 more terms sharing e
        return [[*cubic, e] for e in extra]
    return [cubic]


def features(model: str, x: Array, xp: ModuleType) -> list[Array]:
    """A linear model's features as rows (p, n), one array per graph: y = theta @ features."""
    return [xp.stack(rows) for rows in _rows(model, x, xp)]


def p3(z: Array) -> Array:
    """The Legendre polynomial P3(z) = (5 z^3 - 3 z) / 2."""
    return 0.5 * (5 * z**3 - 3 * z)


def dp3(z: Array) -> Array:
    """P3'(z) = 3 (5 z^2 - 1) / 2."""
    return 1.5 * (5 * z**2 - 1)


def legendre3(theta: Array, x: Array) -> Array:
    a, b, c, d = theta
    return a + b * p3(c + d * x)


def curves(model: str, theta: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """What the model predicts at x, one curve per graph a forward pass may take (float64)."""
    theta, x = np.asarray(theta, dtype=np.float64), np.asarray(x, dtype=np.float64)
    if get(model).linear:  # a sum of rows: no (p, n) array at 10^7 points
        return [
            sum(t * row for t, row in zip(theta, rows, strict=True)) for rows in _rows(model, x, np)
        ]
    return [legendre3(theta, x)]


def loss(model: str, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """The summed squared error, averaged over the model's graphs as they are drawn (equally
    often): for every model but `dynamic` simply the summed squared error."""
    return loss_of(curves(model, theta, x), y)


def loss_of(predictions: list[np.ndarray], y: np.ndarray) -> float:
    """`loss` from the model's curves already computed (see `curves`)."""
    return float(np.mean([np.sum((c - y) ** 2) for c in predictions]))


class Linear:
    """Gradients by hand for a linear model: y = theta @ F, F one of its graphs' features."""

    def __init__(self, model: str, x: Array, y: Array, xp: ModuleType, seed: int) -> None:
        # Features computed once, as rows (p, n): a step is two mat-vecs on contiguous rows.
        self.features = features(model, x, xp)
        self.y = y
        # dynamic: which graph each forward pass takes, drawn as the tutorial draws it; a
        # parameter its graph leaves out (e) gets no gradient and no update, as in torch.optim.
        self.draw = random.Random(seed).randint if model == "dynamic" else None
        # Which parameters each graph uses: dynamic's first graph leaves e out.
        self.used = [xp.asarray([True] * 4 + [g > 0], device=x.device) for g in range(3)]

    def loss_and_grad(self, theta: Array) -> tuple[Array, Array, Array | None]:
        """The summed squared error before the update, its gradient, and which parameters the
        pass used (None: all of them)."""
        graph = self.draw(4, 6) - 4 if self.draw is not None else 0
        features = self.features[graph]
        # Forward pass: y_pred = theta @ features.
        y_pred = theta @ features
        residual = y_pred - self.y
        loss = residual @ residual  # summed squared error
        # Backward pass: d loss / d theta = 2 * features (y_pred - y).
        grad = 2.0 * (features @ residual)
        return loss, grad, None if self.draw is None else self.used[graph]


class Legendre3:
    """Gradients by hand for y = a + b P3(c + d x), through P3'(z)."""

    def __init__(self, x: Array, y: Array, xp: ModuleType) -> None:
        self.x, self.y, self.xp = x, y, xp

    def loss_and_grad(self, theta: Array) -> tuple[Array, Array, None]:
        a, b, c, d = theta
        # Forward pass.
        z = c + d * self.x
        p = p3(z)
        residual = a + b * p - self.y
        loss = residual @ residual
        # Backward pass: dy = d loss / d y_pred, then the chain rule through P3.
        dy = 2.0 * residual
        dz = dy * b * dp3(z)
        grad = self.xp.stack([dy.sum(), dy @ p, dz.sum(), dz @ self.x])
        return loss, grad, None


def by_hand(model: str, x: Array, y: Array, xp: ModuleType, seed: int) -> Linear | Legendre3:
    """The model's loss and gradient by hand, over x and y already in the backend's arrays."""
    if get(model).linear:
        return Linear(model, x, y, xp, seed)
    return Legendre3(x, y, xp)
