"""The cubic y = a + b x + c x^2 + d x^3 under its two parameterisations.

`polynomial3` holds four scalars a, b, c, d; `sequential` holds Linear(3, 1)'s bias = a and
weight = [b, c, d]. On the by-hand backends both are the same math over the features
(1, x, x^2, x^3), so they differ only in how the trained parameters are named; on the
autograd backend they are real nn.Modules (see polyexp.backends.autograd).
"""

from __future__ import annotations

import numpy as np

COEFFICIENTS = ("a", "b", "c", "d")


def parameters(model: str, coefficients: np.ndarray) -> dict[str, np.ndarray]:
    """The trained parameters as the model's own state_dict names them."""
    theta = np.asarray(coefficients, dtype=np.float64)
    if model == "sequential":
        return {"0.weight": theta[1:].reshape(1, 3), "0.bias": theta[:1]}
    return {name: np.asarray(value) for name, value in zip(COEFFICIENTS, theta, strict=True)}


def features(x: np.ndarray) -> np.ndarray:
    """The cubic's features (1, x, x^2, x^3) as rows, shape (4, n): y = coefficients @ features."""
    return np.stack([np.ones_like(x), x, x**2, x**3])


def predict(coefficients: np.ndarray, x: np.ndarray) -> np.ndarray:
    a, b, c, d = (float(v) for v in coefficients)
    return a + b * x + c * x**2 + d * x**3


def formula(coefficients: np.ndarray) -> str:
    a, b, c, d = (float(v) for v in coefficients)
    return f"y = {a} + {b} x + {c} x^2 + {d} x^3"
