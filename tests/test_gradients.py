"""The by-hand backends' gradients equal autograd's on each model's own formula (float64), and
legendre3's custom autograd Function passes torch's gradcheck."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import polyexp
from polyexp import config
from polyexp.parts.torch_modules import LegendreP3

INIT = {"dynamic": [0.3, -0.5, 0.2, 0.1, 0.05]}  # every other model: the first four


def _formula(model: str, x: torch.Tensor, p: list[torch.Tensor], seed: int) -> torch.Tensor:
    """The model's prediction written out plainly (P3 as a polynomial, not our Function)."""
    if model == "legendre3":
        z = p[2] + p[3] * x
        return p[0] + p[1] * 0.5 * (5 * z**3 - 3 * z)
    y = p[0] + p[1] * x + p[2] * x**2 + p[3] * x**3
    if model == "dynamic":  # the first forward pass's draw, as the tutorial draws it
        for exp in range(4, random.Random(seed).randint(4, 6)):
            y = y + p[4] * x**exp
    return y


def _autograd_gradient(model: str, x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    theta = INIT.get(model, INIT["dynamic"][:4])
    p = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in theta]
    loss = (_formula(model, torch.tensor(x), p, seed) - torch.tensor(y)).pow(2).sum()
    loss.backward()
    return np.array([0.0 if q.grad is None else q.grad.item() for q in p])  # None: unused


@pytest.mark.parametrize("model", config.options("model"))
@pytest.mark.parametrize("backend", config.options("backend"))
def test_one_manual_sgd_step_moves_by_lr_times_the_autograd_gradient(
    backend: str, model: str
) -> None:
    lr = 1e-9
    # dynamic draws its graph at random: seeds 1, 0 and 5 draw 0, 1 and 2 extra terms.
    seeds = [1, 0, 5] if model == "dynamic" else [0]
    assert model != "dynamic" or {random.Random(s).randint(4, 6) for s in seeds} == {4, 5, 6}
    for seed in seeds:
        cfg = polyexp.compose(
            [
                f"backend={backend}",
                f"model={model}",
                "optimizer=manual_sgd",
                f"optimizer.lr={lr}",
                "dtype=float64",
                f"seed={seed}",
                "init=fixed",
                f"init.coefficients={INIT.get(model, INIT['dynamic'][:4])}",
            ]
        )
        s = config.check(cfg)
        problem = s.problem()
        fit = s.backend.build(s, problem)
        before = fit.coefficients()
        fit.step()
        measured = (before - fit.coefficients()) / lr
        expected = _autograd_gradient(model, problem.x, problem.y, seed)
        np.testing.assert_allclose(measured, expected, rtol=1e-6, atol=1e-6, err_msg=str(seed))


def test_legendre_p3_function_passes_gradcheck() -> None:
    z = torch.linspace(-2, 2, 25, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(LegendreP3.apply, (z,))


def test_legendre_p3_backward_is_its_own_not_autograds() -> None:
    """The Function's backward runs (not autograd through its forward): a wrong derivative
    would pass through unnoticed otherwise."""
    z = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    LegendreP3.apply(z).backward()
    assert z.grad is not None and z.grad.item() == pytest.approx(1.5 * (5 * 0.25 - 1))
    with torch.no_grad():
        assert LegendreP3.apply(torch.tensor([0.5])).item() == pytest.approx(0.5 * (0.625 - 1.5))
