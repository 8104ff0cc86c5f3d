"""The by-hand backends' gradients equal autograd's on the seed's own loss formula (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import polyexp
from polyexp import backends, config
from polyexp.data import make_problem

INIT = [0.3, -0.5, 0.2, 0.1]


def _autograd_gradient(x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """d/d(a,b,c,d) of sum((a + b x + c x^2 + d x^3 - y)^2), as the seed's autograd program."""
    a, b, c, d = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in theta)
    xt, yt = torch.tensor(x), torch.tensor(y)
    loss = (a + b * xt + c * xt**2 + d * xt**3 - yt).pow(2).sum()
    loss.backward()
    return np.array([p.grad.item() for p in (a, b, c, d)])


@pytest.mark.parametrize("model", ["polynomial3", "sequential"])
@pytest.mark.parametrize("backend", ["numpy", "torch", "autograd"])
def test_one_manual_sgd_step_moves_by_lr_times_the_autograd_gradient(
    backend: str, model: str
) -> None:
    lr = 1e-6
    cfg = polyexp.compose(
        [
            f"backend={backend}",
            f"model={model}",
            "optimizer=manual_sgd",
            f"optimizer.lr={lr}",
            "dtype=float64",
            "init=fixed",
            f"init.coefficients={INIT}",
        ]
    )
    s = config.check(cfg)
    problem = make_problem(s)
    fit = backends.build(s, problem)
    before = fit.coefficients()
    fit.step()
    measured = (before - fit.coefficients()) / lr
    expected = _autograd_gradient(problem.x, problem.y, np.array(INIT))
    np.testing.assert_allclose(measured, expected, rtol=1e-6)
    assert not np.allclose(measured, 0.5 * expected, rtol=1e-3)  # a halved gradient would fail
