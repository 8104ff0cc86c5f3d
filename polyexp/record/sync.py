"""`polyexp-sync [FOLDER ...]`: upload the records the store does not have yet, close zombies.

A run whose store failed mid-run, or whose process was killed, leaves its journal
(polyexp.record.journal) in its Hydra run folder. polyexp-sync finds every journal under the
folders given (default: outputs/) and completes the run in the store it was meant for: params,
tags, the losses the store lacks, the final numbers, the artifacts, and its status as it really
ended (FINISHED, FAILED or KILLED; a journal whose process is gone without ending the run:
KILLED). It is idempotent: a record the store has in full is removed, and a second sync finds
nothing to do. It then closes zombies: RUNNING runs of those experiments whose process is gone
(same host: pid no longer alive; another host: no heartbeat for POLYEXP_HEARTBEAT_TIMEOUT
seconds) end KILLED with the tag `polyexp.closed_by` saying why.

A run's heartbeat costs no store call of its own: it is the time of the run's newest logged
metric (a training run streams its losses at least every few seconds), else its start; a
sweep's parent beats with its jobs (a job's heartbeat, the end of its newest finished job).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from polyexp import bounds
from polyexp.errors import UserError
from polyexp.record import journal, store
from polyexp.record.journal import Journal, bounded

CLOSED_BY = "polyexp.closed_by"
# Seconds without a heartbeat after which another host's run is taken as gone (the clocks of
# different hosts may differ a little).
HEARTBEAT_ENV = bounds.HEARTBEAT_ENV
PARENT_TAG = "mlflow.parentRunId"


def heartbeat_timeout() -> float:
    """How long a run of another host may go without a heartbeat (POLYEXP_HEARTBEAT_TIMEOUT)."""
    return bounds.seconds(HEARTBEAT_ENV)


def heartbeat(run: Any) -> float:
    """When the run last showed life in the store (epoch seconds): its newest metric, or its
    start."""
    stamps = [m.timestamp for m in run.data.to_proto().metrics]
    return max([run.info.start_time or 0, *stamps]) / 1000


def find(folders: Iterable[Path]) -> list[Path]:
    """Every journal folder in or under `folders`."""
    found: set[Path] = set()
    for folder in folders:
        if (folder / journal.RECORD).is_file():
            found.add(folder.resolve())
        elif folder.is_dir():
            found.update(p.parent.resolve() for p in folder.rglob(journal.RECORD))
    return sorted(found)


def _started(pid: int) -> float | None:
    """When process `pid` started (epoch seconds, Linux), None when not known."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def alive(pid: int, since: float | None = None) -> bool:
    """Whether process `pid` of this host lives (not a zombie), and, with `since` (epoch
    seconds), started before then (a later process that reuses the pid does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except OSError:
        pass
    started = _started(pid)
    return not (since is not None and started is not None and started > since + 2)


def upload(folder: Path) -> str:
    """Completes the run of the journal in `folder` in its store; returns what it did (a line)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    record = Journal(folder)
    state = record.state
    uri, run_id = store.from_disk(state["uri"], folder), state["run_id"]
    status, error, tags = state["status"], state.get("error"), dict(state["tags"])
    if status == "RUNNING":
        if state["host"] == socket.gethostname() and alive(int(state["pid"])):
            return f"{folder}: run {run_id} is still running (pid {state['pid']}): left as it is"
        age = time.time() - max(p.stat().st_mtime for p in folder.iterdir())
        if state["host"] != socket.gethostname() and age <= heartbeat_timeout():
            return (
                f"{folder}: run {run_id} is still running on {state['host']} (its journal "
                f"written {age:.0f} s ago; {HEARTBEAT_ENV}={heartbeat_timeout():g}): left as it is"
            )
        status = "KILLED"
        tags[CLOSED_BY] = (
            f"polyexp-sync: its process (pid {state['pid']} on {state['host']}) ended "
            "without closing the run"
        )
    client = MlflowClient(uri)
    with store.fast_http():
        bounded(uri, "find the run", client.get_run, run_id)
        params = [Param(k, v) for k, v in state["params"].items()]
        rows = [RunTag(k, str(v)) for k, v in tags.items()]
        if error:
            rows.append(RunTag("error", error))
        bounded(uri, "log params and tags", client.log_batch, run_id, params=params, tags=rows)
        history = bounded(uri, "read the losses", client.get_metric_history, run_id, "loss")
        have = 1 + max((m.step for m in history), default=-1)
        losses = record.losses()
        metrics = [
            Metric("loss", float(v), int(t), step)
            for step, (v, t) in enumerate(losses.tolist())
            if step >= have
        ]
        now = int(time.time() * 1000)
        metrics += [Metric(k, float(v), now, 0) for k, v in state.get("metrics", {}).items()]
        for start in range(0, len(metrics), journal.FLUSH_ROWS):
            part = metrics[start : start + journal.FLUSH_ROWS]
            bounded(uri, "log the losses", client.log_batch, run_id, metrics=part)
        artifacts = folder / journal.ARTIFACTS
        if not state.get("artifacts_uploaded") and artifacts.is_dir() and any(artifacts.iterdir()):
            bounded(uri, "upload the artifacts", client.log_artifacts, run_id, str(artifacts))
        bounded(uri, "close the run", client.set_terminated, run_id, status)
    record.remove()
    return (
        f"{folder}: run {run_id} completed in {store.redact(uri)}: {status}, "
        f"{len(losses)} losses ({max(0, len(losses) - have)} uploaded now)"
    )


def close_parent(folder: Path) -> str:
    """Ends the parent run of a sweep whose store failed (its `.polyexp` folder) as it ended."""
    import json

    from mlflow.tracking import MlflowClient

    parent = json.loads((folder / "parent.json").read_text())
    status = json.loads((folder / "parent-status.json").read_text())
    uri = store.from_disk(parent["uri"], folder / "parent.json")
    with store.fast_http():
        close = MlflowClient(uri).set_terminated
        bounded(uri, "close the sweep's parent", close, parent["run_id"], status)
    (folder / "parent-status.json").unlink()
    return f"{folder.parent}: the sweep's parent run {parent['run_id']} closed: {status}"


def _last_job_end(client: Any, run: Any) -> float:
    """When the newest finished job of the sweep whose parent is `run` ended (epoch seconds)."""
    found = client.search_runs(
        [run.info.experiment_id],
        f"tags.`{PARENT_TAG}` = '{run.info.run_id}' and attributes.status != 'RUNNING'",
        order_by=["attributes.end_time DESC"],
        max_results=1,
    )
    return (found[0].info.end_time or 0) / 1000 if found else 0.0


def close_zombies(client: Any, experiment_ids: list[str], by: str) -> list[str]:
    """Ends KILLED every RUNNING run of these experiments whose process is gone, tagged
    `polyexp.closed_by` with why; returns their ids. A run of this host (tags polyexp.host and
    polyexp.pid or sweep.pid): its pid is no longer alive; a run of another host: no heartbeat
    for heartbeat_timeout() seconds. Runs without these tags (not polyexp's) are left alone."""
    here = socket.gethostname()
    limit, now = heartbeat_timeout(), time.time()
    closed = []
    found = client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=1000)
    beats = {run.info.run_id: heartbeat(run) for run in found}
    for run in found:  # a sweep's parent beats with its running jobs
        parent = run.data.tags.get(PARENT_TAG)
        if parent in beats:
            beats[parent] = max(beats[parent], beats[run.info.run_id])
    for run in found:
        tags = run.data.tags
        pid = tags.get(journal.PID_TAG) or tags.get("sweep.pid")
        host = tags.get(journal.HOST_TAG, here)
        if not pid and journal.HOST_TAG not in tags:
            continue
        if host == here:
            if not pid or alive(int(pid), run.info.start_time / 1000):
                continue
            why = f"{by}: its process (pid {pid} on {here}) is gone and the run was left RUNNING"
        else:
            beat = beats[run.info.run_id]
            if now - beat > limit and tags.get("sweep") == "parent":
                beat = max(beat, _last_job_end(client, run))
            if now - beat <= limit:
                continue
            why = (
                f"{by}: no heartbeat from its host {host} for {now - beat:.0f} s (its newest "
                f"logged metric, else its start; {HEARTBEAT_ENV}={limit:g}): its process is "
                "taken as gone and the run was left RUNNING"
            )
        client.set_tag(run.info.run_id, CLOSED_BY, why)
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="polyexp-sync",
        description="Upload the records of runs the store does not have in full (kept in their "
        "Hydra run folders when the store failed or the process was killed), then close runs "
        "left RUNNING by processes that are gone.",
    )
    parser.add_argument(
        "folders", nargs="*", type=Path, help="run or sweep folders (default: outputs/)"
    )
    args = parser.parse_args(argv)
    try:
        bounds.check()  # before any work
    except UserError as error:
        parser.exit(2, f"polyexp-sync: error: {error}\n")
    from mlflow.tracking import MlflowClient

    from polyexp.record import tracking

    failed = 0
    stores: dict[str, set[str]] = {}
    for folder in find(args.folders or [Path("outputs")]):
        try:
            state = Journal(folder).state
            print(f"polyexp-sync: {upload(folder)}")
            uri = store.from_disk(state["uri"], folder)
            stores.setdefault(uri, set()).add(str(state["experiment_id"]))
        except (store.StoreError, OSError, ValueError, KeyError) as error:
            failed += 1
            print(f"polyexp-sync: {folder}: not uploaded: {error}", file=sys.stderr)
    for folder in args.folders or [Path("outputs")]:  # sweeps whose store failed: the parent
        for status_file in folder.rglob("parent-status.json"):
            try:
                print(f"polyexp-sync: {close_parent(status_file.parent)}")
            except (store.StoreError, OSError, ValueError, KeyError) as error:
                failed += 1
                print(f"polyexp-sync: {status_file.parent}: not closed: {error}", file=sys.stderr)
    try:  # the current store's experiment too, when it exists
        uri = tracking.tracking_uri()
        client = MlflowClient(uri)
        with store.reaching(uri):
            experiment = client.get_experiment_by_name(tracking.experiment_name())
        if experiment is not None:
            stores.setdefault(uri, set()).add(str(experiment.experiment_id))
    except store.StoreError as error:
        print(f"polyexp-sync: {error}", file=sys.stderr)
    for uri, experiments in stores.items():
        client = MlflowClient(uri)
        try:
            closed = bounded(
                uri, "close zombies", close_zombies, client, sorted(experiments), "polyexp-sync"
            )
        except store.StoreError as error:
            failed += 1
            print(f"polyexp-sync: {error}", file=sys.stderr)
            continue
        if closed:
            print(
                f"polyexp-sync: closed {len(closed)} runs left RUNNING by processes that are "
                f"gone, as KILLED (tag {CLOSED_BY}): {', '.join(closed)}"
            )
    if failed:
        sys.exit(1)
