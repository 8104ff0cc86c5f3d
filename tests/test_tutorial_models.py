"""The tutorial's two further programs as models: legendre3 (a custom autograd Function) and
dynamic (a graph drawn anew every step). Their presets match the tutorial's own code, and their
runs go through everything the cubic's do: the record, the optimum, reruns and sweeps."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import contract
import numpy as np
import pytest
import tutorial_programs
from mlflow.tracking import MlflowClient

import polyexp
from conftest import polyexp_cli, runs, settings
from polyexp import config
from polyexp.sweeps import rerun

START5 = [0.3, -0.5, 0.2, 0.1, 0.01]


def test_tutorial_legendre_matches_the_tutorial_program_step_for_step(store: MlflowClient) -> None:
    expected_losses, expected_final = tutorial_programs.legendre([0.0, -1.0, 0.0, 0.3], 2000)
    result = polyexp.run(["experiment=tutorial_legendre", "log_every=0"])
    assert len(result.losses) == 2000
    # float32: the tutorial's torch.linspace and ours round x differently
    np.testing.assert_allclose(result.losses, expected_losses, rtol=1e-5)
    np.testing.assert_allclose(list(result.coefficients.values()), expected_final, atol=1e-6)
    assert result.losses[-1] < 9  # the tutorial's own end: about 8.9


def test_tutorial_dynamic_matches_the_tutorial_program_step_for_step(store: MlflowClient) -> None:
    steps = 3000  # of the preset's 30000: the comparison holds step for step
    expected_losses, expected_final = tutorial_programs.dynamic(START5, steps, seed=4)
    result = polyexp.run(
        [
            "experiment=tutorial_dynamic",
            f"steps={steps}",
            "seed=4",
            "init=fixed",
            f"init.coefficients={START5}",
            "log_every=0",
        ]
    )
    np.testing.assert_allclose(result.losses, expected_losses, rtol=1e-5)
    np.testing.assert_allclose(list(result.coefficients.values()), expected_final, atol=1e-6)
    assert list(result.coefficients) == ["a", "b", "c", "d", "e"]


def test_dynamic_draws_its_terms_from_the_seed() -> None:
    def losses(seed: int) -> np.ndarray:
        base = ["model=dynamic", "backend=numpy", "optimizer.lr=1e-8", "init=fixed"]
        s = settings(*base, f"init.coefficients={START5}", f"seed={seed}")
        problem = s.problem()
        fit = s.model.by_hand(problem.x, problem.y, np, s.seed)
        return np.array([fit.loss_and_grad(np.array(START5))[0] for _ in range(30)])

    assert np.array_equal(losses(0), losses(0))
    assert len(np.unique(losses(0))) == 3  # three graphs, one loss each at a fixed theta
    assert not np.array_equal(losses(0), losses(1))


def test_dynamic_has_three_curves_and_legendre_one() -> None:
    x = np.linspace(-np.pi, np.pi, 50)
    theta = np.array([0.1, 0.2, 0.3, 0.4])
    (legendre,) = _model("legendre3").curves(theta, x)
    np.testing.assert_allclose(
        legendre, 0.1 + 0.2 * 0.5 * (5 * (0.3 + 0.4 * x) ** 3 - 3 * (0.3 + 0.4 * x))
    )
    cubic, x4, x5 = _model("dynamic").curves(np.array([*theta, 0.5]), x)
    np.testing.assert_allclose(x4 - cubic, 0.5 * x**4)
    np.testing.assert_allclose(x5 - cubic, 0.5 * (x**4 + x**5))
    assert len(_model("dynamic").graphs) == 3


def test_dynamics_optimum_minimises_its_loss_averaged_over_its_graphs() -> None:
    dynamic = _model("dynamic")
    problem = settings("model=dynamic").problem()
    best = dynamic.optimum(problem.x, problem.y)
    assert best is not None and best.names == ("a", "b", "c", "d", "e")
    rng = np.random.default_rng(0)
    for nudge in rng.standard_normal((20, 5)) * 1e-4:
        worse = dynamic.loss(best.coefficients + nudge, problem.x, problem.y)
        assert worse > best.loss
    cubic = _model("polynomial3").optimum(problem.x, problem.y)
    assert cubic is not None and best.loss <= cubic.loss  # e = 0 is the cubic
    assert _model("legendre3").optimum(problem.x, problem.y) is None  # not linear


def test_a_legendre_run_records_without_an_optimum(
    store: MlflowClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = polyexp.run(["experiment=tutorial_legendre", "steps=50", "log_every=0"])
    assert result.optimal_loss is None and result.gap_to_optimum is None
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("Result: y = ") and " * P3(" in line and "gap" not in line
    run = store.get_run(result.run_id)
    assert {"a", "b", "c", "d", "final_loss"} <= set(run.data.metrics)
    assert not any(k.startswith(("optimal_", "gap")) for k in run.data.metrics)
    assert run.data.tags["model"] == "legendre3"
    folder = Path(store.download_artifacts(result.run_id, "", str(tmp_path)))
    assert json.loads((folder / "result.json").read_text())["optimal_loss"] is None
    with np.load(folder / "parameters.npz", allow_pickle=False) as saved:
        assert sorted(saved.files) == ["a", "b", "c", "d"]
    assert (folder / "fit.png").stat().st_size > 1000


def test_a_dynamic_run_records_e_and_reruns_bit_for_bit(
    store: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    result = polyexp.run(["model=dynamic", "backend=torch", "optimizer.lr=1e-8", "steps=200"])
    run = store.get_run(result.run_id)
    assert {"e", "optimal_e", "gap_to_optimum"} <= set(run.data.metrics)
    assert (
        run.data.metrics["final_loss"]
        == result.final_loss
        == pytest.approx(
            _model("dynamic").loss(np.array(list(result.coefficients.values())), *_xy())
        )
    )
    folder = Path(store.download_artifacts(result.run_id, "", str(tmp_path)))
    with np.load(folder / "parameters.npz", allow_pickle=False) as saved:
        assert sorted(saved.files) == ["a", "b", "c", "d", "e"]
    identical, verdict = rerun.rerun(result.run_id)
    assert identical, verdict
    contract.assert_newest_run_meets_it(os.environ["MLFLOW_TRACKING_URI"])  # newest: the rerun


def _xy() -> tuple[np.ndarray, np.ndarray]:
    problem = settings().problem()
    return problem.x, problem.y


def _model(name: str) -> Any:
    return settings(f"model={name}").model


@pytest.mark.slow
def test_a_sweep_across_all_four_models_completes(store: MlflowClient, tmp_path: Path) -> None:
    done = polyexp_cli(
        "-m",
        "model=polynomial3,sequential,legendre3,dynamic",
        "backend=numpy",
        "optimizer.lr=1e-8",
        "steps=30",
        "log_every=0",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    parent, *children = runs(store)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs"] == 4
    assert {r.data.tags["model"] for r in children} == set(config.options("model"))
    assert {r.info.status for r in children} == {"FINISHED"}
    summary = done.stdout[done.stdout.index("Sweep summary") :]
    assert all(f"| {m} " in summary for m in config.options("model"))
