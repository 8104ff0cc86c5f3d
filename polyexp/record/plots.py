"""The two plots every run records: the loss curve and the fit against sin(x)."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

# Figures kept for reuse by layout: building a figure and its axes costs about half of a
# plot; drawing new data into a kept one draws the same picture (tests/test_plots.py).
_KEPT: dict[tuple[object, ...], tuple[Figure, Any, list[Line2D]]] = {}


def _figure(layout: tuple[object, ...], build: Callable[[Any], list[Line2D]]) -> tuple:
    """The figure for `layout`, built by `build(ax)` (which returns its data lines) the
    first time and reused after."""
    if layout not in _KEPT:
        # Fixed margins: constrained layout would triple the time to draw.
        fig = Figure(figsize=(6, 4), dpi=100)
        fig.subplots_adjust(left=0.13, right=0.97, top=0.92, bottom=0.12)
        FigureCanvasAgg(fig)  # attaches itself as fig.canvas
        ax = fig.add_subplot()
        _KEPT[layout] = (fig, ax, build(ax))
    return _KEPT[layout]


def _save(fig: Figure, ax: Any, path: Path) -> None:
    ax.relim()
    ax.autoscale_view()
    cast(FigureCanvasAgg, fig.canvas).print_png(path)


def loss_curve(losses: np.ndarray, path: Path) -> None:
    log = bool(np.all(losses[np.isfinite(losses)] > 0))

    def build(ax: Any) -> list[Line2D]:
        lines = ax.plot([], [], lw=1.2)
        if log:
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="loss (sum of squared errors)", title="Training loss")
        ax.grid(True, alpha=0.3)
        return list(lines)

    fig, ax, (line,) = _figure(("loss", log), build)
    line.set_data(np.arange(len(losses)), losses)
    _save(fig, ax, path)


def fit_against_target(
    x: np.ndarray, y: np.ndarray, curves: Mapping[str, np.ndarray], path: Path
) -> None:
    """sin(x) and what the model predicts: one curve per graph its forward pass may take
    (label -> prediction), e.g. one for the cubic and three for the dynamic network."""
    stride = max(1, len(x) // 4000)  # a few thousand points draw the same picture as millions

    def build(ax: Any) -> list[Line2D]:
        lines = ax.plot([], [], label="sin(x)", lw=2, color="0.6")
        for label in curves:
            lines += ax.plot([], [], label=label, lw=1.5, ls="--")
        ax.set(xlabel="x", ylabel="y", title="Fit against sin(x)")
        ax.legend()
        ax.grid(True, alpha=0.3)
        return list(lines)

    fig, ax, lines = _figure(("fit", *curves), build)
    for line, values in zip(lines, [y, *curves.values()], strict=True):
        line.set_data(x[::stride], values[::stride])
    _save(fig, ax, path)


def _draw(
    losses: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    curves: Mapping[str, np.ndarray],
    folder: Path,
) -> None:
    loss_curve(losses, folder / "loss.png")
    fit_against_target(x, y, curves, folder / "fit.png")


def _die_with(parent: int) -> None:
    """Linux: the kernel kills this process when its parent dies (prctl PR_SET_PDEATHSIG), even
    by SIGKILL (the OOM killer, a scheduler after its grace), so the worker is never orphaned;
    it keeps both ends of its pipe, so it would never see EOF itself."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(0)


def _serve(requests: Connection, parent: int) -> None:
    """The worker's loop: draw what comes, answer None or the error, until the pipe closes.
    Signal handlers of the process it was forked from (submitit's SIGTERM handler, which only
    logs) would keep it alive when multiprocessing ends it at exit: back to the defaults, and
    Ctrl-C is for the process it serves. It dies with its parent."""
    _die_with(parent)
    for number in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            job = requests.recv()
        except EOFError:
            return
        try:
            _draw(*job)
            requests.send(None)
        except Exception as error:
            requests.send(f"{type(error).__name__}: {error}")


class _Worker:
    """One forked daemon process that draws, one request at a time. Daemon: at exit
    multiprocessing ends it instead of waiting for it (a joblib worker would wait forever)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")
        self.pipe, theirs = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(theirs, os.getpid()), name="polyexp-plots", daemon=True
        )
        self.process.start()
        theirs.close()
        self.owner = os.getpid()  # a forked child of this process starts its own
        self.pending = 0  # requests sent whose answer is not read yet

    def answer(self) -> str | None:
        self.pending -= 1
        return cast("str | None", self.pipe.recv())


_worker: _Worker | None = None


def draw_in_background(
    losses: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    curves: Mapping[str, np.ndarray],
    folder: Path,
) -> Callable[[], None]:
    """Starts drawing loss.png and fit.png into `folder`; returns a `wait()` that returns once
    both are written. On Linux they are drawn by one forked worker process, started on the first
    call and kept, so the drawing (~0.1 s) runs beside the MLflow writes instead of after them
    and every run of a sweep in this process reuses its figures; elsewhere they are drawn here
    and now."""
    global _worker
    if sys.platform != "linux":  # fork is unsafe on macOS and absent on Windows
        _draw(losses, x, y, curves, folder)
        return lambda: None
    stride = max(1, len(x) // 4000)  # what fit_against_target draws; less to send
    curves = {k: v[::stride] for k, v in curves.items()}
    sys.stdout.flush()  # or a forked child would print what is still buffered here a second time
    sys.stderr.flush()
    if _worker is None or _worker.owner != os.getpid() or not _worker.process.is_alive():
        _worker = _Worker()
    worker = _worker
    while worker.pending:  # the answer to a request whose run never waited for it
        worker.answer()
    worker.pipe.send((losses, x[::stride], y[::stride], curves, folder))
    worker.pending += 1

    def wait() -> None:
        global _worker
        try:
            error = worker.answer()
        except (EOFError, OSError) as lost:  # the worker died: the next run starts another
            _worker = None
            raise RuntimeError(f"drawing the plots failed: the worker ended ({lost})") from lost
        if error is not None:
            raise RuntimeError(f"drawing the plots failed: {error}")

    return wait
