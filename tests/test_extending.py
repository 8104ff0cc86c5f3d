"""A user's own model and optimizer, from their own folder, exactly as the README's "Extending
polyexp" shows: examples/extending copied into a folder of the user's, picked up with Hydra's
--config-dir and PYTHONPATH, trained and recorded like polyexp's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ARTIFACTS, ROOT, runs

pytestmark = pytest.mark.slow


def _polyexp(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`PYTHONPATH=my_polyexp polyexp --config-dir my_polyexp/conf ARGS` in `work`."""
    return subprocess.run(
        [sys.executable, "-m", "polyexp", "--config-dir", "my_polyexp/conf", *args],
        cwd=work,
        env={**os.environ, "PYTHONPATH": "my_polyexp"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_users_model_and_optimizer_train_and_record_like_ours(
    store: MlflowClient, tmp_path: Path
) -> None:
    shutil.copytree(ROOT / "examples" / "extending", tmp_path / "my_polyexp")
    assert not (tmp_path / "my_polyexp" / "polyexp").exists()  # nothing of ours is in there

    done = _polyexp(tmp_path, "model=sine", "steps=300", "log_every=0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("Result: y = sine(a=")
    (run,) = runs(store)
    assert run.info.status == "FINISHED"
    assert (run.data.tags["model"], run.data.tags["backend"]) == ("sine", "autograd")
    assert run.data.params["model._target_"] == "sine.Sine"
    assert {"a", "b", "c", "d", "final_loss", "train_seconds"} <= set(run.data.metrics)
    assert run.data.metrics["final_loss"] < 1e-3  # it fits sin(x): a sin(b x + c) + d can
    assert not any(k.startswith("optimal_") for k in run.data.metrics)  # no closed form
    assert {a.path for a in store.list_artifacts(run.info.run_id)} == ARTIFACTS
    assert len(store.get_metric_history(run.info.run_id, "loss")) == 300

    # The user's optimizer runs on every backend, with the user's bounds checked.
    done = _polyexp(tmp_path, "optimizer=sign_sgd", "backend=numpy", "steps=50", "log_every=0")
    assert done.returncode == 0, done.stderr
    assert runs(store)[-1].data.tags["optimizer"] == "sign_sgd"
    refused = _polyexp(tmp_path, "optimizer=sign_sgd", "optimizer.lr=-1")
    assert refused.stderr.strip() == "polyexp: error: optimizer.lr=-1: expected a number > 0"

    # What a backend needs and the model lacks is refused in one line, before anything runs.
    refused = _polyexp(tmp_path, "model=sine", "backend=numpy")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "polyexp: error: model=sine has no gradient by hand (Model.by_hand), which "
        "backend=numpy needs; choose backend=autograd"
    )
    assert len(runs(store)) == 2
