"""Training without recording: settings -> parts -> loop -> what training produced.

`Training(s)` builds the parts (everything that can be refused is refused here, before a run
is recorded); `run()` trains and returns a `Trained`; `losses()` gives the steps computed so
far, for a record of a run that was stopped; `report(on_chunk)` hands each chunk of losses to
a listener as it reaches the host (the record writes them as training goes). Nothing here
imports MLflow, and a run on the numpy backend never imports torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from polyexp.config import Settings
from polyexp.parts.data import Problem
from polyexp.training import determinism
from polyexp.training.loop import History, OnChunk, loop


@dataclass(frozen=True)
class Trained:
    """What training produced: the finite losses (step 0 first), the first step whose loss was
    not finite (None: none was), the final parameters and the loop's wall time."""

    losses: np.ndarray
    diverged_at: int | None
    theta: np.ndarray  # the model's parameters, e.g. (a, b, c, d), as float64
    train_seconds: float  # for a batch: its loop's wall time shared out among its runs
    device: str  # where it trained, e.g. "cpu" or "cuda:0"
    batch_size: int = 1  # how many runs trained together (polyexp.sweeps.batched)
    interrupted: bool = False  # its batch's training was interrupted: the losses so far
    record_by: float | None = None  # interrupted: the store gets its losses until then (monotonic)


class Training:
    """One run's parts, built; `run()` trains them."""

    def __init__(self, s: Settings, problem: Problem | None = None) -> None:
        self.settings = s
        self.problem = s.problem() if problem is None else problem
        self.fit = s.backend.build(s, self.problem)
        self.device = self.fit.device
        self.history = History(self.fit)

    def report(self, on_chunk: OnChunk) -> None:
        """Hands each chunk of finite losses, (first step, losses), to `on_chunk` as it reaches
        the host (every log_every steps, else every 1000), and the rest when `losses()` is
        called after an interrupt. Its time is not counted in train_seconds."""
        self.history.on_chunk = on_chunk

    def run(self) -> Trained:
        s, history = self.settings, self.history
        start = time.perf_counter()
        # A diverging run overflows on its way to inf: an outcome we report ourselves.
        with np.errstate(over="ignore", invalid="ignore"):
            loop(self.fit, s.steps, history, s.log_every)
        losses = self.losses()  # flushes the last chunk, to the listener too
        seconds = time.perf_counter() - start - history.on_chunk_seconds
        return Trained(losses, history.diverged_at, self.fit.coefficients(), seconds, self.device)

    def losses(self) -> np.ndarray:
        """The finite losses computed so far, step 0 first."""
        return self.history.values()[: self.history.diverged_at]


def train(s: Settings) -> Trained:
    """Trains one run of checked settings (torch's deterministic mode on a GPU, for its span)."""
    with determinism.settings(s):
        return Training(s).run()
