"""The training loop: step, keep the loss, print now and then. Nothing else happens here."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from tqdm import tqdm

from polyexp.backends import Fit


class History:
    """Every step's loss. Losses stay on the backend's device and come to the host in chunks,
    so a GPU run does not wait on the host every step."""

    def __init__(self, fit: Fit) -> None:
        self._fit = fit
        self._pending: list[Any] = []
        self._chunks: list[np.ndarray] = []

    def append(self, loss: Any) -> None:
        self._pending.append(loss)

    def flush(self) -> np.ndarray:
        """Fetches the pending losses to the host and returns them."""
        if self._pending:
            self._chunks.append(self._fit.fetch(self._pending))
            self._pending = []
        return self._chunks[-1] if self._chunks else np.empty(0)

    def values(self) -> np.ndarray:
        """All losses so far, step 0 first."""
        self.flush()
        return np.concatenate(self._chunks) if self._chunks else np.empty(0)


def train(fit: Fit, steps: int, history: History, log_every: int, chunk: int = 1000) -> None:
    """Runs `steps` updates, appending each step's loss (computed before its update) to
    `history`; prints `step loss` every `log_every` steps as the seed does (0: never)."""
    every = log_every or chunk
    bar = tqdm(range(steps), leave=False, disable=not sys.stderr.isatty(), unit="step")
    for t in bar:
        history.append(fit.step())
        if (t + 1) % every == 0:
            loss = history.flush()[-1]
            if log_every:
                bar.write(f"{t} {loss}")
