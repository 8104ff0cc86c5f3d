"""The training loop: step, keep the loss, print now and then. Nothing else happens here."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm import tqdm

from polyexp.parts.backends import Fit

# What hears each chunk of finite losses as it reaches the host: (its first step, the losses).
OnChunk = Callable[[int, np.ndarray], None]
# With a listener, losses also come to the host at least this often (seconds), however slow the
# steps: the record streams them, and a run's newest loss in the store is its heartbeat.
CHUNK_SECONDS = 1.0


class History:
    """Every step's loss. Losses stay on the backend's device and come to the host in chunks,
    so a GPU run does not wait on the host every step. `on_chunk`, when set, hears each chunk's
    finite losses as they arrive (e.g. the record, which writes them as training goes); the
    time it takes is kept in `on_chunk_seconds`, so the loop's own time can leave it out."""

    def __init__(self, fit: Fit, on_chunk: OnChunk | None = None) -> None:
        self._fit = fit
        self._pending: list[Any] = []
        self._chunks: list[np.ndarray] = []
        self._count = 0  # losses on the host
        self.diverged_at: int | None = None  # the first step whose loss is not finite
        self.on_chunk = on_chunk
        self.on_chunk_seconds = 0.0
        self.due = time.monotonic() + CHUNK_SECONDS  # when a listener is next owed a chunk

    def append(self, loss: Any) -> None:
        self._pending.append(loss)

    def flush(self) -> np.ndarray:
        """Fetches the pending losses to the host and returns them."""
        self.due = time.monotonic() + CHUNK_SECONDS
        if self._pending:
            chunk = self._fit.fetch(self._pending)
            finite = np.isfinite(chunk)  # checked here, on the host, never with a sync a step
            start = self._count
            if self.diverged_at is None and not finite.all():
                self.diverged_at = start + int(np.argmin(finite))
            self._chunks.append(chunk)
            self._count += len(chunk)
            self._pending = []
            if self.on_chunk is not None:  # only the finite losses, as the run keeps them
                end = len(chunk) if self.diverged_at is None else self.diverged_at - start
                if end > 0:
                    began = time.perf_counter()
                    self.on_chunk(start, chunk[:end])
                    self.on_chunk_seconds += time.perf_counter() - began
        return self._chunks[-1] if self._chunks else np.empty(0)

    def values(self) -> np.ndarray:
        """All losses so far, step 0 first."""
        self.flush()
        return np.concatenate(self._chunks) if self._chunks else np.empty(0)


def loop(fit: Fit, steps: int, history: History, log_every: int, chunk: int = 1000) -> None:
    """Runs `steps` updates, appending each step's loss (computed before its update) to
    `history`; prints `step loss` every `log_every` steps as the seed does (0: never).
    Stops early when the loss stops being finite (seen when a chunk comes to the host, and
    acted on every `log_every` steps, else every `chunk`: where a run stops never depends on
    time). A listener (`history.on_chunk`) also gets the losses every CHUNK_SECONDS."""
    every = log_every or chunk
    listening = history.on_chunk is not None
    history.due = time.monotonic() + CHUNK_SECONDS
    # A bar only on a terminal: tqdm makes a multiprocessing lock (a named semaphore), which a
    # job process killed by its launcher (joblib's loky SIGKILLs its workers) would leak.
    bar = tqdm(range(steps), leave=False, unit="step") if sys.stderr.isatty() else None
    write = print if bar is None else bar.write
    for t in range(steps) if bar is None else bar:
        history.append(fit.step())
        if (t + 1) % every == 0:
            loss = history.flush()[-1]
            if history.diverged_at is not None:
                break  # a diverged run is an outcome: the runner records where it happened
            if log_every:
                write(f"{t} {loss}")
        elif listening and time.monotonic() >= history.due:  # slow steps: the heartbeat
            history.flush()
