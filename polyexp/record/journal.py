"""A run's record on local disk until the store has it, and store calls that give up in time.

While a run trains, its record (params, tags, every loss so far, the final numbers, the
artifacts) is kept in a journal in its Hydra run folder, `<run dir>/record/` (outside Hydra:
`outputs/records/<time>-<id>/`), and written to the store as training goes: the losses every
FLUSH_ROWS rows or FLUSH_SECONDS, whichever comes first. Every store call is bounded: it is
retried while the store fails, for at most `POLYEXP_STORE_TIMEOUT` seconds (default 30) in
all, and then the run stops with a `StoreFailed` (one line naming the store, what failed and
the journal's folder). Once the store has the whole record the journal is removed; a journal
left behind (the store failed, the process was killed) is uploaded by `polyexp-sync`
(polyexp.record.sync).

Files: `record.json` (what the run is: store, run id, name, params, tags, host and pid, its
status as it really ended, the final metrics), `losses.bin`
(every finite loss, step 0 first, with the time it was logged) and `artifacts/`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from polyexp import bounds
from polyexp.record import limits, store

TIMEOUT_ENV = bounds.STORE_TIMEOUT_ENV  # seconds a failing store is retried before a run stops
FLUSH_ROWS = 1000  # losses written to the store in one call (MLflow's batch limit)
FLUSH_SECONDS = 2.0  # ...or after this long, whichever comes first
FOLDER = "record"  # inside a Hydra run folder
RECORD, LOSSES, ARTIFACTS = "record.json", "losses.bin", "artifacts"
ROW = np.dtype([("value", "<f8"), ("time", "<i8")])  # one loss and when it was logged (ms)
HOST_TAG, PID_TAG = "polyexp.host", "polyexp.pid"  # where a run's process runs

# Journals of this process whose record the store does not have in full (yet).
pending: set[Path] = set()


class StoreFailed(store.StoreError):
    """The store failed mid-run and stayed failed for the bound; one line naming the store."""


def timeout() -> float:
    """How long a failing store is retried before the run stops (POLYEXP_STORE_TIMEOUT)."""
    return bounds.seconds(TIMEOUT_ENV)


def _permanent(error: BaseException) -> bool:
    """Errors that waiting will not mend: a value the store refuses."""
    code = getattr(error, "error_code", "")
    return code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST")


def _into(box: dict[str, Any], call: Callable[..., Any], args: Any, kwargs: Any) -> None:
    try:
        box["value"] = call(*args, **kwargs)
    except BaseException as error:
        box["error"] = error


def bounded(uri: str, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`call(*args, **kwargs)` against the store at `uri`, retried while it fails, for at most
    timeout() seconds in all (a call that hangs, e.g. on a server that never answers or an
    SQLite lock another process holds, is abandoned in its daemon thread). Raises StoreFailed
    (one line: the store, `what`, the cause) when the time is up or at once for a full disk;
    an error the store answers for a bad value is raised as it is."""
    seconds = timeout()
    deadline = time.monotonic() + seconds
    delay = 0.25
    while True:
        box: dict[str, Any] = {}
        worker = threading.Thread(
            target=_into, args=(box, call, args, kwargs), name="polyexp-store", daemon=True
        )
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            cause = store.why_no_answer(uri)
        elif "error" not in box:
            return box.get("value")
        else:
            error = box["error"]
            if not isinstance(error, Exception):
                raise error
            cause = store.first_line(error)
            if "disk is full" in str(error) or "No space left" in str(error):
                raise StoreFailed(f"{store.describe(uri)}: cannot {what}: the disk is full")
            if _permanent(error):
                raise error
            if time.monotonic() + delay < deadline:
                time.sleep(delay)
                delay = min(2 * delay, 4.0)
                continue
        raise StoreFailed(
            f"{store.describe(uri)}: cannot {what}: {cause} for {seconds:g} s "
            f"({TIMEOUT_ENV} sets the limit)"
        )


def default_folder() -> Path:
    """The journal's folder: `record/` in the Hydra run folder, else under outputs/records/."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir) / FOLDER
    stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
    return (Path("outputs") / "records" / f"{stamp}-{uuid.uuid4().hex[:6]}").resolve()


class Journal:
    """The files of one run's record in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state: dict[str, Any] = json.loads((folder / RECORD).read_text())

    @classmethod
    def create(cls, folder: Path, state: Mapping[str, Any]) -> Journal:
        shutil.rmtree(folder, ignore_errors=True)  # an earlier record of a reused folder
        (folder / ARTIFACTS).mkdir(parents=True)
        (folder / LOSSES).touch()
        _write_json(folder / RECORD, dict(state))
        return cls(folder)

    def update(self, **changes: Any) -> None:
        self.state.update(changes)
        _write_json(self.folder / RECORD, self.state)

    def append(self, losses: np.ndarray, when: int) -> None:
        rows = np.empty(len(losses), ROW)
        rows["value"], rows["time"] = losses, when
        with (self.folder / LOSSES).open("ab") as out:
            out.write(rows.tobytes())

    def losses(self) -> np.ndarray:
        """Every journaled loss (value, time), step 0 first (a row cut short by a kill dropped)."""
        data = (self.folder / LOSSES).read_bytes()
        return np.frombuffer(data[: len(data) - len(data) % ROW.itemsize], ROW)

    def remove(self) -> None:
        """The store has the whole record: the journal goes."""
        shutil.rmtree(self.folder, ignore_errors=True)
        pending.discard(self.folder)


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str) + "\n")
    tmp.replace(path)  # atomic: a kill never leaves half a file


def metric_value(v: float) -> float:
    """A final number as the store keeps it: not finite -> NaN (an SQL store writes inf as
    1.7976931348623157e308, which reads as a number; NaN sorts last)."""
    return float(v) if math.isfinite(v) else math.nan


class Recorder:
    """One open run: everything goes to the journal first, then to the store (bounded). After
    the store has failed once, only to the journal (`failed` says why)."""

    def __init__(self, client: Any, run_id: str, journal: Journal) -> None:
        self.client = client
        self.run_id = run_id
        self.journal = journal
        self.failed: StoreFailed | None = None
        self._unsent: list[float] = []  # the newest losses journaled, not sent to the store
        self._count = 0  # losses journaled
        self._sent = time.monotonic()
        self.unsent = 0  # losses only the journal has, on purpose (keep_losses)

    @property
    def artifacts(self) -> Path:
        """Where the run's artifacts are written, to be uploaded by log_artifacts."""
        return self.journal.folder / ARTIFACTS

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A bounded store call; skipped once the store has failed."""
        if self.failed is not None:
            return None
        try:
            return bounded(self.client.tracking_uri, what, fn, *args, **kwargs)
        except StoreFailed as error:
            folder = self.journal.folder
            self.failed = StoreFailed(
                f"{error}; the run's full record is kept in {folder} (upload it with: "
                f"polyexp-sync {folder})"
            )
            self.journal.update(store_error=str(error))
            raise self.failed from None

    def add_losses(self, start: int, losses: np.ndarray) -> None:
        """A chunk of losses from the loop (steps start, start+1, ...): journaled at once, sent
        to the store every FLUSH_ROWS rows or FLUSH_SECONDS."""
        if start < self._count:  # already journaled
            losses = losses[self._count - start :]
            start = self._count
        if not len(losses):
            return
        self.journal.append(losses, int(time.time() * 1000))
        self._unsent += losses.tolist()
        self._count = start + len(losses)
        if len(self._unsent) >= FLUSH_ROWS or time.monotonic() - self._sent >= FLUSH_SECONDS:
            self._send()

    def keep_losses(self, losses: np.ndarray, deadline: float) -> None:
        """The losses of a run trained elsewhere whose training was interrupted: all journaled
        at once, then sent to the store FLUSH_ROWS at a time until `deadline` (time.monotonic);
        the rest stays in the journal, kept when the run closes, for polyexp-sync."""
        self.journal.append(losses, int(time.time() * 1000))
        self._unsent, self._count = losses.tolist(), len(losses)
        self._send(deadline=deadline)

    def _send(self, final: list[Any] | None = None, deadline: float = math.inf) -> None:
        """The unsent losses, FLUSH_ROWS a call, each call's rows stamped when it is sent: the
        run's newest loss in the store is its heartbeat (polyexp.record.sync), fresh also while
        a long backlog is written. `final` (metrics) goes with the last call. Past `deadline`
        (time.monotonic) the rest is left to the journal (`unsent`)."""
        from mlflow.entities import Metric

        values, self._unsent = self._unsent, []
        first = self._count - len(values)  # the step of values[0]
        for at in range(0, max(len(values), 1 if final else 0), FLUSH_ROWS):
            if time.monotonic() >= deadline:
                self.unsent = len(values) - at
                return
            now = int(time.time() * 1000)
            part = values[at : at + FLUSH_ROWS]
            rows = [Metric("loss", v, now, first + at + i) for i, v in enumerate(part)]
            if at + FLUSH_ROWS >= len(values):
                rows += final or []
            self.call("log the losses", self.client.log_batch, self.run_id, metrics=rows,
                      synchronous=True)  # fmt: skip
        self._sent = time.monotonic()

    def log_metrics(self, losses: np.ndarray, final: Mapping[str, float]) -> None:
        """Every loss not sent yet (all of them for a run trained elsewhere) and the final
        numbers (not finite -> NaN)."""
        from mlflow.entities import Metric

        self.add_losses(0, np.asarray(losses, dtype=np.float64))
        values = {k: metric_value(v) for k, v in final.items()}
        self.journal.update(metrics=values)
        now = int(time.time() * 1000)
        self._send([Metric(k, v, now, 0) for k, v in values.items()])

    def log_data(self, n: int, low: float, high: float, target: str = "sin") -> None:
        from polyexp.record import tracking

        self.journal.update(data=[n, low, high, target])
        data = [tracking.data_input(n, low, high, target)]
        self.call("log the data", tracking.log_inputs, self.client, self.run_id, data)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.journal.update(tags={**self.journal.state["tags"], **tags})
        rows = [RunTag(k, v) for k, v in tags.items()]
        self.call("set tags", self.client.log_batch, self.run_id, tags=rows)

    def log_artifacts(self, folder: Path) -> None:
        self.call("upload the artifacts", self.client.log_artifacts, self.run_id, str(folder))
        if self.failed is None:
            self.journal.update(artifacts_uploaded=True)

    def close(self, status: str, error: str | None) -> None:
        """Journals how the run ended, then tells the store; the journal goes once the store
        has everything. Raises StoreFailed when the store failed (now or before)."""
        self.journal.update(status=status, error=error)
        if error:
            self.call("set tags", self.client.set_tag, self.run_id, "error", error)
        self._send()
        self.call("close the run", self.client.set_terminated, self.run_id, status)
        if self.failed is not None:
            raise self.failed
        if not self.unsent:
            self.journal.remove()


@contextmanager
def start_run(
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    experiment: str | None = None,
    folder: Path | None = None,
) -> Iterator[Recorder]:
    """Opens a run in `experiment` (default: tracking.experiment_name()) and its journal in
    `folder` (default: default_folder()), and always closes it: FINISHED, FAILED (error in the
    tag `error`) or KILLED, in the store or, when the store failed, in the journal (then
    StoreFailed is raised, unless another error already is)."""
    from mlflow.entities import Param
    from mlflow.tracking.context.registry import resolve_tags

    from polyexp.record import tracking

    client, experiment_id = tracking.open_store(experiment)
    uri = client.tracking_uri
    where = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    fitted = limits.fit(run_name, params, {**tags, **where})  # the same record on every store
    run = bounded(
        uri, "open the run", client.create_run, experiment_id, run_name=fitted.run_name,
        tags=resolve_tags(fitted.tags),
    )  # fmt: skip
    folder = folder or default_folder()
    state = {
        "uri": store.on_disk(uri),  # never a password in a file
        "experiment_id": experiment_id,
        "run_id": run.info.run_id,
        "run_name": fitted.run_name,
        "params": fitted.params,
        "tags": fitted.tags,
        "host": where[HOST_TAG],
        "pid": os.getpid(),
        "status": "RUNNING",
        "error": None,
        "metrics": {},
        "artifacts_uploaded": False,
    }
    recorder = Recorder(client, run.info.run_id, Journal.create(folder, state))
    pending.add(folder)
    status, error = "FAILED", None
    try:
        rows = [Param(k, v) for k, v in fitted.params.items()]
        recorder.call("log the params", client.log_batch, run.info.run_id, params=rows)
        recorder.call("keep the whole values", fitted.keep, client, run.info.run_id)
        yield recorder
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except StoreFailed as failed:
        error = f"StoreFailed: {failed}"[:5000]
        raise
    except BaseException as problem:
        error = f"{type(problem).__name__}: {problem}"[:5000]
        raise
    finally:
        try:
            recorder.close(status, error)
        except StoreFailed:
            if status == "FINISHED":
                raise  # nothing else is being raised: this is the run's error
