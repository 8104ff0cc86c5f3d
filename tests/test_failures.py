"""Nothing lost when a process, a worker or the server dies: real processes, real signals, a
real `mlflow server` killed mid-run; `polyexp-sync` completes every record afterwards."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import services
from conftest import ARTIFACTS, runs
from polyexp.record import store, sync

pytestmark = pytest.mark.slow

FOREVER = ("backend=numpy", "steps=100000000", "log_every=1000")


def _start(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "polyexp", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _sync(*folders: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    sync_cli = Path(sys.executable).with_name("polyexp-sync")
    return subprocess.run(
        [str(sync_cli), *map(str, folders)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _wait_for_losses(client: MlflowClient, at_least: int, timeout: float = 120) -> str:
    """The id of the newest RUNNING run once the store has `at_least` of its losses."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in runs(client):
            running = run.info.status == "RUNNING" and "polyexp.pid" in run.data.tags
            if running and len(client.get_metric_history(run.info.run_id, "loss")) >= at_least:
                return str(run.info.run_id)
        time.sleep(0.3)
    raise AssertionError("the store never showed the run's losses while it trained")


def _killed_mid_run(client: MlflowClient, cwd: Path, at_least: int) -> str:
    """A long run SIGKILLed once the store has `at_least` of its losses; its run id."""
    process = _start(*FOREVER, cwd=cwd)
    try:
        run_id = _wait_for_losses(client, at_least)
        process.kill()
        process.wait(timeout=30)
    finally:
        process.kill()
    return run_id


def test_a_run_killed_by_sigkill_keeps_its_losses_and_polyexp_sync_closes_it(
    store: MlflowClient, tmp_path: Path
) -> None:
    # The store shows the losses while the run trains (not only at its end), so SIGKILL (the
    # OOM killer) loses at most the last batch.
    run_id = _killed_mid_run(store, tmp_path, 3000)
    (journal,) = sync.find([tmp_path / "outputs"])
    assert journal.parent.parent.parent.name == "runs"  # in the run's Hydra folder
    journaled = len(sync.Journal(journal).losses())
    stored = len(store.get_metric_history(run_id, "loss"))
    assert journaled >= stored >= 3000
    assert store.get_run(run_id).info.status == "RUNNING"

    done = _sync(cwd=tmp_path)  # no folder: everything under outputs/
    assert done.returncode == 0, done.stderr
    assert f"run {run_id} completed" in done.stdout and "KILLED" in done.stdout
    run = store.get_run(run_id)
    assert run.info.status == "KILLED"
    assert "ended without closing the run" in run.data.tags[sync.CLOSED_BY]
    history = sorted(m.step for m in store.get_metric_history(run_id, "loss"))
    assert history == list(range(journaled))  # every journaled loss, once
    again = _sync(cwd=tmp_path)  # idempotent: nothing left to do
    assert again.returncode == 0 and "completed" not in again.stdout, again.stdout
    assert len(store.get_metric_history(run_id, "loss")) == journaled


def test_a_zombie_left_by_a_dead_process_is_closed_by_the_next_sweep(
    store: MlflowClient, tmp_path: Path
) -> None:
    run_id = _killed_mid_run(store, tmp_path, 1)
    done = subprocess.run(
        [sys.executable, "-m", "polyexp", "-m", "seed=1", "backend=numpy", "steps=20"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "closed 1 runs left RUNNING by processes that are gone" in done.stdout
    zombie = store.get_run(run_id)
    assert zombie.info.status == "KILLED"
    assert zombie.data.tags[sync.CLOSED_BY].startswith("a sweep's resume: its process")
    assert not [r for r in runs(store) if r.info.status == "RUNNING"]


def test_the_plot_worker_dies_with_a_sigkilled_polyexp(store: MlflowClient, tmp_path: Path) -> None:
    # Job 0 records (the forked plot worker starts and is kept), job 1 trains on.
    process = _start("-m", "steps=200,100000000", "backend=numpy", "log_every=1000", cwd=tmp_path)
    try:
        _wait_for_losses(store, 1000)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        assert children, "no plot worker"
        process.kill()
        process.wait(timeout=30)
    finally:
        process.kill()
    deadline = time.monotonic() + 10
    while any(sync.alive(int(pid)) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(sync.alive(int(pid)) for pid in children), "an orphaned plot worker lives on"
    done = _sync(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not [r for r in runs(store) if r.info.status == "RUNNING"]  # job 1 and the parent


def test_a_tracking_server_that_dies_mid_run_stops_it_within_the_bound_in_one_line(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'server.db'}"
    port = services.free_port()
    env = {**os.environ, "POLYEXP_STORE_TIMEOUT": "4", "MLFLOW_EXPERIMENT_NAME": "failures"}
    env["MLFLOW_TRACKING_URI"] = uri = f"http://127.0.0.1:{port}"
    work = tmp_path / "work"
    work.mkdir()
    with services.mlflow_server(db, port=port):
        client = MlflowClient(uri)
        process = _start(*FOREVER, cwd=work, env=env)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                found = client.search_runs(
                    [e.experiment_id for e in client.search_experiments()], "", max_results=5
                )
                if found and client.get_metric_history(found[0].info.run_id, "loss"):
                    break
                time.sleep(0.3)
            run_id = found[0].info.run_id
        except BaseException:
            process.kill()
            raise
    killed = time.monotonic()  # the server is gone
    try:
        _, stderr = process.communicate(timeout=90)
    finally:
        process.kill()
    took = time.monotonic() - killed
    assert process.returncode != 0
    assert took < 4 + 20, took  # the bound, a retry in flight, and the exit
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"polyexp: error: MLFLOW_TRACKING_URI={uri}: cannot log the losses")
    assert "polyexp-sync" in line and "record" in line
    (journal,) = sync.find([work / "outputs"])
    journaled = len(sync.Journal(journal).losses())

    with services.mlflow_server(db, port=port):  # the store is back
        done = _sync(cwd=work)
        assert done.returncode == 0, done.stderr
        run = MlflowClient(uri).get_run(run_id)
        assert run.info.status == "FAILED"  # as it really ended: stopped by the store
        assert run.data.tags["error"].startswith("StoreFailed")
        history = MlflowClient(uri).get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(journaled))


def test_two_commands_on_a_fresh_sqlite_store_never_race_and_a_half_migrated_one_is_one_line(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "fresh"}
    both = [_start("backend=numpy", "steps=20", cwd=tmp_path, env=env) for _ in range(2)]
    for process in both:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    assert [r.info.status for r in runs_of(uri)] == ["FINISHED", "FINISHED"]
    assert {a.path for a in MlflowClient(uri).list_artifacts(runs_of(uri)[0].info.run_id)} == (
        ARTIFACTS
    )

    half = tmp_path / "half.db"
    with sqlite3.connect(half) as db:
        db.execute("CREATE TABLE _alembic_tmp_runs (x int)")
    with pytest.raises(store.StoreError, match=r"half-migrated .* mlflow db upgrade"):
        store.check_sqlite(f"sqlite:///{half}", half)


def runs_of(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fresh")
    return list(client.search_runs([experiment.experiment_id]))


def _first_run_with_losses(client: MlflowClient, timeout: float = 120) -> str:
    """The id of the first run of any experiment whose losses the store (a server) has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = [e.experiment_id for e in client.search_experiments()]
        for run in client.search_runs(ids, "attributes.status = 'RUNNING'", max_results=10):
            ours = "polyexp.pid" in run.data.tags
            if ours and client.get_metric_history(run.info.run_id, "loss"):
                return str(run.info.run_id)
        time.sleep(0.3)
    raise AssertionError("the store never showed a run's losses while it trained")


def test_a_server_that_dies_during_job_0_stops_the_sweep_within_the_bound_and_sync_closes_all(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'server.db'}"
    port = services.free_port()
    env = {**os.environ, "POLYEXP_STORE_TIMEOUT": "4", "MLFLOW_EXPERIMENT_NAME": "sweep-failures"}
    env["MLFLOW_TRACKING_URI"] = uri = f"http://127.0.0.1:{port}"
    work = tmp_path / "work"
    work.mkdir()
    with services.mlflow_server(db, port=port):
        process = _start(
            "-m", "steps=100000000,20,30", "backend=numpy", "log_every=1000", cwd=work, env=env
        )
        try:
            job_0 = _first_run_with_losses(MlflowClient(uri))
        except BaseException:
            process.kill()
            raise
    killed = time.monotonic()  # the server is gone while job 0 trains
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    took = time.monotonic() - killed
    assert process.returncode != 0
    assert took < 4 + 20, took  # one bound for the whole sweep, never one a job
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"polyexp: error: MLFLOW_TRACKING_URI={uri}: cannot log the losses")
    assert "the run's full record is kept in" in line and "polyexp-sync" in line
    assert "#1 :" not in stdout and "#2 :" not in stdout  # jobs 1 and 2 never started
    (journal,) = sync.find([work / "outputs"])
    journaled = len(sync.Journal(journal).losses())
    assert str(journal) in line

    with services.mlflow_server(db, port=port):  # the store is back
        done = _sync(cwd=work)
        assert done.returncode == 0, done.stderr
        assert "the sweep's parent run" in done.stdout and "closed: FAILED" in done.stdout
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("sweep-failures")
        found = client.search_runs([experiment.experiment_id])
        assert sorted(r.info.status for r in found) == ["FAILED", "FAILED"]  # parent and job 0
        run = client.get_run(job_0)
        assert run.data.tags["error"].startswith("StoreFailed")
        history = client.get_metric_history(job_0, "loss")
        assert sorted(m.step for m in history) == list(range(journaled))
        again = _sync(cwd=work)
        assert again.returncode == 0 and "closed" not in again.stdout, again.stdout


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(150)
"""


def test_sqlite_locked_by_another_process_mid_run_is_one_line_and_sync_completes_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "store.db"
    env = {**os.environ, "POLYEXP_STORE_TIMEOUT": "4", "MLFLOW_EXPERIMENT_NAME": "locked"}
    env["MLFLOW_TRACKING_URI"] = uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    process = _start(*FOREVER, cwd=tmp_path, env=env)
    holder = None
    try:
        run_id = _first_run_with_losses(client)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(db)], stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        locked = time.monotonic()  # another process holds the write lock for 150 s
        _, stderr = process.communicate(timeout=120)
        took = time.monotonic() - locked
    finally:
        process.kill()
        if holder is not None:
            holder.kill()  # the lock is released
            holder.wait()
    assert process.returncode != 0
    assert took < 4 + 20, took
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"polyexp: error: MLFLOW_TRACKING_URI={uri}: cannot "), line
    assert "another process holds the SQLite database's write lock for 4 s" in line, line
    assert "polyexp-sync" in line
    (journal,) = sync.find([tmp_path / "outputs"])
    journaled = len(sync.Journal(journal).losses())
    assert str(journal) in line

    done = _sync(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert "write lock" in run.data.tags["error"]
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(journaled))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MB filesystem (tmpfs), unmounted afterwards; skips where mounts are refused."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip() or 'refused'}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_disk_under_the_store_is_one_line_and_sync_completes_the_run_once_freed(
    small_disk: Path, tmp_path: Path
) -> None:
    db = small_disk / "mlflow.db"  # the store on the small disk, the journal elsewhere
    # A full disk is not waited out: a bound of 10 minutes would show.
    env = {**os.environ, "POLYEXP_STORE_TIMEOUT": "600", "MLFLOW_EXPERIMENT_NAME": "full"}
    env["MLFLOW_TRACKING_URI"] = uri = f"sqlite:///{db}"
    work = tmp_path / "work"
    work.mkdir()
    start = time.monotonic()
    process = _start(*FOREVER, cwd=work, env=env)
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    took = time.monotonic() - start
    assert process.returncode != 0
    assert took < 60, took  # start-up, 4 MB of losses, then the line at once
    (line,) = stderr.strip().splitlines()  # no SQLAlchemy traceback
    assert line.startswith(f"polyexp: error: MLFLOW_TRACKING_URI={uri}: cannot "), line
    assert "the disk is full" in line and "polyexp-sync" in line, line
    (journal,) = sync.find([work / "outputs"])
    journaled = len(sync.Journal(journal).losses())
    assert str(journal) in line
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("full").experiment_id])
    assert run.info.status == "RUNNING"
    assert len(client.get_metric_history(run.info.run_id, "loss")) < journaled

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    done = _sync(cwd=work)  # the disk has room again
    assert done.returncode == 0, done.stderr
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FAILED"
    assert "the disk is full" in run.data.tags["error"]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(journaled))
