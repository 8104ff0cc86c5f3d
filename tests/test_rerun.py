"""`polyexp-rerun RUN_ID` reruns a run from its MLflow record and says whether it repeated."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import polyexp
from conftest import runs
from polyexp.record.tracking import loss_history
from polyexp.sweeps import rerun
from polyexp.sweeps.rerun import RERUN_OF

SCRIPT = Path(sys.executable).with_name("polyexp-rerun")
CONFIG = ["model=sequential", "optimizer=rmsprop", "steps=200", "log_every=0"]


def _rerun_in_process(
    run_id: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[str], list[str]]:
    with pytest.raises(SystemExit) as exit:
        rerun.main([run_id])
    out, err = capsys.readouterr()
    return int(exit.value.code or 0), out.splitlines(), err.splitlines()


def _command(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment.pop("MLFLOW_EXPERIMENT_NAME", None)  # a rerun must find the experiment itself
    environment.update(env)
    return subprocess.run(
        [*args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(autouse=True)
def _quiet_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # rerun sets it too


@pytest.mark.slow
def test_rerun_repeats_a_run_bit_for_bit_as_a_new_tagged_run_beside_it(
    store: MlflowClient, tmp_path: Path
) -> None:
    source = polyexp.run(["backend=torch", *CONFIG])
    done = _command(str(SCRIPT), source.run_id, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    verdict = done.stdout.splitlines()[-1]
    assert verdict.startswith("polyexp-rerun: identical: run ")
    assert f"repeats run {source.run_id} bit for bit (200 losses" in verdict
    first, again = runs(store)  # the rerun landed in the source run's experiment
    assert first.info.run_id == source.run_id and again.data.tags[RERUN_OF] == source.run_id
    assert again.info.run_name == first.info.run_name and again.info.status == "FINISHED"
    assert again.data.tags["command"] == f"{SCRIPT} {source.run_id}"
    assert again.data.params == first.data.params
    assert np.array_equal(loss_history(store, again.info.run_id), source.losses)


@pytest.mark.slow
def test_rerun_of_a_sweep_job_in_a_store_elsewhere(tmp_path: Path) -> None:
    """A job of a multirun, recorded in a store that is not the default one, from another cwd."""
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere' / 'shared.db'}"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sweep = _command(
        sys.executable,
        "-m",
        "polyexp",
        "-m",
        "seed=0,1",
        "backend=numpy",
        *CONFIG,
        cwd=tmp_path / "a",
        MLFLOW_TRACKING_URI=elsewhere,
    )
    assert sweep.returncode == 0, sweep.stderr
    client = MlflowClient(elsewhere)
    experiment = client.get_experiment_by_name("polyexp")
    jobs = client.search_runs([experiment.experiment_id], "params.seed = '1'")
    (job,) = jobs

    short = job.info.run_id[:8]  # as the sweep summary prints it
    assert f"| {short} |" in sweep.stdout
    done = _command(str(SCRIPT), short, cwd=tmp_path / "b", MLFLOW_TRACKING_URI=elsewhere)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("polyexp-rerun: identical: ")
    (again,) = client.search_runs(
        [experiment.experiment_id], f"tags.`{RERUN_OF}` = '{job.info.run_id}'"
    )
    assert again.data.params["seed"] == "1" and again.info.run_name == job.info.run_name
    assert not (tmp_path / "b" / "outputs" / "mlflow.db").exists()  # nothing in the default store


def test_rerun_with_another_thread_count_is_reported_different(
    store: MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the guarantee leaves out: torch splits its sums by thread count, so bits change."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        source = polyexp.run(["backend=torch", "data.n=100000", "optimizer.lr=1e-9", "steps=20"])
        torch.set_num_threads(1)
        code, out, _ = _rerun_in_process(source.run_id, capsys)
    finally:
        torch.set_num_threads(before)
    assert code == 1, out
    assert out[-1].startswith("polyexp-rerun: DIFFERENT: ") and "first at step" in out[-1]
    assert "threads.torch 2 -> 1" in out[-1]


def test_a_history_one_bit_off_is_reported_with_its_first_step(
    store: MlflowClient, store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = polyexp.run(["backend=numpy", *CONFIG])
    capsys.readouterr()
    nudged = float(np.nextafter(source.losses[17], np.inf))  # the smallest possible change
    with sqlite3.connect(store_uri.removeprefix("sqlite:///")) as db:
        db.execute(
            "UPDATE metrics SET value = ? WHERE run_uuid = ? AND key = 'loss' AND step = 17",
            (nudged, source.run_id),
        )
    code, out, _ = _rerun_in_process(source.run_id, capsys)
    assert code == 1
    assert out[-1].startswith("polyexp-rerun: DIFFERENT: ")
    assert f"first at step 17: recorded {nudged!r}, rerun {float(source.losses[17])!r}" in out[-1]


def test_rerun_lands_in_the_experiment_named_by_the_environment(
    store: MlflowClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = polyexp.run(["backend=numpy", *CONFIG])
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", os.environ["MLFLOW_EXPERIMENT_NAME"] + "-again")
    code, out, _ = _rerun_in_process(source.run_id, capsys)
    assert code == 0, out
    (again,) = runs(store)
    assert again.data.tags[RERUN_OF] == source.run_id


@pytest.mark.parametrize("status", ["KILLED", "FAILED"])
def test_an_unfinished_run_cannot_be_rerun(
    status: str, store: MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = store.create_experiment(f"{os.environ['MLFLOW_EXPERIMENT_NAME']}-{status}")
    run = store.create_run(experiment)
    store.set_terminated(run.info.run_id, status)
    code, out, err = _rerun_in_process(run.info.run_id, capsys)
    assert code == 2 and out == []
    assert err == [
        f"polyexp-rerun: error: run {run.info.run_id} ended {status}; only a FINISHED run has "
        "a whole history to compare against"
    ]


def test_a_run_not_made_by_polyexp_cannot_be_rerun(
    store: MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = store.create_experiment(f"{os.environ['MLFLOW_EXPERIMENT_NAME']}-other")
    run = store.create_run(experiment)
    store.set_terminated(run.info.run_id, "FINISHED")
    code, _, err = _rerun_in_process(run.info.run_id, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"polyexp-rerun: error: run {run.info.run_id} has no readable ")


def test_an_unknown_run_id_is_one_line_and_exit_status_2(
    store: MlflowClient, store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for unknown in ("0123456789abcdef", "zz%"):
        code, out, err = _rerun_in_process(unknown, capsys)
        assert code == 2 and out == []
        assert err == [
            f"polyexp-rerun: error: no run id is or starts with {unknown!r} in the store "
            f"{store_uri} (a run in another store: set MLFLOW_TRACKING_URI)"
        ]
    assert runs(store) == []


def test_a_unique_prefix_names_its_run_and_an_ambiguous_one_is_one_line(
    store: MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = store.create_experiment(f"{os.environ['MLFLOW_EXPERIMENT_NAME']}-prefix")
    ids: list[str] = []
    while len({i[0] for i in ids}) == len(ids):  # until two ids share their first character
        ids.append(store.create_run(experiment).info.run_id)
    store.set_terminated(ids[-1], "FINISHED")
    # A unique prefix (any case) resolves to the whole id: the error names the full run.
    code, _, err = _rerun_in_process(ids[-1][:8].upper(), capsys)
    assert code == 2 and err[0].startswith(f"polyexp-rerun: error: run {ids[-1]} has no readable ")
    shared = ids[-1][0]
    code, out, err = _rerun_in_process(shared, capsys)
    assert code == 2 and out == [] and len(err) == 1
    assert err[0].startswith(f"polyexp-rerun: error: the run id prefix {shared!r} is ambiguous: ")
    assert err[0].endswith("all start with it; give more of the id")


def test_without_a_store_it_says_so_and_creates_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = _rerun_in_process("0123456789abcdef", capsys)
    assert code == 2
    assert err == [
        f"polyexp-rerun: error: no MLflow store at {tmp_path / 'outputs' / 'mlflow.db'} "
        "(set MLFLOW_TRACKING_URI)"
    ]
    assert not (tmp_path / "outputs").exists()


def test_a_recorded_config_that_cannot_run_here_is_one_line_and_exit_status_2(
    store: MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    source = polyexp.run(["backend=numpy", *CONFIG])
    capsys.readouterr()
    folder = Path(store.get_run(source.run_id).info.artifact_uri.removeprefix("file://"))
    recorded = folder / "config.yaml"
    recorded.write_text(recorded.read_text().replace("steps: 200", "steps: 0"))
    code, out, err = _rerun_in_process(source.run_id, capsys)
    assert code == 2 and out == []
    assert err == [
        f"polyexp-rerun: error: run {source.run_id} cannot run here: "
        "steps=0: expected a whole number >= 1"
    ]
    assert len(runs(store)) == 1  # nothing recorded for it
