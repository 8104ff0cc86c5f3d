"""One recorded run, in the order data flows: config -> parts -> loop -> record.

`run` trains (polyexp.training) and records the run in MLflow; `record` records a run trained
elsewhere (one member of a batch: polyexp.sweeps.batched). Both end the run FINISHED, FAILED
(with the error) or KILLED (interrupted), never RUNNING.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf

from polyexp import config
from polyexp.parts.data import Problem
from polyexp.parts.models import loss_of
from polyexp.parts.reference import Optimum
from polyexp.record import journal, plots, provenance, store
from polyexp.training import Trained, Training, determinism


class Killed(KeyboardInterrupt):
    """A run recorded as KILLED on purpose: it was trained elsewhere (one member of a batch)
    and its training was interrupted. Whoever records the other members goes on, then stops."""


@dataclass(frozen=True)
class Result:
    """What a run returns (and records): final coefficients, the loss at every step, the run id."""

    run_id: str
    coefficients: dict[str, float]  # the model's parameters by name: a, b, c, d (dynamic: e)
    final_loss: float  # summed squared error of the final coefficients, in float64
    losses: np.ndarray  # the loss at every step, computed before that step's update
    train_seconds: float  # wall time of the training loop alone
    optimal_loss: (
        float | None
    )  # the least-squares optimum of the same data (polyexp.parts.reference)
    gap_to_optimum: float | None  # final_loss / optimal_loss - 1; None: no closed-form optimum
    diverged_step: int | None = None  # the first step whose loss was not finite; None: it wasn't


def run_name(s: config.Settings, overrides: Sequence[str]) -> str:
    """The four choices, then any values set on the command line: readable in a list of runs."""
    choices = "-".join(s.choices().values())
    values = [
        o
        for o in overrides
        if "." in o.split("=")[0] or o.split("=")[0] in ("seed", "steps", "dtype")
    ]
    return " ".join([choices, *values])


def run(
    cfg: DictConfig,
    overrides: Sequence[str] = (),
    tags: Mapping[str, str] | None = None,
    experiment: str | None = None,
) -> Result:
    """Checks `cfg`, trains, and records the run in MLflow; returns what it recorded.

    `tags` are added to the run's own (a sweep's parent, `polyexp.rerun_of`, ...); `experiment`
    names the MLflow experiment (default: MLFLOW_EXPERIMENT_NAME, else polyexp). A run whose
    loss stops being finite stops there and still ends FINISHED, tagged `diverged` and
    `diverged_step`, with final_loss inf. Raises ConfigError (one line, naming the key) before
    anything is recorded; losses computed before an interrupt or an error are recorded."""
    s = config.check(cfg)
    with determinism.settings(s):  # torch's deterministic mode on GPUs, for this run only
        problem = s.problem()
        # The closed-form fit before the backend's arrays exist, so its float64 solve and theirs
        # are never in memory together (10^7 points: ~0.3 GB less).
        optimum = s.model.optimum(problem.x, problem.y)
        training = Training(s, problem)  # parts built: what can be refused is refused here
        with _opened(cfg, s, overrides, tags or {}, training.device, experiment) as recorded:
            training.report(recorded.add_losses)  # losses reach the store as training goes
            try:
                trained = training.run()
            except BaseException:
                training.losses()  # the last chunk, to the journal and the store
                raise
            return _record(recorded, cfg, s, overrides, trained, problem, optimum)


def record(
    cfg: DictConfig,
    trained: Trained,
    overrides: Sequence[str] = (),
    tags: Mapping[str, str] | None = None,
) -> Result:
    """Records a run trained elsewhere (e.g. as one member of a batch) exactly as `run` would.
    A run whose training was interrupted (Trained.interrupted) ends KILLED with its losses so
    far, as `run` ends one: raises Killed once it is recorded."""
    s = config.check(cfg)
    extra = {**(tags or {}), "sweep.batch_size": str(trained.batch_size)}
    if trained.interrupted:
        with _opened(cfg, s, overrides, extra, trained.device) as recorded:
            by = math.inf if trained.record_by is None else trained.record_by
            recorded.keep_losses(np.asarray(trained.losses, dtype=np.float64), by)
            if recorded.unsent:
                print(
                    f"polyexp: {recorded.unsent} of its {len(trained.losses)} losses are kept in "
                    f"{recorded.journal.folder} (polyexp-sync uploads them)"
                )
            raise Killed(f"its batch's training was interrupted at step {len(trained.losses)}")
    problem = s.problem()
    optimum = s.model.optimum(problem.x, problem.y)
    with _opened(cfg, s, overrides, extra, trained.device) as recorded:
        return _record(recorded, cfg, s, overrides, trained, problem, optimum)


@contextmanager
def _opened(
    cfg: DictConfig,
    s: config.Settings,
    overrides: Sequence[str],
    extra: Mapping[str, str],
    device: str,
    experiment: str | None = None,
) -> Iterator[journal.Recorder]:
    """The run opened in the store (and said where, in one line), closed however it ends."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tags = {
        **s.choices(),
        "config_hash": config.fingerprint(cfg),
        **provenance.tags(device),
        **extra,
    }
    name = run_name(s, overrides)
    with journal.start_run(name, config.flatten(resolved), tags, experiment) as recorded:
        where = store.redact(recorded.client.tracking_uri)
        print(f"polyexp: recording run {recorded.run_id} in {where}")
        recorded.log_data(s.data.n, s.data.low, s.data.high, s.data.name)  # an MLflow dataset
        yield recorded


def _record(
    recorded: journal.Recorder,
    cfg: DictConfig,
    s: config.Settings,
    overrides: Sequence[str],
    trained: Trained,
    problem: Problem,
    optimum: Optimum | None,
) -> Result:
    """The final numbers, then the artifacts."""
    model, losses, theta = s.model, trained.losses, trained.theta
    if trained.diverged_at is not None:
        recorded.set_tags({"diverged": "true", "diverged_step": str(trained.diverged_at)})
        lr = s.optimizer.hyper().get("lr")
        print(
            f"polyexp: the loss stopped being finite at step {trained.diverged_at}; try a "
            f"smaller optimizer.lr (this run: {lr:g}) or a preset (conf/experiment)"
            if lr is not None
            else f"polyexp: the loss stopped being finite at step {trained.diverged_at}"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged run's numbers
        predictions = model.curves(theta, problem.x)  # one a graph: loss and plot
        final_loss = loss_of(predictions, problem.y)
    if trained.diverged_at is not None or not math.isfinite(final_loss):
        final_loss = math.inf  # diverged: ranks last, and a sweeper can still compare it
    coefficients = dict(zip(model.names, theta.tolist(), strict=True))
    gap = None if optimum is None else optimum.gap(final_loss)
    print(f"Result: {model.formula(theta)}" + (f"  (gap to optimum {gap:.4g})" if optimum else ""))
    final = {
        "final_loss": final_loss,
        **coefficients,
        "train_seconds": trained.train_seconds,
        **(optimum.metrics(final_loss) if optimum else {}),
    }
    folder = recorded.artifacts  # in the run's journal until the store has them
    curves = dict(zip(model.graphs, predictions, strict=True))
    plots_done = plots.draw_in_background(losses, problem.x, problem.y, curves, folder)
    recorded.log_metrics(losses, final)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (folder / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    result = {
        "coefficients": coefficients,
        "final_loss": final_loss,
        "steps": s.steps,
        "device": trained.device,
        "train_seconds": trained.train_seconds,
        "optimal_loss": None if optimum is None else optimum.loss,
        "gap_to_optimum": gap,
    }
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    np.savez(folder / "parameters.npz", **model.parameters(theta))  # type: ignore[arg-type]
    plots_done()
    recorded.log_artifacts(folder)
    return Result(
        recorded.run_id,
        coefficients,
        final_loss,
        losses,
        trained.train_seconds,
        None if optimum is None else optimum.loss,
        gap,
        trained.diverged_at,
    )
