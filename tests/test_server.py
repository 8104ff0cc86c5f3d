"""A shared tracking server: a real `mlflow server` on a real PostgreSQL, and the failures of a
server that is down or never answers.

One PostgreSQL and one server serve the whole module (starting them costs ~15 s)."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from mlflow.tracking import MlflowClient

import services
from conftest import ARTIFACTS, polyexp_cli
from polyexp.record import journal, store
from polyexp.sweeps import sweep

pytestmark = pytest.mark.slow

FAST = ("backend=numpy", "steps=40", "log_every=0")


@pytest.fixture(scope="module")
def server() -> Iterator[services.Server]:
    lacking = services.missing()
    if lacking:
        pytest.skip(f"needs {', '.join(lacking)}")
    with services.postgres() as database, services.mlflow_server(database) as running:
        yield running


@pytest.fixture
def on_server(server: services.Server, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """Points polyexp at the server, in a fresh experiment; a client on the server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"server-{uuid.uuid4().hex[:8]}")
    return MlflowClient(server.uri)


def test_a_parallel_sweep_through_the_server_keeps_every_run_metric_and_artifact(
    server: services.Server, on_server: MlflowClient, tmp_path: Path
) -> None:
    done = polyexp_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "seed=range(4)", *FAST,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    experiment = on_server.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    found = on_server.search_runs([experiment.experiment_id])
    parents = [r for r in found if r.data.tags.get("sweep") == "parent"]
    children = [r for r in found if sweep.PARENT_TAG in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(int(r.data.params["seed"]) for r in children) == [0, 1, 2, 3]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags[sweep.PARENT_TAG] == parents[0].info.run_id
        history = on_server.get_metric_history(child.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(40))
        assert {a.path for a in on_server.list_artifacts(child.info.run_id)} == ARTIFACTS
        # The server proxies artifacts into its own folder: they are really there.
        assert child.info.artifact_uri.startswith("mlflow-artifacts:")
        stored = {p.name for p in server.artifacts.rglob("*") if child.info.run_id in str(p)}
        assert stored >= ARTIFACTS
    assert {"summary.md", "losses.png"} <= {
        a.path for a in on_server.list_artifacts(parents[0].info.run_id)
    }

    # ...and the runs and every step's loss are rows in PostgreSQL, not in some local file.
    with psycopg2.connect(server.backend_store_uri.replace("+psycopg2", "")) as db:
        cursor = db.cursor()
        cursor.execute(
            "SELECT count(*) FROM runs WHERE experiment_id = %s", (int(experiment.experiment_id),)
        )
        assert cursor.fetchone()[0] == 5  # the parent and four jobs
        cursor.execute(
            "SELECT count(*) FROM metrics WHERE key = 'loss' AND run_uuid = ANY(%s)",
            ([c.info.run_id for c in children],),
        )
        assert cursor.fetchone()[0] == 4 * 40
    assert not list(tmp_path.glob("outputs/*.db")) and not (tmp_path / "mlruns").exists()


def test_a_server_that_is_down_fails_within_seconds_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"http://127.0.0.1:{services.free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    done = polyexp_cli("backend=numpy", "steps=5", cwd=tmp_path)
    took = time.monotonic() - start
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"polyexp: error: MLFLOW_TRACKING_URI={uri}: cannot reach the tracking server "
        "(connection refused: nothing listens there); start the server or set "
        "MLFLOW_TRACKING_URI to a store that exists (README: Sharing a tracking server)"
    ], done.stderr
    assert took < 20, took  # MLflow's own retries would take about four minutes
    assert "Result" not in done.stdout  # nothing trained


def test_a_sweep_on_a_server_that_never_answers_stops_before_its_first_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        start = time.monotonic()
        done = polyexp_cli("-m", "seed=0,1", "backend=numpy", "steps=5", cwd=tmp_path)
        took = time.monotonic() - start
    assert done.returncode != 0
    assert "#0" not in done.stdout + done.stderr  # Hydra launched no job
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"polyexp: error: MLFLOW_TRACKING_URI={uri}: cannot reach")
    assert "no answer within the time limit" in line
    assert took < 30, took  # 3 tries of 2 s and 1 + 2 s of backoff, plus start-up


def test_a_store_password_is_never_written_to_a_file(
    server: services.Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The test database trusts every local connection, so a password in the URI is accepted.
    secret = f"pw-{uuid.uuid4().hex[:8]}"
    uri = server.backend_store_uri.replace("postgres@", f"postgres:{secret}@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"secret-{uuid.uuid4().hex[:8]}")

    with journal.start_run("secret", {}, {}, folder=tmp_path / "record") as recorded:
        written = "".join(p.read_text() for p in (tmp_path / "record").rglob("*.json"))
        assert written and secret not in written  # the run's journal, while the run is open
        assert store.from_disk(store.on_disk(uri), tmp_path) == uri  # sync reaches the store
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        with pytest.raises(store.StoreError, match=r"without its password.*MLFLOW_TRACKING_URI"):
            store.from_disk(store.on_disk(uri), tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert MlflowClient(uri).get_run(recorded.run_id).info.status == "FINISHED"

    done = polyexp_cli("-m", "seed=0,1", *FAST, cwd=tmp_path)  # parent.json, job folders
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout + done.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "parent.closed.json" for p in files)
    assert not [p for p in files if secret.encode() in p.read_bytes()]
