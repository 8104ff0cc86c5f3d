"""The two plots are drawn (in a background process on Linux) and failures are not silent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polyexp import plots

X = np.linspace(-np.pi, np.pi, 2000)
LOSSES = 1000 * np.exp(-np.arange(2000) / 300) + 9
FIT = {"fitted cubic": 0.9 * np.sin(X)}


def test_both_plots_are_written_as_png(tmp_path: Path) -> None:
    wait = plots.draw_in_background(LOSSES, X, np.sin(X), FIT, tmp_path)
    wait()
    for name in ("loss.png", "fit.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_drawing_raises(tmp_path: Path) -> None:
    wait = plots.draw_in_background(LOSSES, X, np.sin(X), FIT, tmp_path / "missing")
    with pytest.raises((RuntimeError, FileNotFoundError)):
        wait()


def test_a_diverged_loss_curve_still_draws(tmp_path: Path) -> None:
    losses = LOSSES.copy()
    losses[1500:] = np.inf
    plots.loss_curve(losses, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 1000
