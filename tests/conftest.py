"""Shared fixtures: a real MLflow store in a temp folder, one experiment per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

import polyexp

ROOT = Path(__file__).resolve().parents[1]
# What every run records as artifacts.
ARTIFACTS = {
    "config.yaml",
    "overrides.yaml",
    "result.json",
    "parameters.npz",
    "loss.png",
    "fit.png",
}


@pytest.fixture(scope="session")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the session: creating a fresh one costs ~1.5 s of migrations."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def store(store_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    """Points polyexp (in this process and in subprocesses) at the test store, with a fresh
    experiment per test; yields a client to read the record back."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    client = MlflowClient(store_uri)
    yield client


class Payload:
    """Pickled, it runs `open(path, "w")` when unpickled: the code a malicious file would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (str(self.path), "w"))


def runs(client: MlflowClient) -> list:
    """Every run of the current test's experiment, oldest first."""
    experiment = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    if experiment is None:
        return []
    found = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return list(found)


def default_sigint() -> None:
    """For a child that must take Ctrl-C: a background job of a non-interactive shell (how CI
    steps often run) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def polyexp_cli(
    *args: str, cwd: Path, timeout: float = 300, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """`python -m polyexp ARGS` in a real process (the test store comes through the env);
    `prefix` runs it through another command, e.g. setpriv as another user."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "polyexp", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- training without recording: the one harness every test shares ----------------------------


def settings(*overrides: str) -> Any:
    """The checked settings of `polyexp OVERRIDES...` (polyexp.config.Settings)."""
    from polyexp import config

    return config.check(polyexp.compose(list(overrides)))


def build_fit(*overrides: str) -> Any:
    """The run's parts built, ready to step (a polyexp.parts.backends.Fit)."""
    s = settings(*overrides)
    return s.backend.build(s, s.problem())


def trained(*overrides: str) -> Any:
    """`polyexp.train(OVERRIDES)` quietly (log_every=0): a polyexp.training.Trained."""
    return polyexp.train([*overrides, "log_every=0"])
