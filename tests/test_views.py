"""The grouped summary, the sweep's view state, the dataset input and polyexp-ui's errors."""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import polyexp
from conftest import runs
from polyexp.sweeps import summary, ui
from polyexp.sweeps.sweep import Job

LOSSES = {("sgd", "1e-3"): [1.0, 2.0, 6.0], ("rmsprop", "1e-4"): [3.0, 3.5, 4.0]}


def _jobs() -> list[Job]:
    jobs, num = [], 0
    for (opt, lr), losses in LOSSES.items():
        for seed, loss in enumerate(losses):
            overrides = [f"optimizer={opt}", f"optimizer.lr={lr}", f"seed={seed}", "steps=9"]
            jobs.append(Job(num, overrides, "FINISHED", f"run{num}", loss))
            num += 1
    return jobs


def test_seeds_grouped_mean_std_min_max_as_numpy_and_ranked_by_mean() -> None:
    found = summary.groups(_jobs())
    assert [g.choices for g in found] == [  # means 3.0, then 3.5
        (("optimizer", "sgd"), ("optimizer.lr", "1e-3")),
        (("optimizer", "rmsprop"), ("optimizer.lr", "1e-4")),
    ]
    for group in found:
        values = np.array(LOSSES[tuple(v for _, v in group.choices)])
        assert group.n == 3
        assert group.mean == pytest.approx(values.mean())
        assert group.std == pytest.approx(values.std(ddof=1))
        assert (group.min, group.max) == (values.min(), values.max())
    table = summary.grouped_table(found)
    header = [c.strip() for c in table.splitlines()[0].split("|")[2:-1]]
    assert header == ["optimizer", "optimizer.lr", "seeds", "mean", "std", "min", "max"]


def test_no_grouping_without_seed_and_a_diverged_seed_makes_its_group_last() -> None:
    jobs = [j for j in _jobs() if "seed=0" in j.overrides]
    assert summary.groups(jobs) == []  # seed does not vary
    jobs = _jobs()
    jobs[0] = Job(0, jobs[0].overrides, "DIVERGED", "run0", math.inf)
    found = summary.groups(jobs)
    assert found[-1].mean == math.inf and found[0].mean == pytest.approx(3.5)


def _run(params: dict[str, str], tags: dict[str, str]) -> SimpleNamespace:
    return SimpleNamespace(data=SimpleNamespace(params=params, tags=tags, metrics={}))


def test_the_view_shows_the_varying_keys_sorted_by_final_loss_loss_curves_first() -> None:
    children = [
        _run({"optimizer.lr": lr, "seed": s, "optimizer.name": o}, {"optimizer": o})
        for o in ("sgd", "rmsprop")
        for lr in ("0.001", "1e-06")
        for s in ("0", "1")
    ]
    found = ui.varying(["optimizer", "optimizer.lr", "seed"], children)  # type: ignore[arg-type]
    assert found.columns == ["tags.`optimizer`", "params.`optimizer.lr`", "params.`seed`"]
    assert found.numeric == ["optimizer.lr", "seed"]
    assert found.group_by == [("tag", "optimizer"), ("param", "optimizer.lr")]
    cards = ui.charts(["a", "final_loss", "loss", "train_seconds"], found.numeric, 12)
    state = ui.view_state("tags.x = 'y'", found.columns, cards)
    assert state["selectedColumns"] == [
        "metrics.`final_loss`", "metrics.`gap_to_optimum`", "metrics.`train_seconds`",
        "tags.`diverged`", *found.columns,
    ]  # fmt: skip
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`final_loss`", True)
    assert state["runsHiddenMode"] == "SHOW_ALL"
    shown = [c for c in state["compareRunCharts"] if not c["deleted"]]
    assert [(c["type"], c.get("metricKey")) for c in shown] == [
        ("LINE", "loss"), ("BAR", "final_loss"), ("PARALLEL", None),
    ]  # fmt: skip
    assert shown[0]["scaleType"] == "log"
    assert shown[2]["selectedParams"] == ["optimizer.lr", "seed"]
    hidden = {c["metricKey"] for c in state["compareRunCharts"] if c["deleted"]}
    assert hidden == {"a", "train_seconds"}


def test_a_run_logs_its_data_as_a_training_dataset_and_a_diverged_one_final_loss_nan(
    store: MlflowClient,
) -> None:
    polyexp.run(["backend=numpy", "optimizer.lr=1e-3", "steps=400", "log_every=10"])
    (run,) = runs(store)
    (data,) = run.inputs.dataset_inputs
    assert data.dataset.name == "sin(x) n=2000 [-3.14159, 3.14159]"
    assert [(t.key, t.value) for t in data.tags] == [("mlflow.data.context", "training")]
    assert run.data.tags["diverged"] == "true"
    assert math.isnan(run.data.metrics["final_loss"])  # never 1.7976931348623157e308
    experiment = store.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def _ui(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("polyexp-ui")), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def test_polyexp_ui_refuses_a_missing_store_and_a_port_in_use_in_one_line(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'none.db'}"}
    done = _ui(env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("polyexp-ui: error: MLFLOW_TRACKING_URI=sqlite:///")
    assert "no such database" in done.stderr and len(done.stderr.splitlines()) == 1
    sqlite3.connect(tmp_path / "some.db").close()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'some.db'}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = _ui("--port", str(taken.getsockname()[1]), env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("polyexp-ui: error: cannot listen on 127.0.0.1:")
    assert len(done.stderr.splitlines()) == 1
