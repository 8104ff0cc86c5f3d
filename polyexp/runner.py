"""One run, in the order data flows: config -> parts -> loop -> record."""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from polyexp import (
    backends,
    config,
    determinism,
    models,
    plots,
    provenance,
    reference,
    tracking,
)
from polyexp.data import make_problem
from polyexp.loop import History, train


@dataclass(frozen=True)
class Result:
    """What a run returns (and records): final coefficients, the loss at every step, the run id."""

    run_id: str
    coefficients: dict[str, float]  # the model's parameters by name: a, b, c, d (dynamic: e)
    final_loss: float  # summed squared error of the final coefficients, in float64
    losses: np.ndarray  # the loss at every step, computed before that step's update
    train_seconds: float  # wall time of the training loop alone
    optimal_loss: float | None  # the least-squares optimum of the same data (polyexp.reference)
    gap_to_optimum: float | None  # final_loss / optimal_loss - 1; None: no closed-form optimum
    diverged_step: int | None = None  # the first step whose loss was not finite; None: it wasn't


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'lr': 1e-6}} -> {'optimizer.lr': 1e-6}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return {k.removesuffix("."): v for k, v in flat.items()}


def run_name(s: config.Settings, overrides: Sequence[str]) -> str:
    """The four choices, then any values set on the command line: readable in a list of runs."""
    choices = "-".join((s.model, s.optimizer, s.backend, s.device))
    values = [
        o
        for o in overrides
        if "." in o.split("=")[0] or o.split("=")[0] in ("seed", "steps", "dtype")
    ]
    return " ".join([choices, *values])


@dataclass(frozen=True)
class Trained:
    """What training leaves for the record: the finite losses, the first step whose loss was not
    finite (None: none was), the final coefficients and the loop's wall time."""

    losses: np.ndarray
    diverged_at: int | None
    theta: np.ndarray  # the model's parameters, e.g. (a, b, c, d), as float64
    train_seconds: float  # for a batch: its loop's wall time shared out among its runs
    device: str  # where it trained, e.g. "cpu" or "cuda:0"
    batch_size: int = 1  # how many runs trained together (polyexp.batched)


def run(
    cfg: DictConfig,
    overrides: Sequence[str] = (),
    tags: Mapping[str, str] | None = None,
    trained: Trained | None = None,
) -> Result:
    """Checks `cfg`, trains, and records the run in MLflow; returns what it recorded.

    `tags` are added to the run's own (a sweep's parent, `polyexp.rerun_of`, ...). A run whose
    loss stops being finite stops there and still ends FINISHED, tagged `diverged` and
    `diverged_step`, with final_loss inf. Raises config.ConfigError (one line, naming the
    key) before anything is recorded. With `trained` (a run trained elsewhere, e.g. as one
    member of a batch: polyexp.batched) it only records."""
    s = config.check(cfg)
    with determinism.settings(s):  # torch's deterministic mode on GPUs, for this run only
        return _run(cfg, s, overrides, tags or {}, trained)


def _train(fit: backends.Fit, s: config.Settings, record: tracking.RecordedRun) -> Trained:
    """The loop: losses computed so far are recorded even if training stops early."""
    history = History(fit)
    start = time.perf_counter()
    try:
        train(fit, s.steps, history, s.log_every)
    except BaseException:
        record.log_metrics(history.values()[: history.diverged_at], {})
        raise
    train_seconds = time.perf_counter() - start
    losses = history.values()[: history.diverged_at]  # the finite losses
    return Trained(losses, history.diverged_at, fit.coefficients(), train_seconds, fit.device)


def _run(
    cfg: DictConfig,
    s: config.Settings,
    overrides: Sequence[str],
    extra: Mapping[str, str],
    trained: Trained | None,
) -> Result:
    # Config -> parts: everything that can be refused is refused before a run exists.
    problem = make_problem(s)
    model = models.get(s.model)
    # The closed-form fit of the same data, if any; before the backend's arrays exist, so its
    # float64 solve and theirs are never in memory together (10^7 points: ~0.3 GB less).
    optimum = reference.optimum(s.model, problem)
    fit = backends.build(s, problem) if trained is None else None
    device = trained.device if trained is not None else fit.device  # type: ignore[union-attr]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    choices = {"model": s.model, "optimizer": s.optimizer, "backend": s.backend, "device": s.device}
    tags = {
        **choices,
        "config_hash": config.fingerprint(cfg),
        **provenance.tags(device),
        **extra,
    }
    if trained is not None:  # trained elsewhere, in a batch of runs
        tags["sweep.batch_size"] = str(trained.batch_size)

    with tracking.start_run(run_name(s, overrides), flatten(resolved), tags) as record:
        record.log_data(s.n, s.low, s.high)  # issue13: the data as an MLflow dataset input
        if fit is not None:
            trained = _train(fit, s, record)
        assert trained is not None
        losses, train_seconds = trained.losses, trained.train_seconds
        if trained.diverged_at is not None:
            record.set_tags({"diverged": "true", "diverged_step": str(trained.diverged_at)})
            print(f"polyexp: the loss stopped being finite at step {trained.diverged_at}")

        # Record: final numbers, then the artifacts.
        theta = trained.theta
        predictions = models.curves(s.model, theta, problem.x)  # one a graph: loss and plot
        final_loss = models.loss_of(predictions, problem.y)
        if trained.diverged_at is not None or not math.isfinite(final_loss):
            final_loss = math.inf  # diverged: ranks last, and a sweeper can still compare it
        coefficients = dict(zip(model.names, theta.tolist(), strict=True))
        gap = None if optimum is None else optimum.gap(final_loss)
        print(
            f"Result: {model.formula(theta)}" + (f"  (gap to optimum {gap:.4g})" if optimum else "")
        )
        final = {
            "final_loss": final_loss,
            **coefficients,
            "train_seconds": train_seconds,
            **(optimum.metrics(final_loss) if optimum else {}),
        }
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            curves = zip(model.graphs, predictions, strict=True)
            plots_done = plots.draw_in_background(
                losses, problem.x, problem.y, dict(curves), folder
            )
            record.log_metrics(losses, final)
            (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
            (folder / "overrides.yaml").write_text(
                OmegaConf.to_yaml(OmegaConf.create(list(overrides)))
            )
            result = {
                "coefficients": coefficients,
                "final_loss": final_loss,
                "steps": s.steps,
                "device": device,
                "train_seconds": train_seconds,
                "optimal_loss": None if optimum is None else optimum.loss,
                "gap_to_optimum": gap,
            }
            (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
            np.savez(folder / "parameters.npz", **model.parameters(theta))  # type: ignore[arg-type]
            plots_done()
            record.log_artifacts(folder)

    return Result(
        record.run_id,
        coefficients,
        final_loss,
        losses,
        train_seconds,
        None if optimum is None else optimum.loss,
        gap,
        trained.diverged_at,
    )
