"""Stopping a sweep: SIGINT and SIGTERM reach every job in progress, whatever the launcher.

Two sides, one module:

- **In a job** (`job()`, around polyexp.sweeps.sweep.run_job): the job registers itself while
  in flight, `<parent folder>/running/<num>.json` (host, pid, its run folder, Slurm's job ids),
  removed once its Job file is written. In a process other than the launching one (a joblib
  worker, a submitit process, a Slurm task: none of them runs `polyexp.cli.main`) SIGTERM and
  SIGINT raise KeyboardInterrupt for the job's span (over submitit's own SIGTERM handler),
  once: the run then ends KILLED with every loss so far (the journal streams them as training
  goes), and a later signal cannot cut its closing short. A job that starts after the sweep
  began stopping (the file `<parent folder>/stopping`) does not start.
- **In the launching process** (`install()`, from the `polyexp` command): the first SIGINT or
  SIGTERM marks every open sweep stopping, sends SIGTERM to its jobs in flight on this host
  (and to submitit's local job processes), `scancel`s its Slurm jobs (pending array tasks
  too), and waits until each in-flight job has written its Job file or its process is gone,
  for at most `POLYEXP_STOP_GRACE` seconds (default 20, under a scheduler's usual 30 s); what
  is still alive then is killed (SIGKILL, the whole process tree). Then the KeyboardInterrupt
  goes on and `sweep.parents()` closes the parent KILLED with the summary; `sweep.finish`
  closes KILLED any child run whose process is gone. A second signal while it waits stops
  waiting at once: what the jobs journaled stays in their run folders for `polyexp-sync`.

Jobs that run in the launching process itself (the basic and batched launchers) need none of
this: the signal's KeyboardInterrupt is raised right in them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from polyexp import bounds

GRACE_ENV = bounds.STOP_GRACE_ENV  # seconds the launching process waits for its jobs to end
RUNNING = "running"  # in a parent's folder: <num>.json for each job in flight
STOPPING = "stopping"  # in a parent's folder: the sweep is stopping, no job starts any more
SUBMITIT = ".submitit"  # in the sweep dir: one folder per submitit job, named by its job id
SLURM_IDS = ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID")


def grace() -> float:
    """How long the launching process waits for its jobs in flight (POLYEXP_STOP_GRACE)."""
    return bounds.seconds(GRACE_ENV)


def _alive(pid: int) -> bool:
    from polyexp.record import sync

    return sync.alive(pid)


def _interrupt(signum: int) -> KeyboardInterrupt:
    """What a signal raises: Ctrl-C's own KeyboardInterrupt, or one naming the signal."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return KeyboardInterrupt(signal.Signals(signum).name)


# --- in a job ---------------------------------------------------------------------------------

_launcher_pid: int | None = None  # the process that opened a sweep's parent, when this is it


def _job_handler() -> Any:
    """A job's handler: the first signal raises KeyboardInterrupt (the run ends KILLED), later
    ones are ignored, so that closing the run is never cut short (the launching process kills
    whatever outlives its grace)."""
    fired: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not fired:
            fired.append(signum)
            raise _interrupt(signum)

    return handler


@contextlib.contextmanager
def job(
    folder: str, num: int, overrides: Sequence[str], run_folder: str, started: bool = False
) -> Iterator[None]:
    """The span of job `num` of the sweep whose parent's folder is `folder`: registered as in
    flight, and, in a process other than the launching one, stopped by SIGTERM or SIGINT.
    Raises KeyboardInterrupt at once when the sweep is already stopping, unless `started` (a
    job whose batch already trained, recorded as it was interrupted)."""
    base = Path(folder)
    own = os.getpid() != _launcher_pid and threading.current_thread() is threading.main_thread()
    previous = {}
    if own:
        handler = _job_handler()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    entry = base / RUNNING / f"{num}.json"
    try:
        entry.parent.mkdir(exist_ok=True)
        where = {
            "num": num,
            "overrides": list(overrides),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "folder": run_folder,
            **{k.lower(): os.environ[k] for k in SLURM_IDS if os.environ.get(k)},
        }
        _write_json(entry, where)
        # Registered first, then the check: the launching process, which writes `stopping`
        # before it looks for jobs in flight, either sees this job or this job sees it stop.
        if (base / STOPPING).exists() and not started:
            raise KeyboardInterrupt("the sweep is stopping")
        yield
    finally:
        entry.unlink(missing_ok=True)
        for sig, before in previous.items():
            signal.signal(sig, before)


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


@dataclass(frozen=True)
class InFlight:
    """A job in flight, as it registered itself."""

    num: int
    overrides: list[str]
    host: str
    pid: int
    folder: str
    slurm: str | None  # its Slurm job id (the array's, for an array task)

    @property
    def here(self) -> bool:
        return self.host == socket.gethostname()


def in_flight(folder: str) -> list[InFlight]:
    """The jobs of the sweep in `folder` that registered and have written no Job file."""
    found = []
    base = Path(folder)
    for path in sorted((base / RUNNING).glob("*.json")):
        try:
            e = json.loads(path.read_text())
        except (OSError, ValueError):  # removed meanwhile
            continue
        if (base / "jobs" / f"{e['num']}.json").exists():
            continue
        slurm = e.get("slurm_array_job_id") or e.get("slurm_job_id")
        found.append(
            InFlight(e["num"], e["overrides"], e["host"], int(e["pid"]), e["folder"], slurm)
        )
    return found


# --- in the launching process -----------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    folder: str  # the parent's folder (<sweep dir>/.polyexp/<parent run id>)
    sweep_dir: str
    slurm: bool  # its jobs are Slurm jobs (hydra/launcher=submitit_slurm)


_sweeps: dict[str, Sweep] = {}
_stopping: list[str] = []  # the signal that started stopping, once it has
_waiting: list[InFlight] = []  # the jobs still waited for


def watch(folder: str, sweep_dir: str, launcher: str) -> None:
    """Called where a sweep's parent opens: this process launches its jobs."""
    global _launcher_pid
    _launcher_pid = os.getpid()
    _sweeps[folder] = Sweep(folder, sweep_dir, "slurm" in launcher.lower())


def unwatch(folder: str) -> None:
    _sweeps.pop(folder, None)


def install() -> None:
    """SIGTERM (a scheduler's or `kill`'s stop) and SIGINT take Ctrl-C's path in the process
    that runs the `polyexp` command (SIGINT only when it is not ignored: a background job of a
    non-interactive shell inherits it ignored)."""
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    if _stopping:  # a second signal: stop waiting now
        if _waiting:
            folders = ", ".join(str(Path(j.folder) / "record") for j in _waiting)
            _say(
                f"interrupted again: stopped waiting for {len(_waiting)} jobs in progress; "
                f"what they journaled is kept in {folders} (polyexp-sync uploads it)"
            )
            _waiting.clear()
        raise _interrupt(signum)
    _stopping.append(name)
    for one in list(_sweeps.values()):
        stop(one, name)
    raise _interrupt(signum)


def _say(line: str) -> None:
    print(f"polyexp: {line}", file=sys.stderr, flush=True)


def stop(one: Sweep, name: str) -> None:
    """Stops the jobs of `one` in flight elsewhere and waits (bounded) for them to end."""
    base = Path(one.folder)
    with contextlib.suppress(OSError):
        (base / STOPPING).write_text(f"{name}\n")
    deadline = time.monotonic() + grace()
    signalled: set[int] = set()
    controllers = [] if one.slurm else _local_controllers(one.sweep_dir)
    for pid in controllers:  # submitit's local job processes: SIGTERM reaches their task
        _kill(pid, signal.SIGTERM)
    slurm_ids = _slurm_ids(one.sweep_dir) if one.slurm else set()
    cancelled: set[str] = set()
    said = False
    while True:
        flying = [j for j in in_flight(one.folder) if not (j.here and j.pid == os.getpid())]
        for j in flying:
            if j.slurm:
                slurm_ids.add(j.slurm)
            elif j.here and j.pid not in signalled:
                _kill(j.pid, signal.SIGTERM)
                signalled.add(j.pid)
        if slurm_ids - cancelled:
            _scancel(sorted(slurm_ids - cancelled))
            cancelled |= slurm_ids
        waiting = [j for j in flying if not j.here or _alive(j.pid)]
        _waiting[:] = waiting
        left = [pid for pid in controllers if _alive(pid)]
        if not waiting and not left:
            break
        if not said and waiting:
            _say(
                f"stopping: {name} sent to {len(waiting)} jobs in progress; waiting up to "
                f"{grace():g} s ({GRACE_ENV}) for their runs to end KILLED (a second Ctrl-C "
                "stops waiting)"
            )
            said = True
        if time.monotonic() >= deadline:
            _give_up(waiting, left, sorted(cancelled))
            break
        time.sleep(0.05)
    _waiting.clear()


def _give_up(waiting: list[InFlight], controllers: list[int], slurm_ids: list[str]) -> None:
    """The grace is over: what is still alive on this host is killed, with its descendants."""
    for j in waiting:
        if j.here and not j.slurm:
            _kill_tree(j.pid)
    for pid in controllers:
        _kill_tree(pid)
    if slurm_ids:
        _scancel(slurm_ids, "--signal=KILL")
    if waiting:
        folders = ", ".join(str(Path(j.folder) / "record") for j in waiting)
        _say(
            f"{len(waiting)} jobs did not end within {grace():g} s ({GRACE_ENV}): killed; "
            f"their runs end KILLED, what they journaled is kept in {folders} (polyexp-sync "
            "uploads it)"
        )


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _children() -> dict[int, list[int]]:
    """Every process of this host by its parent's pid (Linux /proc)."""
    found: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL to `pid` and every process under it, the deepest first."""
    children = _children()
    order, todo = [], [pid]
    while todo:
        p = todo.pop()
        order.append(p)
        todo.extend(children.get(p, []))
    for p in reversed(order):
        _kill(p, signal.SIGKILL)


def _submitit_ids(sweep_dir: str) -> list[str]:
    """The job ids submitit named its job folders by (`<id>` or `<array id>_<task>`)."""
    folder = Path(sweep_dir) / SUBMITIT
    if not folder.is_dir():
        return []
    return [p.name.split("_")[0] for p in folder.iterdir() if p.name.split("_")[0].isdigit()]


def _local_controllers(sweep_dir: str) -> list[int]:
    """submitit's local jobs: its job id is the pid of a process this one started."""
    mine = set(_children().get(os.getpid(), []))
    return sorted({int(i) for i in _submitit_ids(sweep_dir)} & mine)


def _slurm_ids(sweep_dir: str) -> set[str]:
    return set(_submitit_ids(sweep_dir))


def _scancel(ids: list[str], *options: str) -> None:
    """Cancels Slurm jobs (a job array's id cancels its pending tasks too); a scancel that is
    missing or fails is said in one line."""
    try:
        done = subprocess.run(
            ["scancel", *options, *ids], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        _say(f"cannot cancel the Slurm jobs {' '.join(ids)}: {error}")
        return
    if done.returncode:
        _say(f"scancel {' '.join(ids)}: {done.stderr.strip() or done.returncode}")


def explain(error: BaseException) -> str | None:
    """One line for a launcher whose worker process died (joblib's loky: the OOM killer, a
    SIGKILL), instead of its traceback; None for any other error."""
    if type(error).__name__ != "TerminatedWorkerError":
        return None
    found = re.search(r"exit codes of the workers are (\{[^}]*\})", str(error))
    codes = found.group(1) if found else ""
    return (
        f"a worker process of the sweep died{f' (exit {codes})' if codes else ''}, e.g. killed "
        "by the OOM killer or SIGKILL; joblib then stops every worker: the jobs in progress "
        "end FAILED, the jobs not started did not run (run the same sweep again: resume skips "
        "the finished jobs)"
    )
