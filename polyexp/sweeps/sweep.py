"""Sweeps: one MLflow parent run per multirun, every job its child, a summary at the end.

Hydra calls `SweepCallback` in the process that launches the sweep. Jobs may run elsewhere
(joblib workers, submitit processes, Slurm nodes), so the parent is handed to them in the
environment they inherit (POLYEXP_SWEEP_PARENT) and in the sweep's own folder,
`<sweep dir>/.polyexp/<parent run id>/parent.json`: two sweeps started in the same second
from the same folder never share a parent. Each job writes `jobs/<num>.json` beside its
parent.json when it ends. The parent lives in one
place, `parents()`, the block around the `polyexp` command: the callback registers it there,
and the block's end closes it with `finish` as the sweep ended (FINISHED, FAILED or KILLED),
also when Hydra re-raises a failed job (then `on_multirun_end` never runs): never RUNNING.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from polyexp import config
from polyexp.sweeps import stopping

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from polyexp.training import Trained

PARENT_TAG = "mlflow.parentRunId"
GROUP_TAG = "sweep.group"  # a job's config hash without seed: jobs differing only by seed share it
FOLDER = ".polyexp"  # inside the sweep dir: <parent run id>/parent.json, .../jobs/<num>.json
OPEN = "parent.json"  # a sweep in progress (renamed parent.closed.json when it ends)
PARENT_ENV = "POLYEXP_SWEEP_PARENT"  # the parent, handed by the launching process to its jobs
STORE_FAILED = "store-failed"  # in the parent's folder: the store failed mid-sweep

# Job outcomes, as the job files and the summary spell them (KILLED: interrupted).
FINISHED, DIVERGED, SKIPPED, FAILED, KILLED = "FINISHED", "DIVERGED", "SKIPPED", "FAILED", "KILLED"


@dataclass(frozen=True)
class Parent:
    """What a job needs to find its parent run (written by the launching process)."""

    uri: str  # the tracking store
    experiment_id: str
    run_id: str
    folder: str  # the sweep dir's .polyexp folder


@dataclass(frozen=True)
class Job:
    """One job's outcome, written by the job wherever it ran."""

    num: int
    overrides: list[str]
    status: str  # FINISHED | DIVERGED | SKIPPED | FAILED | KILLED
    run_id: str | None = None  # the run it made, or for SKIPPED the earlier run it matched
    final_loss: float | None = None
    error: str | None = None


_open: dict[str, Parent] = {}  # parents opened in the current `parents()` block, not closed yet


@contextmanager
def parents() -> Iterator[None]:
    """The span of the sweeps started inside: each parent the callback opens is closed when
    the block ends, FINISHED when it ends normally (its jobs decide), else KILLED on an
    interrupt or FAILED."""
    status: str | None = FAILED
    try:
        yield
        status = None
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for run_id in list(_open):
            finish(_open.pop(run_id), status)


class SweepAborted(BaseException):
    """The sweep cannot start (its store or its folder cannot be used); the cause says why.
    A BaseException, because Hydra only warns about a callback's Exception and would then run
    every job without a parent."""


class SweepCallback(Callback):
    """Registered under hydra.callbacks in conf/config.yaml."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            parent = self._open_parent(config)
        except Exception as error:
            raise SweepAborted(str(error)) from error
        announce_resume(config, parent)

    def _open_parent(self, config: DictConfig) -> Parent:
        from mlflow.entities import Param
        from mlflow.tracking.context.registry import resolve_tags

        from polyexp.record import limits, tracking

        # Creating the store and the experiment here, before any job starts, keeps parallel jobs
        # out of MLflow's schema migration and experiment creation, which race on a fresh store.
        client, experiment_id = tracking.open_store()
        overrides = " ".join(config.hydra.overrides.task) or "(defaults)"
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        (sweep_dir / FOLDER).mkdir(parents=True, exist_ok=True)  # refused before a parent exists
        fitted = limits.fit(  # the same record on every store
            f"sweep {overrides}",
            {"sweep.overrides": overrides},
            {
                "sweep": "parent",
                "sweep.dir": str(sweep_dir),
                "sweep.pid": str(os.getpid()),
                "polyexp.host": socket.gethostname(),
            },
        )
        run = client.create_run(
            experiment_id, run_name=fitted.run_name, tags=resolve_tags(fitted.tags)
        )
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in fitted.params.items()])
        fitted.keep(client, run.info.run_id)
        folder = sweep_dir / FOLDER / run.info.run_id  # this sweep's own, whoever shares the dir
        (folder / "jobs").mkdir(parents=True)
        parent = Parent(client.tracking_uri, experiment_id, run.info.run_id, str(folder))
        hand_to_jobs(parent)
        _open[parent.run_id] = parent  # closed where `parents()` ends
        # A signal now stops this sweep's jobs wherever they run, then closes the parent.
        stopping.watch(str(folder), str(sweep_dir), str(config.hydra.launcher.get("_target_")))
        _close_zombies(client, experiment_id)
        return parent


def hand_to_jobs(parent: Parent) -> None:
    """Makes `parent` the one its jobs find: in this process's environment, which every
    launcher's job processes inherit (joblib, submitit, Slurm), and in its folder's parent.json
    for a job that was not given the environment."""
    from polyexp.record import store

    os.environ[PARENT_ENV] = json.dumps(asdict(parent))
    on_disk = replace(parent, uri=store.on_disk(parent.uri))  # never a password in a file
    (Path(parent.folder) / OPEN).write_text(json.dumps(asdict(on_disk)) + "\n")


def _close_zombies(client: MlflowClient, experiment_id: str) -> None:
    """Resume's cleanup: runs of the experiment left RUNNING by a process that is gone."""
    from polyexp.record import store, sync

    with store.fast_http():
        closed = sync.close_zombies(client, [experiment_id], "a sweep's resume")
    if closed:
        print(
            f"polyexp: closed {len(closed)} runs left RUNNING by processes that are gone, as "
            f"KILLED (tag {sync.CLOSED_BY})",
            flush=True,
        )


def announce_resume(sweep_cfg: DictConfig, parent: Parent) -> None:
    """Before the first job: how many of the sweep's jobs resume will skip (they already
    FINISHED in the experiment), if any. Best effort: a sweep it cannot foresee (another
    sweeper than Hydra's basic one, an override it cannot expand) it says nothing about."""
    try:
        skipped, total = resumed_jobs(sweep_cfg, parent)
    except Exception:  # the jobs still say so one by one
        return
    if skipped:
        print(
            f"polyexp: resuming: {skipped} of this sweep's {total} jobs already FINISHED in the "
            "experiment and will be skipped (resume=false reruns them)",
            flush=True,
        )


def resumed_jobs(sweep_cfg: DictConfig, parent: Parent) -> tuple[int, int]:
    """(how many jobs run_job will skip, how many jobs) for a sweep of Hydra's basic sweeper."""
    from mlflow.tracking import MlflowClient

    jobs = job_overrides(sweep_cfg)
    client = MlflowClient(parent.uri)
    finished = client.search_runs(  # none in the experiment: nothing to compose
        [parent.experiment_id],
        "attributes.status = 'FINISHED' and tags.config_hash LIKE '%'",
        max_results=1,
    )
    if not jobs or not finished:
        return 0, len(jobs)
    groups = set(sweep_cfg.hydra.runtime.choices)
    composed: dict[tuple[str, ...], DictConfig] = {}
    fingerprints = []
    for overrides in jobs:
        cfg = _task_config(overrides, groups, composed, str(sweep_cfg.hydra.job.config_name))
        if cfg.get("resume", True):
            fingerprints.append(config.fingerprint(cfg))
    twins = {f: finished_twin(client, parent.experiment_id, f) for f in set(fingerprints)}
    return sum(twins[f] is not None for f in fingerprints), len(jobs)


def job_overrides(sweep_cfg: DictConfig) -> list[list[str]]:
    """Every job's overrides, as Hydra's basic sweeper expands the sweep (its `params`, then the
    command line's overrides; a product of the comma lists and ranges)."""
    if sweep_cfg.hydra.runtime.choices.get("hydra/sweeper") != "basic":
        raise ValueError("only Hydra's basic sweeper lists its jobs before they run")
    params = [f"{k}={v}" for k, v in (sweep_cfg.hydra.sweeper.get("params") or {}).items()]
    columns: dict[str, list[str]] = {}
    for o in _parser().parse_overrides([*params, *sweep_cfg.hydra.overrides.task]):
        key = o.get_key_element()
        if not o.is_sweep_override():
            columns[key] = [f"{key}={o.get_value_element_as_str()}"]
        elif o.is_discrete_sweep():
            columns[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            raise ValueError(f"{o.input_line}: not a sweep the basic sweeper expands")
    return [list(job) for job in itertools.product(*columns.values())]


@functools.cache
def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _task_config(
    overrides: list[str], groups: set[str], composed: dict[tuple[str, ...], DictConfig], name: str
) -> DictConfig:
    """A job's config without `hydra`, as the job gets it. Hydra takes ~0.1 s to compose one, so
    jobs that differ only in values (`optimizer.lr=...`) share one composition and set those
    values on a copy, as Hydra sets a value override after composing."""
    import hydra

    parsed = _parser().parse_overrides(overrides)
    plain = [
        o
        for o in parsed
        if not (o.is_add() or o.is_force_add() or o.is_delete() or o.is_hydra_override())
        and o.package is None
        and o.key_or_group not in groups
    ]
    rest = tuple(str(o.input_line) for o in parsed if all(o is not p for p in plain))
    if rest not in composed:
        composed[rest] = hydra.compose(config_name=name, overrides=list(rest))
    cfg = copy.deepcopy(composed[rest])
    for o in plain:
        OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
    return cfg


# --- in the job -------------------------------------------------------------------------------


def current_parent() -> Parent | None:
    """The parent of the job running in this process; None outside a multirun (or when the
    sweep callback is not registered)."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None
    return parent_of(str(hydra.sweep.dir))


def parent_of(sweep_dir: str) -> Parent | None:
    """The parent run of this process's sweep in `sweep_dir`: the one its launching process
    handed down (PARENT_ENV), else the only sweep still open in that folder; None when the
    sweep callback opened none. Two sweeps sharing a folder never share a parent."""
    base = Path(sweep_dir).resolve() / FOLDER
    handed = os.environ.get(PARENT_ENV)
    if handed:
        parent = Parent(**json.loads(handed))
        if Path(parent.folder).parent == base:
            return parent
    found = sorted(base.glob(f"*/{OPEN}"))
    if len(found) > 1:
        from polyexp.errors import UserError

        raise UserError(
            f"{len(found)} sweeps are open in {base.parent} and this job was not told which is "
            f"its own ({PARENT_ENV} is not set); give each sweep its own hydra.sweep.dir"
        )
    if not found:
        return None
    from polyexp.record import store

    parent = Parent(**json.loads(found[0].read_text()))
    return replace(parent, uri=store.from_disk(parent.uri, found[0]))


def finished_twin(client: MlflowClient, experiment_id: str, fingerprint: str) -> Any | None:
    """The newest FINISHED run of the experiment with this config fingerprint, if any."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.config_hash = '{fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def seed_group(cfg: DictConfig) -> str:
    """The config hash of `cfg` with its seed left out (set to null)."""
    unseeded = cfg.copy()
    with read_write(unseeded), open_dict(unseeded):
        unseeded.seed = None
    return config.fingerprint(unseeded)


def run_job(
    cfg: DictConfig, overrides: list[str], parent: Parent, trained: Trained | None = None
) -> float:
    """Runs one job of a sweep as a child of `parent`, or skips it when `resume` is on and an
    identical config already FINISHED in the experiment; returns its final loss either way.
    With `trained` (the job trained in a batch: polyexp.sweeps.batched) it only records the job."""
    hydra = HydraConfig.get()
    num = int(hydra.job.num)
    interrupted = trained is not None and trained.interrupted
    # In flight: registered, and stopped by SIGTERM / SIGINT in whatever process it runs.
    with stopping.job(parent.folder, num, overrides, hydra.runtime.output_dir, interrupted):
        try:
            return _run_job(cfg, overrides, parent, num, trained)
        except KeyboardInterrupt as interrupt:
            why = f"interrupted by {interrupt or 'Ctrl-C'}"
            _write(parent, Job(num, overrides, KILLED, error=why))  # run id: see finish
            raise


def _run_job(
    cfg: DictConfig, overrides: list[str], parent: Parent, num: int, trained: Trained | None
) -> float:
    from mlflow.tracking import MlflowClient

    from polyexp.record import journal, runner, store

    failed = Path(parent.folder) / STORE_FAILED
    if failed.exists():  # an earlier job found the store dead: the sweep stops, job by job fast
        raise SweepAborted(failed.read_text().strip())
    if cfg.get("resume", True):
        try:
            twin = journal.bounded(
                parent.uri, "look up finished runs", finished_twin,
                MlflowClient(parent.uri), parent.experiment_id, config.fingerprint(cfg),
            )  # fmt: skip
        except journal.StoreFailed as error:
            _store_failed(parent, error)
        if twin is not None:
            final_loss = float(twin.data.metrics.get("final_loss", math.inf))
            if not final_loss < sys.float_info.max:  # SQLite keeps inf as the largest float
                final_loss = math.inf
            print(
                f"polyexp: job {num} skipped: the same config already FINISHED as run "
                f"{twin.info.run_id} ({twin.info.run_name}), final_loss {final_loss:.6g} "
                "(resume=false reruns it)"
            )
            _write(parent, Job(num, overrides, SKIPPED, twin.info.run_id, final_loss))
            return final_loss
    try:
        tags = {PARENT_TAG: parent.run_id, "sweep.job": str(num), "sweep.pid": str(os.getpid())}
        tags[GROUP_TAG] = seed_group(cfg)
        if trained is None:
            result = runner.run(cfg, overrides, tags)
        else:
            result = runner.record(cfg, trained, overrides, tags)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            raise  # KILLED (run_job)
        why = store.redact(f"{type(error).__name__}: {error}")
        _write(parent, Job(num, overrides, FAILED, error=why))
        if isinstance(error, journal.StoreFailed):
            _store_failed(parent, error)
        raise
    status = FINISHED if result.diverged_step is None else DIVERGED
    _write(parent, Job(num, overrides, status, result.run_id, result.final_loss))
    return result.final_loss


def _store_failed(parent: Parent, error: Exception) -> None:
    """The store failed for the bound: every later job of the sweep stops at once (SweepAborted
    gets past Hydra's launchers, which would run the next job) and the parent is left to
    polyexp-sync."""
    (Path(parent.folder) / STORE_FAILED).write_text(f"{error}\n")
    raise SweepAborted(str(error)) from error


def _write(parent: Parent, job: Job) -> None:
    path = Path(parent.folder) / "jobs" / f"{job.num}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(job)) + "\n")
    tmp.replace(path)  # atomic: the launching process never reads half a file


# --- closing the parent, in the launching process ---------------------------------------------


def jobs_of(parent: Parent) -> list[Job]:
    files = sorted((Path(parent.folder) / "jobs").glob("*.json"), key=lambda p: int(p.stem))
    return [Job(**json.loads(p.read_text())) for p in files]


def _summarize(client: MlflowClient, parent: Parent, ranked: list[Job], children: list) -> None:
    """Prints the ranked table (and the one over seeds), writes the sweep's views in the MLflow
    UI, prints their URLs, and records it all on the parent: summary.md, losses.png and its
    description."""
    from polyexp.sweeps import summary, ui

    table = summary.table(ranked)
    print(f"\nSweep summary ({len(ranked)} jobs, parent run {parent.run_id}):\n{table}")
    groups = summary.groups(ranked)
    grouped = summary.grouped_table(groups) if groups else None
    if grouped:
        print(
            f"\nGrouped over seeds ({len(groups)} configurations), by mean final_loss:\n{grouped}"
        )
    text = table + (f"\n\nGrouped over seeds:\n\n{grouped}" if grouped else "")
    views = ui.save_sweep_views(
        client, parent.experiment_id, parent.run_id, summary.choices(ranked), children
    )
    print(f"\npolyexp: compare the {len(ranked)} jobs in the MLflow UI (polyexp-ui): {views.url}")
    if views.seeds_url:
        print(f"polyexp: the same jobs grouped over seeds: {views.seeds_url}")
    summary.record(client, parent.run_id, ranked, text)
    note = summary.description(table, grouped, views.url)
    client.set_tag(parent.run_id, "mlflow.note.content", note)


def _close_left_running(client: MlflowClient, children: list, error: str | None) -> None:
    """Ends the child runs their jobs left RUNNING: a job's process that is gone (killed from
    outside, or by its launcher) never closed its run. An interrupted sweep's: KILLED; else
    FAILED. An interrupted sweep leaves a run whose process still lives (on another host) to
    close itself."""
    from polyexp.record import journal, sync

    here = socket.gethostname()
    for child in children:
        if child.info.status != "RUNNING":
            continue
        tags = child.data.tags
        pid = tags.get(journal.PID_TAG)
        gone = tags.get(journal.HOST_TAG) == here and pid and not sync.alive(int(pid))
        if error == KILLED:
            if not gone:
                continue
            why = f"the sweep was interrupted and its process (pid {pid} on {here}) is gone"
            client.set_tag(child.info.run_id, sync.CLOSED_BY, why)
        else:
            why = "the job ended without closing its run" + (
                f": its process (pid {pid} on {here}) died: killed from outside (e.g. by the "
                "OOM killer) or by its launcher (joblib's loky kills every worker when one dies)"
                if gone
                else ""
            )
            client.set_tag(child.info.run_id, "error", why)
        client.set_terminated(child.info.run_id, KILLED if error == KILLED else FAILED)


def _every_job(parent: Parent, children: list, unfinished: str) -> list[Job]:
    """The sweep's jobs: each Job file, plus a job still registered in flight that wrote none
    (its process died), as `unfinished`; a job that could not say its run id gets it from its
    child run (tag sweep.job)."""
    jobs = {j.num: j for j in jobs_of(parent)}
    for j in stopping.in_flight(parent.folder):
        if j.num not in jobs:
            why = "its process ended without saying how the job ended"
            jobs[j.num] = Job(j.num, j.overrides, unfinished, error=why)
    runs = {c.data.tags.get("sweep.job"): c.info.run_id for c in children}
    return [
        replace(j, run_id=runs.get(str(j.num)))
        if j.run_id is None and j.status in (FAILED, KILLED)
        else j
        for _, j in sorted(jobs.items())
    ]


def finish(parent: Parent, error: str | None) -> None:
    """Prints and records the sweep summary, then ends the parent: FINISHED when every job
    finished (diverged and skipped jobs count as finished), FAILED when any failed or the sweep
    raised, KILLED when interrupted."""
    from mlflow.entities import Metric, RunStatus
    from mlflow.tracking import MlflowClient

    from polyexp.sweeps import summary

    client = MlflowClient(parent.uri)
    status = error or FINISHED
    if (Path(parent.folder) / STORE_FAILED).exists():  # polyexp-sync closes it later
        (Path(parent.folder) / "parent-status.json").write_text(json.dumps(status) + "\n")
        return
    try:
        children = client.search_runs(
            [parent.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.run_id}'"
        )
        _close_left_running(client, children, error)
        jobs = _every_job(parent, children, KILLED if error == KILLED else FAILED)
        if any(j.status == FAILED for j in jobs) or any(
            c.info.status != "FINISHED" for c in children
        ):
            status = error or FAILED
        counts = {s: sum(j.status == s for j in jobs) for s in (FAILED, DIVERGED, SKIPPED, KILLED)}
        metrics: dict[str, float] = {"jobs": len(jobs)}
        metrics.update({f"jobs_{k.lower()}": v for k, v in counts.items()})
        ranked = summary.rank(jobs)
        if ranked and ranked[0].final_loss is not None:
            metrics["best_final_loss"] = ranked[0].final_loss
        now = summary.now_ms()
        client.log_batch(
            parent.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()]
        )
        if jobs:
            _summarize(client, parent, ranked, children)
    except Exception as problem:  # a broken summary must never keep the parent RUNNING
        print(f"polyexp: the sweep summary failed: {problem}", file=sys.stderr)
        client.set_tag(parent.run_id, "error", f"summary: {type(problem).__name__}: {problem}")
    finally:
        client.set_terminated(parent.run_id, RunStatus.to_string(RunStatus.from_string(status)))
        closed(parent)


def closed(parent: Parent) -> None:
    """`parent` is no longer one a job can find: its parent.json renamed, the environment
    cleared."""
    if os.environ.get(PARENT_ENV) == json.dumps(asdict(parent)):
        del os.environ[PARENT_ENV]
    stopping.unwatch(parent.folder)
    path = Path(parent.folder) / OPEN
    if path.exists():
        path.replace(path.with_name("parent.closed.json"))
