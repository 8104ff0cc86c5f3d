"""hydra/launcher=batched: a sweep's numeric variants trained as one batch, every job recorded
as the basic launcher records it, with the same numbers."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, RunMode
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict

import polyexp
from conftest import ARTIFACTS, polyexp_cli, runs
from hydra_plugins.polyexp_batched_launcher import batched_launcher
from polyexp import config
from polyexp.record import tracking
from polyexp.sweeps import batched, sweep
from polyexp.training import train

# Hyper-parameters that exercise every term of each rule, three runs a batch.
MEMBERS = {
    "manual_sgd": [{"optimizer.lr": v} for v in (1e-6, 2e-6, 3e-6)],
    "sgd": [
        {"optimizer.lr": 1e-6, "optimizer.momentum": 0.9, "optimizer.weight_decay": 0.0},
        {"optimizer.lr": 5e-7, "optimizer.momentum": 0.5, "optimizer.weight_decay": 0.1},
        {"optimizer.lr": 2e-6, "optimizer.momentum": 0.7, "optimizer.dampening": 0.2},
    ],
    "adam": [
        # Adam, like RMSprop below, moves each coefficient by about lr a step: these stay clear
        # of the optimum's a = c = 0 in 150 steps.
        {"optimizer.lr": 5e-4, "optimizer.betas": "[0.9,0.999]"},
        {"optimizer.lr": 2e-4, "optimizer.betas": "[0.8,0.99]", "optimizer.weight_decay": 0.1},
        {"optimizer.lr": 1e-3, "optimizer.betas": "[0.5,0.9]", "optimizer.eps": 1e-6},
    ],
    "rmsprop": [
        {"optimizer.lr": 1e-3, "optimizer.momentum": 0.5},
        {"optimizer.lr": 5e-4, "optimizer.alpha": 0.9, "optimizer.momentum": 0.0},
        {"optimizer.lr": 1e-3, "optimizer.eps": 1e-6, "optimizer.weight_decay": 0.01},
    ],
}
# RMSprop normalises a gradient of rounding noise to a step of about lr: once a coefficient sits
# at the optimum (a and c, here 0) two float64 runs that differ in the last bit drift apart by
# ~lr, whichever launcher or backend (numpy vs torch alone: 1e-3 after 2000 steps at lr 1e-3).
# So the runs here stop before that (150 steps), as tests/test_reproducibility.py does.


def _overrides(backend: str, optimizer: str, model: str, i: int, extra: dict) -> list[str]:
    return [
        f"backend={backend}",
        f"optimizer={optimizer}",
        f"model={model}",
        "dtype=float64",
        "steps=150",
        "log_every=0",
        f"seed={i}",
        *(f"{k}={v}" for k, v in extra.items()),
    ]


def _alone(s: config.Settings) -> tuple[np.ndarray, np.ndarray, int | None]:
    done = train(s)
    return done.losses, done.theta, done.diverged_at


def test_the_plugin_is_found_by_hydras_plugin_scan() -> None:
    names = {c.__name__ for c in Plugins.instance().discover(Launcher)}
    assert "BatchedLauncher" in names


@pytest.mark.parametrize("backend", ["numpy", "torch", "autograd"])
@pytest.mark.parametrize("optimizer", sorted(MEMBERS))
@pytest.mark.parametrize("model", ["polynomial3", "sequential"])
def test_a_batch_trains_each_run_as_it_trains_alone(
    backend: str, optimizer: str, model: str
) -> None:
    cfgs = [
        polyexp.compose(_overrides(backend, optimizer, model, i, extra))
        for i, extra in enumerate(MEMBERS[optimizer])
    ]
    settings = [config.check(c) for c in cfgs]
    assert len({batched.group_key(c, s) for c, s in zip(cfgs, settings, strict=True)}) == 1
    for s, together in zip(settings, batched.train(settings), strict=True):
        losses, theta, diverged = _alone(s)
        assert together.diverged_at is diverged is None
        np.testing.assert_allclose(together.theta, theta, rtol=0, atol=1e-9)
        np.testing.assert_allclose(together.losses, losses, rtol=1e-9)


def test_a_diverging_run_neither_stops_nor_poisons_the_others() -> None:
    lrs = (1e-6, 1e-3, 2e-6)
    settings = [
        config.check(polyexp.compose(["backend=numpy", "dtype=float64", f"optimizer.lr={lr}",
                                      "optimizer=manual_sgd", "steps=400", "log_every=10"]))
        for lr in lrs
    ]  # fmt: skip
    outcomes = batched.train(settings)
    for s, together in zip(settings, outcomes, strict=True):
        losses, theta, diverged = _alone(s)
        assert together.diverged_at == diverged
        assert len(together.losses) == len(losses) and np.isfinite(together.losses).all()
        np.testing.assert_allclose(together.losses, losses, rtol=1e-9)
        np.testing.assert_array_equal(np.isfinite(together.theta), np.isfinite(theta))
    assert outcomes[1].diverged_at is not None
    assert outcomes[0].diverged_at is outcomes[2].diverged_at is None
    assert len(outcomes[0].losses) == 400


def test_jobs_group_by_everything_but_numbers() -> None:
    def key(*overrides: str) -> str | None:
        cfg = polyexp.compose(["backend=numpy", *overrides])
        return batched.group_key(cfg, config.check(cfg))

    base = key()
    numbers = ("optimizer.lr=2e-6", "seed=3", "init=fixed", "init.coefficients=[0,1,0,0]")
    assert key(*numbers[:2]) == base
    assert key(*numbers[2:]) == key("init=fixed", "init.coefficients=[1,2,3,4]", "seed=5")
    assert key("optimizer.momentum=0.9") == key("optimizer.momentum=0.5", "optimizer.lr=1e-7")
    assert key("optimizer=rmsprop") == key("optimizer=rmsprop", "optimizer.momentum=0.9")
    assert key("resume=false") == base  # decides skipping, not the computation
    for other in (
        "backend=torch",
        "model=sequential",
        "optimizer=rmsprop",
        "steps=10",
        "dtype=float64",
        "data.n=100",
        "optimizer.momentum=0.9",  # SGD with momentum is another rule than without
        "log_every=7",  # where a diverging run's own loop would stop
    ):
        assert key(other) != base, other
    cfg = polyexp.compose(["backend=numpy"])
    legendre3 = config.check(polyexp.compose(["model=legendre3"])).model
    other_model = dataclasses.replace(config.check(cfg), model=legendre3)
    assert batched.group_key(cfg, other_model) is None  # not known to be the linear cubic


PLUGIN = Path(batched_launcher.__file__).parent


@contextlib.contextmanager
def _sweep_in_process(sweep_dir: Path) -> Iterator[tuple[Any, DictConfig, HydraContext]]:
    """Hydra's own config loader, a sweep's master config (hydra/launcher=batched, its folder
    `sweep_dir`) and a context with no callbacks, as Hydra hands them to a sweeper."""
    with initialize_config_module("polyexp.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            "config", ["hydra/launcher=batched", f"hydra.sweep.dir={sweep_dir}"], RunMode.MULTIRUN
        )
        no_callbacks = Callback()  # Hydra's own base class: on_job_start/end do nothing
        yield loader, master, HydraContext(config_loader=loader, callbacks=no_callbacks)  # type: ignore


def test_each_job_is_composed_by_hydra_and_runs_hydras_task_function(tmp_path: Path) -> None:
    jobs = [
        ["init=fixed", "optimizer=sgd", f"optimizer.lr={lr}", f"init.coefficients=[{s},1,2,3]"]
        for lr in (1e-6, 2e-6)
        for s in (0, 1)
    ] + [["optimizer=rmsprop", "optimizer.lr=0.1", "seed=3"]]
    with _sweep_in_process(tmp_path / "sweep") as (loader, master, context):
        seen: list[DictConfig] = []
        launcher = batched_launcher.BatchedLauncher()
        launcher.setup(hydra_context=context, task_function=seen.append, config=master)
        # No sweep parent here, so nothing is batched: every job runs the task Hydra gave.
        returns = launcher.launch(jobs, initial_job_idx=0)
        assert [r.status for r in returns] == [JobStatus.COMPLETED] * len(jobs)
        assert len(seen) == len(jobs)
        for idx, (job, ret, task_cfg) in enumerate(zip(jobs, returns, seen, strict=True)):
            cfg = loader.load_sweep_config(master, job)
            with open_dict(cfg):
                del cfg["hydra"]
            assert OmegaConf.to_yaml(task_cfg) == OmegaConf.to_yaml(cfg)
            assert ret.overrides == job and ret.hydra_cfg.hydra.job.num == idx
            hydra = tmp_path / "sweep" / str(idx) / ".hydra"
            assert list(OmegaConf.load(hydra / "overrides.yaml")) == job


def test_the_plugin_imports_nothing_from_hydras_internals() -> None:
    # hydra._internal is Hydra's own, free to change in any release: a plugin uses the public API.
    for path in PLUGIN.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith("hydra._internal"), f"{path.name} imports {name}"


def test_the_launcher_replaces_nothing_of_hydras(tmp_path: Path) -> None:
    # Hydra's config loader and context hold the very attributes they held before the
    # launcher's setup and launch (a function assigned on the loader would show here).
    with _sweep_in_process(tmp_path / "sweep") as (loader, master, context):
        before = {"loader": dict(vars(loader)), "context": dict(vars(context))}
        launcher = batched_launcher.BatchedLauncher()
        launcher.setup(hydra_context=context, task_function=lambda cfg: None, config=master)
        assert "load_sweep_config" not in vars(loader)
        assert {"loader": dict(vars(loader)), "context": dict(vars(context))} == before
        launcher.launch([["seed=1"], ["seed=2"]], initial_job_idx=0)
        assert {"loader": dict(vars(loader)), "context": dict(vars(context))} == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["torch", "autograd"])
def test_a_batch_on_cuda_matches_the_cpu(backend: str) -> None:
    def outcomes(device: str) -> list:
        settings = [
            config.check(polyexp.compose([f"backend={backend}", f"device={device}", f"seed={i}",
                                          "dtype=float64", "optimizer=rmsprop", "steps=300"]))
            for i in range(4)
        ]  # fmt: skip
        return batched.train(settings)

    for gpu, cpu in zip(outcomes("cuda"), outcomes("cpu"), strict=True):
        assert gpu.device.startswith("cuda")
        np.testing.assert_allclose(gpu.theta, cpu.theta, rtol=0, atol=1e-9)


# --- end to end: a batched sweep through the command line ------------------------------------

SWEEP = (
    "backend=numpy,torch,autograd",
    "optimizer=manual_sgd,sgd,rmsprop",
    "seed=0,1",
    "dtype=float64",
    "steps=200",
    "log_every=0",
)


def _children(client: MlflowClient) -> dict[tuple[str, str, str], object]:
    found = [r for r in runs(client) if sweep.PARENT_TAG in r.data.tags]
    parents = {r.data.tags[sweep.PARENT_TAG] for r in found}
    assert len(parents) == 1
    return {
        (r.data.tags["backend"], r.data.tags["optimizer"], r.data.params["seed"]): r for r in found
    }


@pytest.mark.slow
def test_a_batched_sweep_records_what_the_basic_launcher_records(
    store: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The basic launcher's record of two of the jobs: what every batched job must look like.
    # (The numbers of all 18 are checked against runs trained alone, in this process.)
    one = ("backend=numpy,autograd", "optimizer=sgd", "seed=1", *SWEEP[3:])
    done = polyexp_cli("-m", *one, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    basic = _children(store)
    assert len(basic) == 2

    # The whole sweep, batched, into an experiment of its own (else resume would skip those).
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", os.environ["MLFLOW_EXPERIMENT_NAME"] + "-b")
    (tmp_path / "b").mkdir()
    done = polyexp_cli("-m", "hydra/launcher=batched", *SWEEP, cwd=tmp_path / "b")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Result:") == 18
    assert "trained 2 jobs as one batch" in done.stdout + done.stderr
    ours = _children(store)
    assert len(ours) == 18
    (sweep_dir,) = (tmp_path / "b" / "outputs" / "multirun").glob("*/*")

    for (backend, optimizer, seed), run in ours.items():
        overrides = [f"backend={backend}", f"optimizer={optimizer}", f"seed={seed}", *SWEEP[3:]]
        cfg = polyexp.compose(overrides)
        losses, theta, diverged = _alone(config.check(cfg))
        assert diverged is None
        for i, name in enumerate(("a", "b", "c", "d")):
            assert run.data.metrics[name] == pytest.approx(theta[i], abs=1e-9)
        np.testing.assert_allclose(tracking.loss_history(store, run.info.run_id), losses, rtol=1e-9)
        assert run.data.params == {k: str(v) for k, v in _params(cfg).items()}
        assert run.data.tags["config_hash"] == config.fingerprint(cfg)
        assert run.info.status == "FINISHED"
        assert run.data.tags["sweep.batch_size"] == "2"
        assert {a.path for a in store.list_artifacts(run.info.run_id)} == ARTIFACTS
        # Each job has its own Hydra folder with its own overrides, as with the basic launcher.
        hydra = sweep_dir / run.data.tags["sweep.job"] / ".hydra"
        assert {p.name for p in hydra.iterdir()} >= {"config.yaml", "hydra.yaml", "overrides.yaml"}
        assert f"seed={seed}" in OmegaConf.load(hydra / "overrides.yaml")
        assert OmegaConf.load(hydra / "config.yaml").backend.name == backend

        twin = basic.get((backend, optimizer, seed))
        if twin is not None:
            assert run.data.params == twin.data.params
            assert run.data.tags["config_hash"] == twin.data.tags["config_hash"]
            # threads.* name the pools loaded when a run is recorded: in a batched sweep torch
            # may be loaded already when a numpy job is recorded.
            tags = {k for k in run.data.tags if not k.startswith("threads.")}
            assert tags - {k for k in twin.data.tags} == {"sweep.batch_size"}
            assert {k for k in twin.data.tags if not k.startswith("threads.")} <= tags
            for name in ("a", "b", "c", "d"):
                assert run.data.metrics[name] == pytest.approx(twin.data.metrics[name], abs=1e-9)

    # Again: every job is skipped, and nothing new is recorded.
    again = polyexp_cli("-m", "hydra/launcher=batched", *SWEEP, cwd=tmp_path / "b")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped: the same config already FINISHED") == 18
    assert len([r for r in runs(store) if sweep.PARENT_TAG in r.data.tags]) == 18


def _params(cfg: object) -> dict:
    return config.flatten(OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.slow
def test_a_batched_sweep_with_a_refused_and_a_diverging_job_still_completes(
    store: MlflowClient, tmp_path: Path
) -> None:
    done = polyexp_cli(
        "-m",
        "hydra/launcher=batched",
        "backend=numpy",
        "model=polynomial3,sequential",  # two groups
        "optimizer=manual_sgd",
        "optimizer.lr=-1,1e-3,1e-6",  # refused, diverges, finishes
        "steps=300",
        "log_every=10",
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "optimizer.lr=-1: expected a number > 0" in done.stderr
    found = runs(store)
    (parent,) = [r for r in found if r.data.tags.get("sweep") == "parent"]
    children = [r for r in found if sweep.PARENT_TAG in r.data.tags]
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["jobs"] == 6
    assert parent.data.metrics["jobs_failed"] == 2
    assert parent.data.metrics["jobs_diverged"] == 2
    assert {r.data.tags["sweep.batch_size"] for r in children} == {"2"}
    for run in children:
        assert run.info.status == "FINISHED"
        diverged = run.data.params["optimizer.lr"] == "0.001"
        assert (run.data.tags.get("diverged") == "true") is diverged
        if diverged:
            step = int(run.data.tags["diverged_step"])
            assert len(store.get_metric_history(run.info.run_id, "loss")) == step
