"""Same config and seed, same numbers: bit for bit, run after run and process after process.

(That every backend and model follows one trajectory in float64 is test_backends'
test_every_backend_follows_one_trajectory_in_float64; that they start from the same
coefficients is its test_normal_init_is_seeded_and_the_same_on_every_backend_and_model.)
"""

from __future__ import annotations

import itertools
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import polyexp
from conftest import polyexp_cli, runs
from polyexp import config, training
from polyexp.record.tracking import loss_history

CONFIG = ["model=sequential", "optimizer=rmsprop", "optimizer.lr=1e-3", "steps=300", "log_every=0"]


def _train(s: config.Settings) -> tuple[np.ndarray, np.ndarray]:
    done = training.train(replace(s, log_every=0))
    return done.losses, done.theta


def _settings(overrides: list[str]) -> config.Settings:
    return config.check(polyexp.compose([*overrides, "steps=100"]))


@pytest.mark.parametrize("backend", config.options("backend"))
def test_every_model_optimizer_and_dtype_repeats_bit_for_bit(backend: str) -> None:
    base = _settings([f"backend={backend}", "optimizer=rmsprop"])  # composed once: Hydra is slow
    models = [_settings([f"model={m}"]).model for m in config.options("model")]
    optimizers = [_settings([f"optimizer={o}"]).optimizer for o in config.options("optimizer")]
    for model, optimizer, dtype in itertools.product(models, optimizers, config.DTYPES):
        s = replace(base, model=model, optimizer=optimizer, dtype=dtype)
        (losses, coefficients), (again, coefficients_again) = _train(s), _train(s)
        assert losses.tobytes() == again.tobytes(), s  # bit for bit, a diverged NaN too
        assert coefficients.tobytes() == coefficients_again.tobytes(), s
    other_seed, _ = _train(replace(s, seed=s.seed + 1))
    assert not np.array_equal(losses, other_seed)  # equality above is not vacuous


@pytest.mark.parametrize("backend", config.options("backend"))
def test_the_same_run_twice_in_one_process_records_the_same_numbers(
    backend: str, store: MlflowClient
) -> None:
    first = polyexp.run([f"backend={backend}", *CONFIG])
    second = polyexp.run([f"backend={backend}", *CONFIG])
    assert first.run_id != second.run_id
    assert np.array_equal(first.losses, second.losses)
    assert first.coefficients == second.coefficients and first.final_loss == second.final_loss
    assert np.array_equal(loss_history(store, first.run_id), loss_history(store, second.run_id))


@pytest.mark.slow
def test_another_process_repeats_this_process_bit_for_bit(
    store: MlflowClient, tmp_path: Path
) -> None:
    done = polyexp_cli("-m", "backend=numpy,torch,autograd", *CONFIG, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    there = {r.data.tags["backend"]: r for r in runs(store) if "backend" in r.data.tags}  # children
    assert set(there) == set(config.options("backend"))
    for backend, run in there.items():
        here = polyexp.run([f"backend={backend}", *CONFIG])
        assert np.array_equal(loss_history(store, run.info.run_id), here.losses), backend
        assert {k: run.data.metrics[k] for k in "abcd"} == here.coefficients, backend


@pytest.mark.parametrize(("device", "deterministic"), [("cpu", False), ("auto", True)])
def test_a_run_that_may_use_cuda_trains_in_deterministic_mode_and_restores_it_after(
    device: str, deterministic: bool, store: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the CPU deterministic mode changes no number (measured), so only cuda turns it on."""
    seen: list[bool] = []

    def spy(*args: object, **kwargs: object) -> None:
        seen.append(torch.are_deterministic_algorithms_enabled())
        loop(*args, **kwargs)  # type: ignore[arg-type]

    loop = training.loop
    monkeypatch.setattr(training, "loop", spy)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # remembers what was there, for teardown
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    assert not torch.are_deterministic_algorithms_enabled()
    polyexp.run(["backend=autograd", f"device={device}", "steps=5", "log_every=0"])
    assert seen == [deterministic]
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is back
    assert (os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8") == deterministic


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["torch", "autograd"])
def test_cuda_repeats_bit_for_bit(backend: str) -> None:
    for model in config.options("model"):
        s = _settings([f"backend={backend}", f"model={model}", "device=cuda", "optimizer=rmsprop"])
        (losses, coefficients), (again, coefficients_again) = _train(s), _train(s)
        assert np.array_equal(losses, again) and np.array_equal(coefficients, coefficients_again)
