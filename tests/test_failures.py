"""Nothing lost when a process, a worker or the server dies: real processes, real signals, a
real `mlflow server` killed mid-run; `polyexp-sync` completes every record afterwards."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
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


def _sync_here(
    *folders: Path, uri: str, experiment: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    """`polyexp-sync FOLDERS` in this process (its start-up, ~3 s, saved): exit status, stdout."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            sync.main([str(folder) for folder in folders])
        except SystemExit as done:
            return int(done.code or 0), out.getvalue()
    return 0, out.getvalue()


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


def _runs_with_losses(client: MlflowClient, count: int, timeout: float = 120) -> list[str]:
    """The ids of the RUNNING polyexp runs of any experiment once `count` of them have losses in
    the store (a server)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(ids, "attributes.status = 'RUNNING'", max_results=10)
        ours = [r.info.run_id for r in found if "polyexp.pid" in r.data.tags]
        if sum(bool(client.get_metric_history(i, "loss")) for i in ours) >= count:
            return ours
        time.sleep(0.3)
    raise AssertionError("the store never showed the runs' losses while they trained")


def test_a_tracking_server_that_dies_stops_a_run_and_a_sweep_within_the_bound_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One server, killed while a single run and job 0 of a 3-job sweep train on it.
    db = f"sqlite:///{tmp_path / 'server.db'}"
    port = services.free_port()
    uri = f"http://127.0.0.1:{port}"
    base = {**os.environ, "POLYEXP_STORE_TIMEOUT": "4", "MLFLOW_TRACKING_URI": uri}
    single, swept = tmp_path / "single", tmp_path / "sweep"
    started = []
    with services.mlflow_server(db, port=port):
        client = MlflowClient(uri)
        try:
            sweep = ("-m", "steps=100000000,20,30", "backend=numpy", "log_every=1000")
            for work, args in ((single, FOREVER), (swept, sweep)):
                work.mkdir()
                env = {**base, "MLFLOW_EXPERIMENT_NAME": work.name}
                started.append(_start(*args, cwd=work, env=env))
            _runs_with_losses(client, 2)  # the run and job 0 train, their losses in the store
        except BaseException:
            for process in started:
                process.kill()
            raise
    killed = time.monotonic()  # the server is gone
    outputs = []
    for process in started:
        try:
            outputs.append(process.communicate(timeout=120))
        finally:
            process.kill()
        assert process.returncode != 0, outputs[-1]
    took = time.monotonic() - killed
    assert took < 4 + 20, took  # the bound, a call in flight, and the exit; once for the sweep
    for (_, stderr), work in zip(outputs, (single, swept), strict=True):
        (line,) = stderr.strip().splitlines()
        assert line.startswith(
            f"polyexp: error: MLFLOW_TRACKING_URI={uri}: cannot log the losses: connection "
            "refused: nothing listens there for 4 s (POLYEXP_STORE_TIMEOUT sets the limit); "
        ), line
        (journal,) = sync.find([work / "outputs"])
        assert f"the run's full record is kept in {journal} (upload it with: polyexp-sync" in line
    assert "#1 :" not in outputs[1][0] and "#2 :" not in outputs[1][0]  # jobs 1, 2 never began
    journaled = {
        work.name: len(sync.Journal(j).losses())
        for work in (single, swept)
        for j in sync.find([work / "outputs"])
    }

    with services.mlflow_server(db, port=port):  # the store is back
        folders = (single / "outputs", swept / "outputs")
        status, said = _sync_here(*folders, uri=uri, experiment="sweep", monkeypatch=monkeypatch)
        assert status == 0, said
        assert "the sweep's parent run" in said and "closed: FAILED" in said
        client = MlflowClient(uri)
        for work in (single, swept):
            experiment = client.get_experiment_by_name(work.name)
            found = client.search_runs([experiment.experiment_id])
            # As they really ended: stopped by the store (the sweep: its parent and job 0).
            assert [r.info.status for r in found] == ["FAILED"] * (1 + (work is swept))
            (run,) = [r for r in found if "polyexp.pid" in r.data.tags]
            assert run.data.tags["error"].startswith("StoreFailed")
            history = client.get_metric_history(run.info.run_id, "loss")
            assert sorted(m.step for m in history) == list(range(journaled[work.name]))
        status, said = _sync_here(*folders, uri=uri, experiment="sweep", monkeypatch=monkeypatch)
        assert status == 0 and "closed" not in said and "completed" not in said, said


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(150)
"""


def test_sqlite_locked_by_another_process_mid_run_is_one_line_and_sync_completes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "store.db"
    env = {**os.environ, "POLYEXP_STORE_TIMEOUT": "4", "MLFLOW_EXPERIMENT_NAME": "locked"}
    env["MLFLOW_TRACKING_URI"] = uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    process = _start(*FOREVER, cwd=tmp_path, env=env)
    holder = None
    try:
        (run_id,) = _runs_with_losses(client, 1)
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

    status, said = _sync_here(tmp_path, uri=uri, experiment="locked", monkeypatch=monkeypatch)
    assert status == 0 and f"run {run_id} completed" in said, said
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
    if shutil.which("mount") is None:
        pytest.skip("cannot mount a small tmpfs here: no mount command")
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
    small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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
    status, said = _sync_here(work, uri=uri, experiment="full", monkeypatch=monkeypatch)
    assert status == 0 and "completed" in said, said  # the disk has room again
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FAILED"
    assert "the disk is full" in run.data.tags["error"]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(journaled))


def test_runs_of_another_host_are_closed_after_no_heartbeat_and_live_ones_never(
    store: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.entities import Metric

    monkeypatch.setenv(sync.HEARTBEAT_ENV, "30")
    experiment = store.create_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
    now = int(time.time() * 1000)
    old = now - 60_000  # a minute ago: twice the limit
    elsewhere = {"polyexp.host": "another-host", "polyexp.pid": "1"}

    def run(tags: dict[str, str], start: int, beat: int | None = None) -> str:
        made = store.create_run(experiment, start_time=start, tags=tags)
        if beat is not None:
            store.log_batch(made.info.run_id, metrics=[Metric("loss", 1.0, beat, 0)])
        return str(made.info.run_id)

    stale = run(elsewhere, old, beat=old + 1000)
    fresh = run(elsewhere, old, beat=now - 1000)  # trains: its newest loss is a second old
    new = run(elsewhere, now)  # just started: no loss yet
    foreign = run({}, old)  # not polyexp's: no host, no pid
    here = run({"polyexp.host": socket.gethostname(), "polyexp.pid": str(os.getpid())}, now)
    parent = {"polyexp.host": "another-host", "sweep.pid": "1", "sweep": "parent"}
    busy = run(parent, old)  # its job 1 trains
    run({**elsewhere, sync.PARENT_TAG: busy}, old, beat=now - 1000)
    between = run(parent, old)  # its job 0 ended a second ago, job 1 not started yet
    ended = run({**elsewhere, sync.PARENT_TAG: between}, old, beat=old)
    store.set_terminated(ended, "FINISHED", end_time=now - 1000)
    dead = run(parent, old)  # its last job ended a minute ago
    gone = run({**elsewhere, sync.PARENT_TAG: dead}, old, beat=old)
    store.set_terminated(gone, "FINISHED", end_time=old + 2000)

    closed = sync.close_zombies(store, [experiment], "the test")
    assert sorted(closed) == sorted([stale, dead])
    for run_id in closed:
        found = store.get_run(run_id)
        assert found.info.status == "KILLED"
        why = found.data.tags[sync.CLOSED_BY]
        assert re.match(r"the test: no heartbeat from its host another-host for 5\d s ", why), why
        assert f"{sync.HEARTBEAT_ENV}=30" in why
    for run_id in (fresh, new, foreign, here, busy, between):
        assert store.get_run(run_id).info.status == "RUNNING"


def test_a_long_healthy_run_of_another_host_keeps_its_heartbeat_and_a_killed_one_is_closed(
    store: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # log_every=10^7: the loop's own chunks (and its lines) come every 10^7 steps, minutes
    # apart; the heartbeat must not wait for them.
    limit = 5.0
    monkeypatch.setenv(sync.HEARTBEAT_ENV, str(limit))
    process = _start("backend=numpy", "steps=1000000000", "log_every=10000000", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (found := [r for r in runs(store) if "polyexp.pid" in r.data.tags]):
            assert time.monotonic() < deadline and process.poll() is None, "no run"
            time.sleep(0.2)
        run_id, experiment = found[0].info.run_id, found[0].info.experiment_id
        store.set_tag(run_id, "polyexp.host", "another-host")  # as seen from another host
        started = found[0].info.start_time / 1000
        time.sleep(max(0.0, started + limit + 1 - time.time()))
        for _ in range(6):  # for 3 s beyond the limit: always alive
            assert sync.close_zombies(store, [experiment], "the test") == []
            assert store.get_run(run_id).info.status == "RUNNING"
            time.sleep(0.5)
        process.kill()
        process.wait(timeout=30)
    finally:
        process.kill()
    died = time.time()
    while time.time() < died + limit + 3 and store.get_run(run_id).info.status == "RUNNING":
        sync.close_zombies(store, [experiment], "the test")
        time.sleep(0.5)
    run = store.get_run(run_id)
    assert run.info.status == "KILLED"
    assert "no heartbeat from its host another-host" in run.data.tags[sync.CLOSED_BY]


def test_the_heartbeat_chunks_never_change_where_a_diverging_run_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    import numpy as np

    from conftest import build_fit

    loop = importlib.import_module("polyexp.training.loop")  # the module, not its function

    def train(listen: bool) -> tuple[int | None, int, list[float], list[int]]:
        fit = build_fit("backend=numpy", "optimizer=manual_sgd", "optimizer.lr=1e-3")
        heard: list[int] = []
        history = loop.History(fit, (lambda start, _: heard.append(start)) if listen else None)
        with np.errstate(over="ignore", invalid="ignore"):
            loop.loop(fit, 100_000, history, log_every=10)
        return history.diverged_at, len(history.values()), fit.coefficients().tolist(), heard

    plain = train(listen=False)
    monkeypatch.setattr(loop, "CHUNK_SECONDS", 0.0)  # a listener gets a chunk every step
    heard = train(listen=True)
    assert heard[:3] == plain[:3]  # the same step, the same losses, the same coefficients
    assert plain[0] is not None and plain[1] % 10 == 0  # stopped where a line would print
    assert heard[3] == list(range(plain[0]))  # every finite loss heard at once, step by step


def test_sync_leaves_the_journal_of_another_hosts_live_run_and_completes_a_silent_one(
    store: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sweep folder on a filesystem the hosts share (Slurm): journals of runs on other nodes.
    monkeypatch.setenv(sync.HEARTBEAT_ENV, "30")
    experiment = store.create_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
    folders, ids = [], []
    for name in ("live", "silent"):
        run = store.create_run(experiment)
        ids.append(run.info.run_id)
        state = {
            "uri": store.tracking_uri, "experiment_id": experiment, "run_id": run.info.run_id,
            "run_name": name, "params": {}, "tags": {}, "host": "another-host", "pid": 1,
            "status": "RUNNING", "error": None, "metrics": {}, "artifacts_uploaded": False,
        }  # fmt: skip
        folders.append(sync.Journal.create(tmp_path / name / "record", state).folder)
    long_ago = time.time() - 60
    for path in folders[1].iterdir():
        os.utime(path, (long_ago, long_ago))
    live, silent = (sync.upload(folder) for folder in folders)
    assert "still running on another-host (its journal written 0 s ago" in live, live
    assert folders[0].is_dir()
    assert "completed" in silent and "KILLED" in silent, silent
    assert [store.get_run(i).info.status for i in ids] == ["RUNNING", "KILLED"]
