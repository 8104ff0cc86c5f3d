"""The problem: y = sin(x) on evenly spaced points, and where training starts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polyexp import models
from polyexp.config import Settings


@dataclass(frozen=True)
class Problem:
    """Data and initial coefficients, in float64 NumPy; each backend casts them to its dtype."""

    x: np.ndarray
    y: np.ndarray
    initial: np.ndarray  # the model's parameters to start from, e.g. (a, b, c, d)


def make_problem(s: Settings) -> Problem:
    x = np.linspace(s.low, s.high, s.n)
    if s.coefficients is not None:
        initial = np.array(s.coefficients, dtype=np.float64)
    else:
        # NumPy's generator, not torch's, so every backend and model starts from the same numbers.
        # The first four are the same for every model: dynamic's e is drawn after a, b, c, d.
        initial = np.random.default_rng(s.seed).standard_normal(len(models.get(s.model).names))
    return Problem(x=x, y=np.sin(x), initial=initial)
