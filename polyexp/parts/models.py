"""The models: each is an Option that owns its math, its parameter names, its forward pass,
its gradient by hand where it has one, its torch module for the autograd backend, its
state_dict names and its closed-form optimum where it has one.

A run's parameters are one vector `theta`, in the order of the model's `names`:

- `polynomial3`: y = a + b x + c x^2 + d x^3, four scalars (the seed's custom nn.Module).
- `sequential`: the same cubic as Linear(3, 1): bias = a, weight = [b, c, d].
- `legendre3`: y = a + b P3(c + d x), P3(z) = (5 z^3 - 3 z) / 2 (the tutorial's custom
  autograd Function; on the autograd backend P3 is a torch.autograd.Function).
- `dynamic`: the tutorial's dynamic network: the cubic plus, drawn anew every forward pass,
  0, 1 or 2 more terms e x^4, e x^5 sharing one parameter e (`random.randint(4, 6)` as in the
  tutorial, from a generator seeded by the run's seed).

The least a model needs is `names` and `forward(theta, x, xp)`: it then trains on the autograd
backend (one scalar torch Parameter per name) and is recorded like ours (README: Extending
polyexp). `LinearModel`s, linear in their parameters (each possible graph is y = theta @ F
with features F as rows (p, n)), get their gradients by hand, their plots and their closed-form
optimum from their features. The by-hand math is written once over an array module `xp` (numpy
or torch), as polyexp.parts.optimizers is, so the numpy and torch backends run the same lines.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from polyexp.options import Option

if TYPE_CHECKING:
    import torch

    from polyexp.parts.reference import Optimum

Array = Any  # np.ndarray or torch.Tensor


class ByHand(Protocol):
    """A model's loss and gradient written out by hand, over one backend's arrays."""

    def loss_and_grad(self, theta: Array) -> tuple[Array, Array, Array | None]:
        """The summed squared error before the update, its gradient, and which parameters the
        pass used (None: all of them)."""
        ...


@dataclasses.dataclass(frozen=True)
class Model(Option):
    group: ClassVar[str] = "model"
    names: ClassVar[tuple[str, ...]] = ()  # the parameters, in theta's order
    graphs: ClassVar[tuple[str, ...]] = ("fitted model",)  # a label per graph (plots)
    # The step size of plain gradient descent (optimizer=manual_sgd, sgd) unless the user sets
    # optimizer.lr: the largest stable step depends on the model's curvature. None: theirs.
    lr: float | None = dataclasses.field(default=None, metadata={"positive": True})

    def forward(self, theta: Sequence[Array], x: Array, xp: ModuleType) -> Array:
        """y_pred at x from the parameters (one array or scalar per name) with `xp`'s functions."""
        raise NotImplementedError(f"{type(self).__name__} defines no forward(theta, x, xp)")

    def formula(self, theta: np.ndarray) -> str:
        values = ", ".join(f"{k}={float(v)}" for k, v in zip(self.names, theta, strict=True))
        return f"y = {self.name}({values})"

    def curves(self, theta: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
        """What the model predicts at x, one curve per graph a forward pass may take (float64)."""
        theta, x = np.asarray(theta, dtype=np.float64), np.asarray(x, dtype=np.float64)
        return [np.asarray(self.forward(list(theta), x, np), dtype=np.float64)]

    def loss(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        """The summed squared error, averaged over the model's graphs as they are drawn."""
        return loss_of(self.curves(theta, x), y)

    def by_hand(self, x: Array, y: Array, xp: ModuleType, seed: int) -> ByHand:
        """The loss and gradient by hand (the numpy and torch backends); a model without one
        trains on the autograd backend only."""
        raise NotImplementedError

    @property
    def has_by_hand(self) -> bool:
        return type(self).by_hand is not Model.by_hand

    def optimum(self, x: np.ndarray, y: np.ndarray) -> Optimum | None:
        """The closed-form least-squares fit of x, y; None where there is none."""
        return None

    # --- the autograd backend ---

    def torch_module(self, initial: torch.Tensor, seed: int) -> torch.nn.Module:
        """The nn.Module the autograd backend trains: by default one scalar Parameter per name,
        whose forward pass is `forward`."""
        import torch

        from polyexp.parts.torch_modules import Scalars

        return Scalars(self.names, initial, lambda theta, x: self.forward(theta, x, torch))

    def torch_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the module takes: x itself (sequential: the features (x, x^2, x^3))."""
        return x

    def theta_of(self, module: torch.nn.Module) -> torch.Tensor:
        """The module's parameters as theta, in the order of `names`."""
        import torch

        return torch.stack([getattr(module, name) for name in self.names])

    def parameters(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """The trained parameters as the model's own state_dict names them."""
        theta = np.asarray(theta, dtype=np.float64)
        return {name: np.asarray(value) for name, value in zip(self.names, theta, strict=True)}


def loss_of(predictions: list[np.ndarray], y: np.ndarray) -> float:
    """The loss from the model's curves already computed (see `Model.curves`)."""
    return float(np.mean([np.sum((c - y) ** 2) for c in predictions]))


# --- models linear in their parameters ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LinearModel(Model):
    """Every graph is y = theta @ features: gradients, optimum and plots from the features."""

    def rows(self, x: Array, xp: ModuleType) -> list[list[Array]]:
        """The feature rows, one list per graph (shared arrays, nothing stacked)."""
        raise NotImplementedError

    @property
    def batchable(self) -> bool:
        """One graph: runs that differ only in numbers can train as one batch (sweeps.batched)."""
        return len(self.graphs) == 1

    def features(self, x: Array, xp: ModuleType) -> list[Array]:
        """The features as rows (p, n), one array per graph: y = theta @ features."""
        return [xp.stack(rows) for rows in self.rows(x, xp)]

    def forward(self, theta: Sequence[Array], x: Array, xp: ModuleType) -> Array:
        return sum(t * row for t, row in zip(theta, self.rows(x, xp)[0], strict=True))

    def curves(self, theta: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
        theta, x = np.asarray(theta, dtype=np.float64), np.asarray(x, dtype=np.float64)
        # A sum of rows: no (p, n) array at 10^7 points.
        return [
            sum(t * row for t, row in zip(theta, rows, strict=True)) for rows in self.rows(x, np)
        ]

    def by_hand(self, x: Array, y: Array, xp: ModuleType, seed: int) -> ByHand:
        return Linear(self.features(x, xp), y)

    def optimum(self, x: np.ndarray, y: np.ndarray) -> Optimum | None:
        from polyexp.parts.reference import least_squares

        return least_squares(self, x, y)


class Linear:
    """Gradients by hand for a linear model: y = theta @ F, F one of its graphs' features.
    `draw` (dynamic) picks each forward pass's graph; `used` says which parameters it uses."""

    def __init__(
        self,
        features: list[Array],
        y: Array,
        draw: Any = None,
        used: list[Array] | None = None,
    ) -> None:
        # Features computed once, as rows (p, n): a step is two mat-vecs on contiguous rows.
        self.features = features
        self.y = y
        self.draw = draw
        self.used = used

    def loss_and_grad(self, theta: Array) -> tuple[Array, Array, Array | None]:
        graph = self.draw(4, 6) - 4 if self.draw is not None else 0
        features = self.features[graph]
        # Forward pass: y_pred = theta @ features.
        y_pred = theta @ features
        residual = y_pred - self.y
        loss = residual @ residual  # summed squared error
        # Backward pass: d loss / d theta = 2 * features (y_pred - y).
        grad = 2.0 * (features @ residual)
        return loss, grad, None if self.used is None else self.used[graph]


def _cubic(x: Array, xp: ModuleType) -> list[Array]:
    return [xp.ones_like(x), x, x**2, x**3]


@dataclasses.dataclass(frozen=True)
class Polynomial3(LinearModel):
    """y = a + b x + c x^2 + d x^3 with four scalar Parameters (the seed's custom nn.Module)."""

    names: ClassVar[tuple[str, ...]] = ("a", "b", "c", "d")
    graphs: ClassVar[tuple[str, ...]] = ("fitted cubic",)

    def rows(self, x: Array, xp: ModuleType) -> list[list[Array]]:
        return [_cubic(x, xp)]

    def forward(self, theta: Sequence[Array], x: Array, xp: ModuleType) -> Array:
        a, b, c, d = theta
        return a + b * x + c * x**2 + d * x**3

    def formula(self, theta: np.ndarray) -> str:
        a, b, c, d = (float(t) for t in theta)
        return f"y = {a} + {b} x + {c} x^2 + {d} x^3"


@dataclasses.dataclass(frozen=True)
class Sequential(Polynomial3):
    """The same cubic as the seed's Sequential(Linear(3, 1), Flatten(0, 1)) over (x, x^2, x^3):
    bias = a, weight = [b, c, d]."""

    def torch_module(self, initial: torch.Tensor, seed: int) -> torch.nn.Module:
        import torch

        linear = torch.nn.Linear(3, 1, device=initial.device, dtype=initial.dtype)
        with torch.no_grad():
            linear.bias.copy_(initial[:1])
            linear.weight.copy_(initial[1:].reshape(1, 3))
        return torch.nn.Sequential(linear, torch.nn.Flatten(0, 1))

    def torch_inputs(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        # The seed's input: (x, x^2, x^3) as columns, shape (n, 3).
        return x.unsqueeze(-1).pow(torch.tensor([1, 2, 3], device=x.device))

    def theta_of(self, module: torch.nn.Module) -> torch.Tensor:
        import torch

        state = module.state_dict()
        return torch.cat([state["0.bias"], state["0.weight"].flatten()])

    def parameters(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        theta = np.asarray(theta, dtype=np.float64)
        return {"0.weight": theta[1:].reshape(1, 3), "0.bias": theta[:1]}


@dataclasses.dataclass(frozen=True)
class Dynamic(LinearModel):
    """The tutorial's DynamicNet: the cubic plus 0 to 2 more terms e x^4, e x^5 chosen at random
    on every forward pass, reusing one parameter e."""

    names: ClassVar[tuple[str, ...]] = ("a", "b", "c", "d", "e")
    graphs: ClassVar[tuple[str, ...]] = (
        "fitted cubic, no more terms",
        "+ e x^4",
        "+ e x^4 + e x^5",
    )

    def rows(self, x: Array, xp: ModuleType) -> list[list[Array]]:
        cubic, x4 = _cubic(x, xp), x**4
        extra = [xp.zeros_like(x), x4, x4 + x**5]  # 0, 1 or 2 more terms sharing e
        return [[*cubic, e] for e in extra]

    def formula(self, theta: np.ndarray) -> str:
        a, b, c, d, e = (float(t) for t in theta)  # the tutorial's own notation for the terms
        return f"y = {a} + {b} x + {c} x^2 + {d} x^3 + {e} x^4 ? + {e} x^5 ?"

    def by_hand(self, x: Array, y: Array, xp: ModuleType, seed: int) -> ByHand:
        # Which graph each forward pass takes, drawn as the tutorial draws it; a parameter its
        # graph leaves out (e) gets no gradient and no update, as in torch.optim.
        used = [xp.asarray([True] * 4 + [g > 0], device=x.device) for g in range(3)]
        return Linear(self.features(x, xp), y, random.Random(seed).randint, used)

    def torch_module(self, initial: torch.Tensor, seed: int) -> torch.nn.Module:
        from polyexp.parts.torch_modules import Scalars

        draw = random.Random(seed).randint  # the tutorial's random.randint, seeded

        def forward(theta: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            a, b, c, d, e = theta
            y = a + b * x + c * x**2 + d * x**3
            for exp in range(4, draw(4, 6)):
                y = y + e * x**exp
            return y

        return Scalars(self.names, initial, forward)


# --- legendre3: not linear in its parameters ----------------------------------------------------


def p3(z: Array) -> Array:
    """The Legendre polynomial P3(z) = (5 z^3 - 3 z) / 2."""
    return 0.5 * (5 * z**3 - 3 * z)


def dp3(z: Array) -> Array:
    """P3'(z) = 3 (5 z^2 - 1) / 2."""
    return 1.5 * (5 * z**2 - 1)


@dataclasses.dataclass(frozen=True)
class Legendre3(Model):
    """y = a + b P3(c + d x); no closed-form optimum."""

    names: ClassVar[tuple[str, ...]] = ("a", "b", "c", "d")
    graphs: ClassVar[tuple[str, ...]] = ("fitted a + b P3(c + d x)",)

    def forward(self, theta: Sequence[Array], x: Array, xp: ModuleType) -> Array:
        a, b, c, d = theta
        return a + b * p3(c + d * x)

    def formula(self, theta: np.ndarray) -> str:
        a, b, c, d = (float(t) for t in theta)
        return f"y = {a} + {b} * P3({c} + {d} x)"

    def by_hand(self, x: Array, y: Array, xp: ModuleType, seed: int) -> ByHand:
        return LegendreByHand(x, y, xp)

    def torch_module(self, initial: torch.Tensor, seed: int) -> torch.nn.Module:
        from polyexp.parts.torch_modules import LegendreP3, Scalars

        def forward(theta: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            a, b, c, d = theta
            return a + b * LegendreP3.apply(c + d * x)

        return Scalars(self.names, initial, forward)


class LegendreByHand:
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
