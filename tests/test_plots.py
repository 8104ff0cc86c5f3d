"""The two plots are drawn (in a background process on Linux) and failures are not silent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polyexp.record import plots

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


@pytest.mark.parametrize("kind", ["loss", "fit"])
def test_a_reused_figure_draws_what_a_new_one_draws(tmp_path: Path, kind: str) -> None:
    from matplotlib.image import imread

    def draw(scale: float, path: Path) -> np.ndarray:
        if kind == "loss":
            plots.loss_curve(LOSSES * scale, path)
        else:
            plots.fit_against_target(X, np.sin(X), {"fitted cubic": scale * np.sin(X)}, path)
        return imread(path)

    plots._KEPT.clear()
    new = draw(3.0, tmp_path / "new.png")
    plots._KEPT.clear()
    draw(0.5, tmp_path / "first.png")  # another picture first, in the same figure
    again = draw(3.0, tmp_path / "again.png")
    assert len(plots._KEPT) == 1
    np.testing.assert_array_equal(again, new)
    assert not np.array_equal(imread(tmp_path / "first.png"), new)


def test_the_background_worker_is_kept_across_runs(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        plots.draw_in_background(LOSSES, X, np.sin(X), FIT, tmp_path / name)()
        assert (tmp_path / name / "fit.png").stat().st_size > 1000
    worker = plots._worker
    assert worker is not None and worker.process.is_alive()


def _draw_and_exit(folder: Path) -> None:
    plots.draw_in_background(LOSSES, X, np.sin(X), FIT, folder)()


def test_a_process_that_multiprocessing_started_still_exits(tmp_path: Path) -> None:
    # As a joblib worker: multiprocessing joins every child of such a process when it ends.
    import multiprocessing

    plots.draw_in_background(LOSSES, X, np.sin(X), FIT, tmp_path)()  # a worker here, too
    child = multiprocessing.get_context("fork").Process(target=_draw_and_exit, args=(tmp_path,))
    child.start()
    child.join(timeout=60)
    stuck = child.is_alive()
    if stuck:
        child.kill()
    assert not stuck and child.exitcode == 0


def test_the_worker_ends_on_sigterm_whatever_handler_it_was_forked_with(tmp_path: Path) -> None:
    # submitit's job process handles SIGTERM by logging it; multiprocessing ends daemons with it.
    import signal

    old = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        plots._worker = None
        plots.draw_in_background(LOSSES, X, np.sin(X), FIT, tmp_path)()
        worker = plots._worker
        assert worker is not None
        worker.process.terminate()
        worker.process.join(timeout=30)
        assert worker.process.exitcode == -signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, old)
        plots._worker = None
