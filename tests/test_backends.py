"""Every model x optimizer x backend trains, and in float64 they all follow one trajectory."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import polyexp
from conftest import build_fit, settings, trained
from polyexp import config

LR = {"manual_sgd": 1e-6, "sgd": 1e-6, "rmsprop": 1e-3, "adam": 1e-2}
# Where each model trains: legendre3 near the tutorial's start (off its symmetric a = c = 0,
# where RMSprop would scale rounding noise up to whole steps); dynamic's x^5 needs small steps.
TRAINS = {
    "legendre3": (
        {"manual_sgd": 5e-6, "sgd": 1e-6, "rmsprop": 1e-3, "adam": 1e-3},
        ["init=fixed", "init.coefficients=[0.1,-1,0.1,0.3]"],
    ),
    "dynamic": (
        {"manual_sgd": 1e-8, "sgd": 1e-8, "rmsprop": 1e-4, "adam": 1e-4},
        ["init=fixed", "init.coefficients=[0.3,-0.5,0.2,0.1,0.01]"],
    ),
}


def _train(overrides: list[str], steps: int = 200) -> tuple[np.ndarray, np.ndarray]:
    done = trained(*overrides, f"steps={steps}")
    return done.losses, done.theta


@pytest.mark.parametrize("model", config.options("model"))
@pytest.mark.parametrize("optimizer", config.options("optimizer"))
def test_every_backend_follows_one_trajectory_in_float64(optimizer: str, model: str) -> None:
    lrs, start = TRAINS.get(model, (LR, []))
    results = {
        backend: _train(
            [
                f"backend={backend}",
                f"model={model}",
                f"optimizer={optimizer}",
                f"optimizer.lr={lrs[optimizer]}",
                *(["optimizer.momentum=0.9"] if optimizer == "sgd" else []),
                *start,
                "dtype=float64",
                "seed=3",
            ]
        )
        for backend in config.options("backend")
    }
    reference_losses, reference = results["numpy"]
    # It trains (dynamic's loss jumps with the terms drawn each step: compare averages).
    assert reference_losses[-20:].mean() < 0.8 * reference_losses[:20].mean()
    for backend, (losses, coefficients) in results.items():
        np.testing.assert_allclose(coefficients, reference, rtol=0, atol=1e-9, err_msg=backend)
        np.testing.assert_allclose(losses, reference_losses, rtol=1e-9, err_msg=backend)


def test_the_two_cubics_follow_one_trajectory() -> None:
    """polynomial3 and sequential are one cubic under two names, on every backend."""
    for backend in config.options("backend"):
        cubic = [f"backend={backend}", "optimizer=rmsprop", "dtype=float64", "seed=3"]
        losses, coefficients = _train([*cubic, "model=polynomial3"])
        losses_seq, coefficients_seq = _train([*cubic, "model=sequential"])
        np.testing.assert_allclose(coefficients_seq, coefficients, rtol=0, atol=1e-9)
        np.testing.assert_allclose(losses_seq, losses, rtol=1e-9)


@pytest.mark.parametrize("backend", config.options("backend"))
def test_float32_runs_in_float32_and_lands_near_float64(backend: str) -> None:
    losses32, coefficients32 = _train([f"backend={backend}", "dtype=float32"])
    losses64, coefficients64 = _train([f"backend={backend}", "dtype=float64"])
    np.testing.assert_allclose(coefficients32, coefficients64, atol=1e-4)
    assert not np.array_equal(losses32, losses64)  # float32 really ran in float32


def test_normal_init_is_seeded_and_the_same_on_every_backend_and_model() -> None:
    starts = set()
    for backend, model in itertools.product(config.options("backend"), config.options("model")):
        s = config.check(
            polyexp.compose([f"backend={backend}", f"model={model}", "seed=7", "dtype=float64"])
        )
        start = s.backend.build(s, s.problem()).coefficients()
        assert len(start) == len(s.model.names)
        starts.add(tuple(start[:4]))  # dynamic draws e after the same a, b, c, d
    assert len(starts) == 1
    other = config.check(polyexp.compose(["seed=8"]))
    assert tuple(other.problem().initial) not in starts


def test_fixed_init_sets_sequential_bias_and_weight() -> None:
    fit = build_fit("model=sequential", "init=fixed", "init.coefficients=[1,2,3,4]")
    layer = fit.model[0]
    assert layer.bias.tolist() == [1.0] and layer.weight.tolist() == [[2.0, 3.0, 4.0]]
    params = settings("model=sequential").model.parameters(fit.coefficients())
    assert set(params) == set(fit.model.state_dict())


@pytest.mark.parametrize("model", ["polynomial3", "legendre3", "dynamic"])
def test_scalar_parameters_are_named_as_the_modules(model: str) -> None:
    names = settings(f"model={model}").model.names
    start = [1, 2, 3, 4, 5][: len(names)]
    s = settings(f"model={model}", "init=fixed", f"init.coefficients={start}")
    fit = s.backend.build(s, s.problem())
    state = fit.model.state_dict()
    params = s.model.parameters(fit.coefficients())
    assert {k: float(v) for k, v in params.items()} == {k: float(v) for k, v in state.items()}
    assert list(params) == list(names) == [k for k in state]


def test_seed_module_settings_end_near_loss_9_to_12() -> None:
    losses, _ = _train(["model=polynomial3", "optimizer=sgd"], steps=2000)
    assert 8.8 < losses[-1] < 13


def test_rmsprop_default_lr_converges_near_the_optimum() -> None:
    losses, coefficients = _train(["model=sequential", "optimizer=rmsprop"], steps=2000)
    assert losses[-1] < 12
    np.testing.assert_allclose(coefficients, [0, 0.856741, 0, -0.093330], atol=0.05)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("backend", ["torch", "autograd"])
def test_cuda_without_a_gpu_is_refused_before_training(backend: str) -> None:
    s = config.check(polyexp.compose([f"backend={backend}", "device=cuda"]))
    with pytest.raises(
        config.ConfigError, match=r"device='cuda' is not available .*choose from cpu"
    ):
        s.backend.build(s, s.problem())


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_without_apple_silicon_is_refused() -> None:
    s = config.check(polyexp.compose(["backend=torch", "device=mps"]))
    with pytest.raises(config.ConfigError, match="device='mps' is not available"):
        s.backend.build(s, s.problem())


@pytest.mark.parametrize("backend", config.options("backend"))
def test_auto_picks_what_exists(backend: str) -> None:
    s = config.check(polyexp.compose([f"backend={backend}", "device=auto"]))
    device = s.backend.build(s, s.problem()).device
    expected = "cpu" if backend == "numpy" else "cuda:0" if torch.cuda.is_available() else "cpu"
    assert device == expected or (device == "mps" and torch.backends.mps.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model", config.options("model"))
@pytest.mark.parametrize("backend", ["torch", "autograd"])
def test_cuda_trains_like_the_cpu(backend: str, model: str) -> None:
    lrs, start = TRAINS.get(model, (LR, []))
    run = [f"backend={backend}", f"model={model}", f"optimizer.lr={lrs['sgd']}", *start]
    losses_cuda, on_cuda = _train([*run, "device=cuda", "dtype=float64"])
    losses_cpu, on_cpu = _train([*run, "device=cpu", "dtype=float64"])
    np.testing.assert_allclose(on_cuda, on_cpu, atol=1e-9)
    np.testing.assert_allclose(losses_cuda, losses_cpu, rtol=1e-9)


@pytest.mark.parametrize("model", config.options("model"))
@pytest.mark.parametrize("optimizer", config.options("optimizer"))
def test_every_model_trains_with_its_own_defaults_without_diverging(
    model: str, optimizer: str
) -> None:
    """dynamic's x^5 needs a smaller step than the cubic's: the model carries it (model.lr)."""
    done = trained(f"model={model}", f"optimizer={optimizer}", "backend=numpy")
    assert done.diverged_at is None and len(done.losses) == 2000
    assert done.losses[-20:].mean() < 0.5 * done.losses[:20].mean()
