"""The two plots every run records: the loss curve and the fit against sin(x)."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure() -> Figure:
    # Fixed margins: constrained layout would triple the time to draw.
    fig = Figure(figsize=(6, 4), dpi=100)
    fig.subplots_adjust(left=0.13, right=0.97, top=0.92, bottom=0.12)
    return fig


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig).print_png(path)


def loss_curve(losses: np.ndarray, path: Path) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(np.arange(len(losses)), losses, lw=1.2)
    if np.all(losses[np.isfinite(losses)] > 0):
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss (sum of squared errors)", title="Training loss")
    ax.grid(True, alpha=0.3)
    _save(fig, path)


def fit_against_target(
    x: np.ndarray, y: np.ndarray, curves: Mapping[str, np.ndarray], path: Path
) -> None:
    """sin(x) and what the model predicts: one curve per graph its forward pass may take
    (label -> prediction), e.g. one for the cubic and three for the dynamic network."""
    stride = max(1, len(x) // 4000)  # a few thousand points draw the same picture as millions
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(x[::stride], y[::stride], label="sin(x)", lw=2, color="0.6")
    for label, y_pred in curves.items():
        ax.plot(x[::stride], y_pred[::stride], label=label, lw=1.5, ls="--")
    ax.set(xlabel="x", ylabel="y", title="Fit against sin(x)")
    ax.legend()
    ax.grid(True, alpha=0.3)
    _save(fig, path)


def draw_in_background(
    losses: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    curves: Mapping[str, np.ndarray],
    folder: Path,
) -> Callable[[], None]:
    """Starts drawing loss.png and fit.png into `folder`; returns a `wait()` that returns once
    both are written. On Linux they are drawn in a forked process, so the drawing (~0.1 s) runs
    beside the MLflow writes instead of after them; elsewhere they are drawn here and now."""

    def draw() -> None:
        loss_curve(losses, folder / "loss.png")
        fit_against_target(x, y, curves, folder / "fit.png")

    if sys.platform != "linux":  # fork is unsafe on macOS and absent on Windows
        draw()
        return lambda: None
    process = multiprocessing.get_context("fork").Process(target=draw, name="polyexp-plots")
    sys.stdout.flush()  # or the child would print what is still buffered here a second time
    sys.stderr.flush()
    process.start()

    def wait() -> None:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"drawing the plots failed (exit code {process.exitcode})")

    return wait
