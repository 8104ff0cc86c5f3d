"""The `polyexp` command end to end: a real process, a real MLflow store, read back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import contract
import pytest
from mlflow.tracking import MlflowClient

from conftest import default_sigint, polyexp_cli, runs

pytestmark = pytest.mark.slow


def test_a_run_prints_like_the_seed_and_meets_the_record_contract(
    store: MlflowClient, tmp_path: Path
) -> None:
    done = polyexp_cli("backend=numpy", "steps=250", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, *lines = done.stdout.splitlines()
    (run,) = runs(store)
    # First the store it records into (the test's, from MLFLOW_TRACKING_URI), then the seed's lines.
    assert (
        where == f"polyexp: recording run {run.info.run_id} in {os.environ['MLFLOW_TRACKING_URI']}"
    )
    assert [line.split()[0] for line in lines[:2]] == ["99", "199"]
    assert lines[-1].startswith("Result: y = ") and " x^3  (gap to optimum " in lines[-1]
    assert run.info.status == "FINISHED"
    assert len(store.get_metric_history(run.info.run_id, "loss")) == 250
    assert list(
        (tmp_path / "outputs" / "runs").glob("*/*/.hydra/config.yaml")
    )  # Hydra's own record
    assert not list((tmp_path / "outputs").rglob("*.pickle"))  # nothing for --experimental-rerun
    contract.assert_newest_run_meets_it(os.environ["MLFLOW_TRACKING_URI"])


def test_the_console_script_runs_a_preset(store: MlflowClient, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("polyexp")
    done = subprocess.run(
        [str(script), "experiment=seed_nn", "steps=5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (run,) = runs(store)
    assert (run.data.tags["model"], run.data.tags["optimizer"]) == ("sequential", "manual_sgd")
    assert run.data.params["optimizer.lr"] == "1e-06"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_ends_the_run_killed_with_the_steps_so_far(
    stop: signal.Signals, store: MlflowClient, tmp_path: Path
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "polyexp", "backend=numpy", "steps=100000000", "log_every=0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # a shell's background job would ignore it
    )
    try:
        deadline = time.monotonic() + 120
        while not runs(store) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.3)  # let it train a while (~20k numpy steps: all of them are logged)
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()  # never leave it running if the test fails
    assert process.returncode != 0
    name = "Ctrl-C" if stop == signal.SIGINT else "SIGTERM"
    assert stderr.strip().splitlines()[-1] == (
        f"polyexp: interrupted by {name}: runs in progress end KILLED"
    ), stderr
    assert "Traceback" not in stderr
    (run,) = runs(store)
    assert run.info.status == "KILLED"
    assert len(store.get_metric_history(run.info.run_id, "loss")) > 100


def test_help_lists_every_group_and_option(tmp_path: Path) -> None:
    done = polyexp_cli("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("polyexp: fit y = sin(x)")
    assert "optimizer: adam, manual_sgd, rmsprop, sgd" in done.stdout
    assert "$MLFLOW_TRACKING_URI" in done.stdout
