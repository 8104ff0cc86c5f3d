"""The hand-written update rules equal torch.optim's, step for step, in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polyexp.parts import optimizers

SGD_CASES = [
    {"lr": 1e-2},
    {"lr": 1e-2, "momentum": 0.9},
    {"lr": 1e-2, "momentum": 0.9, "dampening": 0.3},
    {"lr": 1e-2, "momentum": 0.9, "nesterov": True},
    {"lr": 1e-2, "momentum": 0.5, "weight_decay": 0.1},
]
ADAM_CASES = [
    {"lr": 1e-2},
    {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6},
    {"lr": 1e-2, "weight_decay": 0.1},
    {"lr": 1e-2, "amsgrad": True},
    {"lr": 1e-2, "betas": (0.5, 0.9), "amsgrad": True, "weight_decay": 0.01},
]
RMSPROP_CASES = [
    {"lr": 1e-2},
    {"lr": 1e-3, "alpha": 0.9, "eps": 1e-6},
    {"lr": 1e-2, "centered": True},
    {"lr": 1e-2, "momentum": 0.9},
    {"lr": 1e-2, "momentum": 0.5, "centered": True, "weight_decay": 0.1},
]


def _grad(theta: np.ndarray, matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Gradient of a small least-squares problem, so the trajectory depends on the rule."""
    return 2 * matrix.T @ (matrix @ theta - target)


CLASSES = {"sgd": optimizers.SGD, "rmsprop": optimizers.RMSprop, "adam": optimizers.Adam}


def _trajectories(
    name: str, hyper: dict, xp_name: str, steps: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """The option's own rule against its torch.optim counterpart (what the autograd backend
    steps with), on the same gradients."""
    rng = np.random.default_rng(0)
    matrix, target, theta0 = rng.normal(size=(6, 4)), rng.normal(size=6), rng.normal(size=4)
    option = CLASSES[name](name=name, **hyper)
    assert option.torch_class is not None

    reference = torch.tensor(theta0, requires_grad=True)
    torch_step = option.torch_step([reference])

    xp = np if xp_name == "numpy" else torch
    theta = theta0.copy() if xp is np else torch.tensor(theta0)
    ours = option.rule(xp)
    state = ours.init(theta)
    for _ in range(steps):
        reference.grad = torch.tensor(_grad(reference.detach().numpy(), matrix, target))
        torch_step()
        grad = _grad(np.asarray(theta), matrix, target)
        theta, state = ours.update(theta, grad if xp is np else torch.tensor(grad), state)
    return np.asarray(theta), reference.detach().numpy()


@pytest.mark.parametrize("xp_name", ["numpy", "torch"])
@pytest.mark.parametrize(
    ("name", "hyper"),
    [("sgd", h) for h in SGD_CASES]
    + [("rmsprop", h) for h in RMSPROP_CASES]
    + [("adam", h) for h in ADAM_CASES],
    ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_update_rule_matches_torch_optim_in_float64(name: str, hyper: dict, xp_name: str) -> None:
    ours, reference = _trajectories(name, hyper, xp_name)
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-14)


def test_a_wrong_rule_is_caught() -> None:
    """The comparison above can fail: momentum left out differs from torch's momentum SGD."""
    ours, _ = _trajectories("sgd", {"lr": 1e-2}, "numpy")
    _, reference = _trajectories("sgd", {"lr": 1e-2, "momentum": 0.9}, "numpy")
    assert not np.allclose(ours, reference, rtol=1e-6)


def test_manual_sgd_is_p_minus_lr_grad() -> None:
    rule = optimizers.ManualSGD(name="manual_sgd", lr=0.5).rule(np)
    param, state = rule.update(np.array([1.0, 2.0]), np.array([4.0, -2.0]), rule.init(None))
    np.testing.assert_array_equal(param, [-1.0, 3.0])
    assert state is None


def test_manual_sgd_on_autograd_is_the_seeds_in_place_step() -> None:
    """Without a torch.optim class the autograd backend applies the rule to each Parameter."""
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    unused = torch.nn.Parameter(torch.tensor([5.0], dtype=torch.float64))  # no grad: left alone
    step = optimizers.ManualSGD(name="manual_sgd", lr=0.5).torch_step([param, unused])
    param.grad = torch.tensor([4.0, -2.0], dtype=torch.float64)
    step()
    assert param.tolist() == [-1.0, 3.0] and unused.tolist() == [5.0]


def test_adams_bias_correction_is_caught() -> None:
    """Adam's first steps are its bias-corrected ones: a rule without them would differ."""
    ours, reference = _trajectories("adam", {"lr": 1e-2}, "numpy", steps=3)
    assert not np.allclose(ours, reference - 1e-4, rtol=1e-9)
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-14)
