"""Many runs of a sweep trained as one computation, with a leading batch dimension.

Jobs whose configs differ only in numbers (the optimizer's hyper-parameters, the seed, the
initial coefficients) run the same arithmetic: here they train together, parameters of shape
(B, 4) against the features (4, n), each run's hyper-parameters a column of shape (B, 1)
(polyexp.optimizers takes those as they are). Each run keeps its own losses and its own
divergence: rows never mix, and a run whose loss stops being finite keeps the coefficients it
had where a run of its own would have stopped (the end of that chunk of steps).

On every backend the update is polyexp.optimizers' rule, equal to torch.optim's in float64
(torch.optim cannot take one learning rate per row); on autograd the gradients still come from
`backward()` through a batched model. The hydra/launcher=batched plugin
(hydra_plugins/polyexp_batched_launcher) groups a sweep's jobs with `group_key` and records
every member as its own run (polyexp.runner.run with `trained`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from omegaconf import DictConfig, OmegaConf

from polyexp import models, optimizers
from polyexp.config import Settings
from polyexp.data import Problem, make_problem
from polyexp.runner import Trained, flatten

# Models known to be the linear cubic over (1, x, x^2, x^3); any other trains on its own.
MODELS = ("polynomial3", "sequential")
# Config keys that only change numbers of the same computation.
NUMBERS = (
    "seed",
    "init.coefficients",
    "optimizer.lr",
    "optimizer.momentum",
    "optimizer.dampening",
    "optimizer.weight_decay",
    "optimizer.alpha",
    "optimizer.eps",
)
CHUNK = 1000  # steps between looks at the losses without log_every, as polyexp.loop


def group_key(cfg: DictConfig, s: Settings) -> str | None:
    """Jobs with equal keys can train as one batch; None: this one trains on its own."""
    if s.model not in MODELS:
        return None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    resolved.pop("hydra", None)
    kept = {k: v for k, v in flatten(resolved).items() if k not in NUMBERS and k != "resume"}
    if s.optimizer == "sgd":  # momentum on or off is another rule: SGD keeps no buffer without
        kept["momentum on"] = bool(s.hyper["momentum"])  # (RMSprop's buffer is exact at 0)
    return json.dumps(kept, sort_keys=True, default=str)


class BatchFit(Protocol):
    """B runs of one config bound to one backend's arrays: like polyexp.backends.Fit, by rows."""

    device: str

    def step(self) -> Any:
        """One update of every run; returns their losses before it, shape (B,), on the device."""
        ...

    def fetch(self, losses: list[Any]) -> np.ndarray:
        """A chunk of steps' losses on the host as float64, shape (steps, B)."""
        ...

    def coefficients(self) -> np.ndarray:
        """The current (a, b, c, d) of every run as float64, shape (B, 4)."""
        ...


def _hyper(settings: Sequence[Settings], xp: Any, **array: Any) -> dict[str, Any]:
    """The optimizer's hyper-parameters: numbers as columns (B, 1), one row per run; switches
    (nesterov, centered) as they are, equal across a group by its key."""
    first = settings[0].hyper
    return {
        k: v if isinstance(v, bool) else xp.asarray([[s.hyper[k]] for s in settings], **array)
        for k, v in first.items()
    }


class NumpyBatch:
    """polyexp.backends.numpy by rows: y_pred (B, n) = theta (B, 4) @ features (4, n)."""

    def __init__(self, settings: Sequence[Settings], problems: Sequence[Problem]) -> None:
        s, dtype = settings[0], np.dtype(settings[0].dtype)
        x = problems[0].x.astype(dtype)
        (self.features,) = models.features(s.model, x, np)  # the cubic: one graph
        self.y = problems[0].y.astype(dtype)
        self.theta = np.stack([p.initial for p in problems]).astype(dtype)
        self.optimizer = optimizers.build(s.optimizer, _hyper(settings, np, dtype=dtype), np)
        self.state = self.optimizer.init(self.theta)
        self.device = "cpu"

    def step(self) -> Any:
        y_pred = self.theta @ self.features
        residual = y_pred - self.y
        loss = np.einsum("bn,bn->b", residual, residual)
        grad = 2.0 * (residual @ self.features.T)
        self.theta, self.state = self.optimizer.update(self.theta, grad, self.state)
        return loss

    def fetch(self, losses: list[Any]) -> np.ndarray:
        return np.array(losses, dtype=np.float64)

    def coefficients(self) -> np.ndarray:
        return self.theta.astype(np.float64)


class TorchBatch:
    """polyexp.backends.torch by rows."""

    def __init__(self, settings: Sequence[Settings], problems: Sequence[Problem]) -> None:
        import torch

        from polyexp.backends.torch import resolve_device

        s = settings[0]
        dtype, device = getattr(torch, s.dtype), resolve_device(s.device)
        x = torch.as_tensor(problems[0].x, device=device).to(dtype)
        (self.features,) = models.features(s.model, x, torch)  # the cubic: one graph
        self.y = torch.as_tensor(problems[0].y, device=device).to(dtype)
        initial = np.stack([p.initial for p in problems])
        self.theta = torch.as_tensor(initial, device=device).to(dtype)
        hyper = _hyper(settings, torch, dtype=dtype, device=device)
        self.optimizer = optimizers.build(s.optimizer, hyper, torch)
        self.state = self.optimizer.init(self.theta)
        self.device = str(device)

    def step(self) -> Any:
        y_pred = self.theta @ self.features
        residual = y_pred - self.y
        loss = (residual * residual).sum(1)
        grad = 2.0 * (residual @ self.features.T)
        self.theta, self.state = self.optimizer.update(self.theta, grad, self.state)
        return loss

    def fetch(self, losses: list[Any]) -> np.ndarray:
        import torch

        return torch.stack(losses).to("cpu", torch.float64).numpy()

    def coefficients(self) -> np.ndarray:
        import torch

        return self.theta.to("cpu", torch.float64).numpy()


class AutogradBatch(TorchBatch):
    """polyexp.backends.autograd by rows: the model's parameters with a leading dimension B
    (polynomial3: a, b, c, d of shape (B, 1); sequential: bias (B, 1), weight (B, 3)); the
    gradients come from backward() of the sum of the runs' losses, so each row gets its own."""

    def __init__(self, settings: Sequence[Settings], problems: Sequence[Problem]) -> None:
        import torch

        super().__init__(settings, problems)
        self.x = self.features[1]
        self.inputs = self.features[1:]  # sequential's input (x, x^2, x^3), as rows (3, n)
        self.sequential = settings[0].model == "sequential"
        theta = self.theta
        pieces = [theta[:, :1], theta[:, 1:]] if self.sequential else list(theta.split(1, 1))
        self.params = [p.clone().requires_grad_() for p in pieces]
        self.states = [self.optimizer.init(p.detach()) for p in self.params]
        self.torch = torch

    def step(self) -> Any:
        if self.sequential:
            bias, weight = self.params
            y_pred = bias + weight @ self.inputs
        else:
            a, b, c, d = self.params
            y_pred = a + b * self.x + c * self.x**2 + d * self.x**3
        losses = ((y_pred - self.y) ** 2).sum(1)
        grads = self.torch.autograd.grad(losses.sum(), self.params)
        with self.torch.no_grad():
            for i, (param, grad) in enumerate(zip(self.params, grads, strict=True)):
                new, self.states[i] = self.optimizer.update(param.detach(), grad, self.states[i])
                self.params[i] = new.requires_grad_()
        return losses.detach()

    def coefficients(self) -> np.ndarray:
        theta = self.torch.cat([p.detach() for p in self.params], 1)
        return theta.to("cpu", self.torch.float64).numpy()


BATCHES: dict[str, type[NumpyBatch | TorchBatch]] = {
    "numpy": NumpyBatch,
    "torch": TorchBatch,
    "autograd": AutogradBatch,
}


def train(settings: Sequence[Settings]) -> list[Trained]:
    """Trains runs that share a group key as one batch; returns each run's outcome, in order.
    Losses come to the host every `log_every` steps (else every CHUNK), as in polyexp.loop;
    training stops early only when every run has diverged."""
    s = settings[0]
    problems = [make_problem(one) for one in settings]
    fit: BatchFit = BATCHES[s.backend](settings, problems)
    size, every = len(settings), s.log_every or CHUNK
    chunks: list[np.ndarray] = []
    pending: list[Any] = []
    diverged: list[int | None] = [None] * size
    stopped: dict[int, np.ndarray] = {}  # where a diverged run's own loop would have stopped
    done = 0
    start = time.perf_counter()
    with np.errstate(all="ignore"):  # a diverging row overflows; the others carry on
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
