"""Many runs of a sweep trained as one computation, with a leading batch dimension.

Jobs whose configs differ only in numbers (the optimizer's hyper-parameters, the seed, the
initial coefficients) run the same arithmetic: here they train together, parameters of shape
(B, p) against the features (p, n), each run's hyper-parameters a column of shape (B, 1)
(polyexp.parts.optimizers takes those as they are; each backend's build_batch builds the batch).
Each run keeps its own losses and its own divergence: rows never mix, and a run whose loss
stops being finite keeps the coefficients it had where a run of its own would have stopped
(the end of that chunk of steps).

On every backend the update is polyexp.parts.optimizers' rule, equal to torch.optim's in float64
(torch.optim cannot take one learning rate per row); on autograd the gradients still come from
`backward()` through a batched model. The hydra/launcher=batched plugin
(hydra_plugins/polyexp_batched_launcher) groups a sweep's jobs with `group_key` and records
every member as its own run (polyexp.record.runner.record).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from polyexp.config import Settings, flatten
from polyexp.parts.models import LinearModel
from polyexp.training import Trained

# Config keys that only change numbers of the same computation, besides the optimizer's own
# (Optimizer.numbers).
NUMBERS = ("seed", "init.coefficients")
CHUNK = 1000  # steps between looks at the losses without log_every, as polyexp.training.loop


def group_key(cfg: DictConfig, s: Settings) -> str | None:
    """Jobs with equal keys can train as one batch; None: this one trains on its own (a model
    with more than one graph or not linear in its parameters)."""
    if not (isinstance(s.model, LinearModel) and s.model.batchable):
        return None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    resolved.pop("hydra", None)
    numbers = {*NUMBERS, *(f"optimizer.{k}" for k in s.optimizer.numbers), "resume"}
    kept = {k: v for k, v in flatten(resolved).items() if k not in numbers}
    kept.update(s.optimizer.batch_key())
    return json.dumps(kept, sort_keys=True, default=str)


class Interrupted(KeyboardInterrupt):
    """The batch's training was interrupted (Ctrl-C, SIGTERM); `trained` holds each run's
    losses so far (Trained.interrupted), to be recorded as KILLED runs."""

    def __init__(self, why: str, trained: list[Trained]) -> None:
        super().__init__(why)
        self.trained = trained
        self.jobs: list[int] = []  # the members' job indices, set by the launcher


def train(settings: Sequence[Settings]) -> list[Trained]:
    """Trains runs that share a group key as one batch; returns each run's outcome, in order.
    Losses come to the host every `log_every` steps (else every CHUNK), as in polyexp.training.loop;
    training stops early only when every run has diverged. Interrupted, it raises Interrupted
    with each run's losses so far."""
    s = settings[0]
    problems = [one.problem() for one in settings]
    fit = s.backend.build_batch(settings, problems)
    size, every = len(settings), s.log_every or CHUNK
    chunks: list[np.ndarray] = []
    pending: list[Any] = []
    diverged: list[int | None] = [None] * size
    stopped: dict[int, np.ndarray] = {}  # where a diverged run's own loop would have stopped
    done = 0
    start = time.perf_counter()
    with np.errstate(all="ignore"):  # a diverging row overflows; the others carry on
        try:
            for t in range(s.steps):
                pending.append(fit.step())
                if (t + 1) % every and t + 1 < s.steps:
                    continue
                chunk, pending = fit.fetch(pending), []
                bad = ~np.isfinite(chunk)
                newly = [int(i) for i in np.flatnonzero(bad.any(0)) if diverged[i] is None]
                if newly:
                    theta = fit.coefficients()
                    first = bad.argmax(0)
                    for i in newly:
                        diverged[i], stopped[i] = done + int(first[i]), theta[i]
                chunks.append(chunk)
                done += len(chunk)
                if all(d is not None for d in diverged):
                    break
        except KeyboardInterrupt as interrupt:
            if pending:  # the steps computed since the last look: every run keeps them
                chunks.append(fit.fetch(pending))
            losses = np.concatenate(chunks) if chunks else np.empty((0, size))
            theta = fit.coefficients()
            partial = [
                Trained(
                    _finite(losses[: diverged[i], i]),
                    diverged[i],
                    theta[i],
                    0.0,
                    fit.device,
                    size,
                    interrupted=True,
                )
                for i in range(size)
            ]
            raise Interrupted(str(interrupt), partial) from None
    seconds = (time.perf_counter() - start) / size  # each run's share of the batch's loop
    losses = np.concatenate(chunks)
    theta = fit.coefficients()
    return [
        Trained(
            losses[: diverged[i], i].copy(),
            diverged[i],
            stopped.get(i, theta[i]),
            seconds,
            fit.device,
            size,
        )
        for i in range(size)
    ]


def _finite(losses: np.ndarray) -> np.ndarray:
    """The losses up to the first one that is not finite (a row that diverged in the last,
    unchecked steps keeps its finite ones, as a run of its own would)."""
    bad = ~np.isfinite(losses)
    return losses[: int(bad.argmax())].copy() if bad.any() else losses.copy()
