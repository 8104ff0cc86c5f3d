"""Ctrl-C and SIGTERM stop a sweep whatever its launcher: every job in progress ends KILLED with
its losses, within seconds, no process left behind; and a joblib worker that dies fails its own
job, in one line. Real processes, real signals, a real SQLite store (Slurm: a real one-node
cluster), each signal sent to the launching `polyexp` process only, as a scheduler sends it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

import slurm_cluster
from conftest import default_sigint, runs
from polyexp.record import sync
from polyexp.sweeps import sweep

pytestmark = pytest.mark.slow

FOREVER = ("backend=numpy", "steps=100000000", "log_every=0")
GRACE = 10  # POLYEXP_STOP_GRACE in these tests (default 20)
BOUND = 10.0  # seconds from the signal to the launching process's exit, at most
SLOW_STEPS = ("data.n=100000", "optimizer.lr=1e-8")  # 10^5 points: ~1000 steps a second


class Sweep:
    """`polyexp -m ARGS` running, its output read as it comes."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "polyexp", "-m", *args, *FOREVER],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**(env or os.environ), "POLYEXP_STOP_GRACE": str(GRACE)},
            preexec_fn=default_sigint,  # a shell's background job would ignore it
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, into), daemon=True)
            for stream, into in ((self.process.stdout, self.out), (self.process.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def said(self, text: str) -> bool:
        return any(text in line for line in self.out + self.err)

    def stop(self, sig: signal.Signals) -> tuple[float, str, str]:
        """Sends `sig`; (seconds from the signal to the exit, stdout, stderr)."""
        sent = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=60)
        finally:
            self.process.kill()
        seconds = time.monotonic() - sent
        for reader in self._readers:
            reader.join(timeout=10)
        print(f"{sig.name}: exit {seconds:.1f} s after the signal")  # the README's numbers
        return seconds, "".join(self.out), "".join(self.err)

    def fail(self, why: str) -> None:
        self.process.kill()
        self.process.wait()
        raise AssertionError(f"{why}:\n{''.join(self.out)[-2000:]}\n{''.join(self.err)[-3000:]}")


def _training(client: MlflowClient, jobs: int, launched: Sweep, timeout: float = 120) -> list:
    """The child runs once `jobs` of them are RUNNING with losses in the store."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and launched.process.poll() is None:
        children = [r for r in runs(client) if sweep.PARENT_TAG in r.data.tags]
        going = [
            r
            for r in children
            if r.info.status == "RUNNING" and client.get_metric_history(r.info.run_id, "loss")
        ]
        if len(going) >= jobs:
            return going
        time.sleep(0.3)
    launched.fail(f"{jobs} jobs never trained at once")
    return []


def _left_in(folder: Path) -> list[str]:
    """Processes (but this one) whose working folder is in `folder`: every process a sweep
    started there (jobs, workers, submitit's controllers)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = os.readlink(proc / "cwd")
            if int(proc.name) != os.getpid() and Path(cwd).is_relative_to(folder):
                found.append(f"{proc.name}: {(proc / 'cmdline').read_text().replace(chr(0), ' ')}")
        except (OSError, ValueError):
            continue
    return found


def _assert_killed(
    client: MlflowClient, flying: list, seconds: float, out: str, err: str, cwd: Path
) -> None:
    """Within the bound, no traceback, the parent and every in-flight child KILLED with its
    losses, no run RUNNING, no process left, the summary saying KILLED with the run ids."""
    assert seconds < BOUND, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "interrupted by" in err.strip().splitlines()[-1], err[-3000:]
    found = runs(client)
    (parent,) = [r for r in found if r.data.tags.get("sweep") == "parent"]
    assert parent.info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in found), [r.info.status for r in found]
    table = out[out.index("Sweep summary") :]
    for run in flying:
        now = client.get_run(run.info.run_id)
        assert now.info.status == "KILLED", now.data.tags
        assert len(client.get_metric_history(run.info.run_id, "loss")) > 0
        row = next(r for r in table.splitlines() if run.info.run_id[:8] in r)
        assert "| KILLED" in row, table
        assert not sync.alive(int(run.data.tags["polyexp.pid"]))
    assert parent.data.metrics["jobs_killed"] >= len(flying)
    deadline = time.monotonic() + 5  # a forked plot worker dies with its parent, just after
    while _left_in(cwd) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _left_in(cwd), _left_in(cwd)


LAUNCHERS = {
    "basic": ("seed=0,1",),
    "joblib": ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2"),
    "submitit_local": ("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "seed=0,1"),
}
IN_FLIGHT = {"basic": 1, "joblib": 2, "submitit_local": 2}


@pytest.mark.parametrize(
    ("launcher", "stop"),
    [
        ("basic", signal.SIGTERM),  # Ctrl-C: tests/test_sweeps.py
        ("joblib", signal.SIGTERM),
        ("joblib", signal.SIGINT),
        ("submitit_local", signal.SIGTERM),
    ],
    ids=["basic-sigterm", "joblib-sigterm", "joblib-ctrl-c", "submitit_local-sigterm"],
)
def test_a_signal_ends_every_job_in_progress_killed_with_its_losses(
    launcher: str, stop: signal.Signals, store: MlflowClient, tmp_path: Path
) -> None:
    launched = Sweep(*LAUNCHERS[launcher], cwd=tmp_path)
    flying = _training(store, IN_FLIGHT[launcher], launched)
    seconds, out, err = launched.stop(stop)
    _assert_killed(store, flying, seconds, out, err, tmp_path)


def test_batched_an_interrupted_batch_records_each_member_killed_with_its_losses(
    store: MlflowClient, tmp_path: Path
) -> None:
    # Few losses a second, so the store takes every one of them within the grace.
    launched = Sweep("hydra/launcher=batched", "seed=0,1", *SLOW_STEPS, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not launched.said("#1 : seed=1"):  # composed: the batch trains next
        if time.monotonic() > deadline or launched.process.poll() is not None:
            launched.fail("the batch never started")
        time.sleep(0.2)
    time.sleep(1.5)  # it trains
    seconds, out, err = launched.stop(signal.SIGTERM)
    children = [r for r in runs(store) if sweep.PARENT_TAG in r.data.tags]
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"], err[-3000:]
    assert {r.data.tags["sweep.batch_size"] for r in children} == {"2"}
    assert "kept in" not in err  # the store has every loss: no journal left
    assert not list(tmp_path.glob("outputs/multirun/*/*/*/record"))
    _assert_killed(store, children, seconds, out, err, tmp_path)


def test_a_joblib_worker_that_dies_fails_its_job_and_the_sweep_ends_in_one_line(
    store: MlflowClient, tmp_path: Path
) -> None:
    launched = Sweep(*LAUNCHERS["joblib"], cwd=tmp_path)
    victim, *_ = _training(store, 2, launched)
    pid = int(victim.data.tags["polyexp.pid"])
    os.kill(pid, signal.SIGKILL)  # as the OOM killer kills
    try:
        launched.process.wait(timeout=60)
    finally:
        launched.process.kill()
    for reader in launched._readers:
        reader.join(timeout=10)
    out, err = "".join(launched.out), "".join(launched.err)
    assert launched.process.returncode == 1
    assert "Traceback" not in err, err[-3000:]
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("polyexp: error: a worker process of the sweep died (exit {SIGKILL(-9)})")
    ), err[-3000:]
    found = runs(store)
    (parent,) = [r for r in found if r.data.tags.get("sweep") == "parent"]
    assert parent.info.status == "FAILED"
    assert all(r.info.status != "RUNNING" for r in found), [r.info.status for r in found]
    killed = store.get_run(victim.info.run_id)
    assert killed.info.status == "FAILED"
    assert f"pid {pid}" in killed.data.tags["error"]
    assert len(store.get_metric_history(victim.info.run_id, "loss")) > 0
    table = out[out.index("Sweep summary") :]
    assert "| FAILED" in next(r for r in table.splitlines() if victim.info.run_id[:8] in r)
    deadline = time.monotonic() + 5
    while _left_in(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _left_in(tmp_path), _left_in(tmp_path)


@pytest.mark.xdist_group("slurm")  # Slurm's ports are fixed: one cluster at a time
@pytest.mark.skipif(
    bool(slurm_cluster.missing()) or os.geteuid() != 0, reason="needs Slurm's binaries and root"
)
def test_submitit_slurm_sigterm_ends_running_jobs_killed_and_cancels_pending_ones(
    store: MlflowClient, tmp_path: Path
) -> None:
    with slurm_cluster.one_node_cluster() as env:  # 2 CPUs: 2 tasks run, the third waits
        launched = Sweep(
            "hydra/launcher=submitit_slurm",
            f"hydra.launcher.partition={slurm_cluster.PARTITION}",
            "hydra.launcher.timeout_min=5",
            "seed=0,1,2",
            cwd=tmp_path,
            env=env,
        )
        flying = _training(store, 2, launched)
        seconds, out, err = launched.stop(signal.SIGTERM)
        squeue = subprocess.run(
            ["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True, timeout=30
        )
        deadline = time.monotonic() + 10  # Slurm ends its own steps' bookkeeping just after
        while squeue.stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.5)
            squeue = subprocess.run(
                ["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True
            )
    _assert_killed(store, flying, seconds, out, err, tmp_path)
    assert squeue.stdout.strip() == "", squeue.stdout  # the pending task was cancelled too
    children = [r for r in runs(store) if sweep.PARENT_TAG in r.data.tags]
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
