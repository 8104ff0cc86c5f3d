"""The problem: the data (y = sin(x) on evenly spaced points) and where training starts, both
options of their config groups (`data`, `init`)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from polyexp.errors import ConfigError
from polyexp.options import Option, number


@dataclasses.dataclass(frozen=True)
class Problem:
    """Data and initial parameters, in float64 NumPy; each backend casts them to its dtype."""

    x: np.ndarray
    y: np.ndarray
    initial: np.ndarray  # the model's parameters to start from, e.g. (a, b, c, d)


@dataclasses.dataclass(frozen=True)
class Data(Option):
    """`n` evenly spaced points from `low` to `high` (inclusive) and the target there."""

    group: ClassVar[str] = "data"
    n: int = number(2000, low=1)
    low: float = number(-np.pi)
    high: float = number(np.pi)

    def __post_init__(self) -> None:
        if self.high <= self.low:
            raise ConfigError(f"data.high={self.high!r} must be greater than data.low={self.low!r}")

    def target(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        x = np.linspace(self.low, self.high, self.n)
        return x, self.target(x)


@dataclasses.dataclass(frozen=True)
class Sin(Data):
    """y = sin(x), as in the seed."""

    def target(self, x: np.ndarray) -> np.ndarray:
        return np.sin(x)


@dataclasses.dataclass(frozen=True)
class Init(Option):
    """Where training starts: one number per parameter of the model."""

    group: ClassVar[str] = "init"

    def initial(self, names: tuple[str, ...], seed: int, model: str) -> np.ndarray:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Normal(Init):
    """Drawn from a standard normal by NumPy's generator seeded by `seed`: the same numbers on
    every backend, model and device (dynamic's e is drawn after the same a, b, c, d)."""

    def initial(self, names: tuple[str, ...], seed: int, model: str) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(len(names))


@dataclasses.dataclass(frozen=True)
class Fixed(Init):
    """Given numbers, one per parameter (sequential: bias = a, weight = [b, c, d])."""

    coefficients: tuple[float, ...] = ()

    def initial(self, names: tuple[str, ...], seed: int, model: str) -> np.ndarray:
        if len(self.coefficients) != len(names):
            given = "[" + ", ".join(f"{v:g}" for v in self.coefficients) + "]"
            raise ConfigError(
                f"init.coefficients={given}: expected a list of {len(names)} numbers "
                f"[{','.join(names)}] for model={model}"
            )
        return np.array(self.coefficients, dtype=np.float64)
