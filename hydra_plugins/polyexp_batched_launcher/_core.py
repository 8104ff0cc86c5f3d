"""The batched launch, as Hydra's basic launcher launches, with one step between composing and
running: compose every job (Hydra's config loader, as every launcher does), group the jobs that
differ only in numbers and train each group at once, then run every job through Hydra's own
run_job (its folder, .hydra/ files, callbacks, JobReturn).

A job its batch trained runs polyexp's sweep job with what the batch trained, so it is only
recorded (child run, tags, Job file, resume), exactly as the task function Hydra gave records
a job it trains itself. Any other job (no sweep parent, a config that check refuses, a model
not known to batch, a job resume will skip, a batch that failed) runs Hydra's task function.

Only Hydra's public API: nothing from hydra._internal, nothing of Hydra's replaced or patched
(tests/test_batched.py checks both).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.types import TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from polyexp import config
from polyexp.sweeps import batched, stopping, sweep
from polyexp.training import determinism

if TYPE_CHECKING:
    from hydra_plugins.polyexp_batched_launcher.batched_launcher import BatchedLauncher
    from polyexp.config import Settings
    from polyexp.training import Trained

log = logging.getLogger(__name__)


def launch(
    launcher: BatchedLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    setup_globals()
    assert launcher.config is not None and launcher.hydra_context is not None
    assert launcher.task_function is not None
    hydra = launcher.config.hydra
    configure_log(hydra.hydra_logging, hydra.verbose)
    Path(str(hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info(f"Launching {len(job_overrides)} jobs in batches")

    jobs: list[DictConfig] = []
    for idx, overrides in enumerate(job_overrides, initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        cfg = launcher.hydra_context.config_loader.load_sweep_config(
            launcher.config, list(overrides)
        )
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        jobs.append(cfg)

    parent = sweep.parent_of(str(hydra.sweep.dir))
    try:
        trained = _train(_plan(jobs, parent), launcher.max_batch) if parent else {}
    except batched.Interrupted as stopped:  # Ctrl-C, SIGTERM while a batch trained
        assert parent is not None
        _record_killed(launcher, [jobs[i] for i in stopped.jobs], parent, stopped.trained)
        raise

    runs = []
    for i, cfg in enumerate(jobs):
        task = launcher.task_function
        if parent is not None and i in trained:
            task = _recorded(parent, trained[i])
        runs.append(_run(launcher, task, cfg))
    return runs


def _run(launcher: BatchedLauncher, task: TaskFunction, cfg: DictConfig) -> JobReturn:
    """One job through Hydra's own run_job, as the basic launcher runs it."""
    assert launcher.config is not None and launcher.hydra_context is not None
    try:
        return run_job(
            hydra_context=launcher.hydra_context,
            task_function=task,
            config=cfg,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
    finally:
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)


def _record_killed(
    launcher: BatchedLauncher,
    jobs: Sequence[DictConfig],
    parent: sweep.Parent,
    trained: Sequence[Trained],
) -> None:
    """The members of a batch whose training was interrupted, each recorded as a KILLED child
    run with its losses so far (its Job file says KILLED), within the stop's grace
    (POLYEXP_STOP_GRACE): each member's losses go to the store for its share of the time left,
    the rest stays in its journal for polyexp-sync; a member the grace leaves no time for is not
    recorded, and said so. A second signal stops at once."""
    from polyexp.record import runner

    deadline = time.monotonic() + stopping.grace()
    for done, (cfg, one) in enumerate(zip(jobs, trained, strict=True)):
        now = time.monotonic()
        if now > deadline:
            log.warning(
                f"{len(jobs) - done} jobs of the interrupted batch not recorded: "
                f"{stopping.GRACE_ENV}={stopping.grace():g} s is over"
            )
            return
        share = now + (deadline - now) / (len(jobs) - done)
        try:
            _run(launcher, _recorded(parent, dataclasses.replace(one, record_by=share)), cfg)
        except runner.Killed:  # recorded KILLED, as asked
            continue


def _recorded(parent: sweep.Parent, trained: Trained) -> TaskFunction:
    """The task of a job its batch trained: what the task function Hydra gave runs for a job
    of a sweep (polyexp.sweep.run_job: child run, tags, Job file, resume), given what the batch
    trained, so the job is recorded, not trained again. Handed to Hydra's run_job through its
    task_function parameter, as any launcher hands the task it runs (Hydra's joblib launcher
    hands an unwrapped one)."""
    return partial(_record, parent=parent, trained=trained)


def _record(cfg: DictConfig, parent: sweep.Parent, trained: Trained) -> float:
    overrides = list(HydraConfig.get().overrides.task)
    return sweep.run_job(cfg, overrides, parent, trained)


def _plan(jobs: Sequence[DictConfig], parent: sweep.Parent) -> list[list[tuple[int, Settings]]]:
    """The groups of jobs to train together, each job as (index, its checked settings). A job
    left out (a config that check refuses, a model not known to batch, a job resume will skip)
    runs Hydra's task function, as a job of the basic launcher would, and says why there."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(parent.uri)
    groups: dict[str, list[tuple[int, Settings]]] = {}
    for i, cfg in enumerate(jobs):
        task = _task(cfg)
        try:
            s = config.check(task)
        except config.ConfigError:
            continue
        key = batched.group_key(task, s)
        if key is None:
            continue
        if task.get("resume", True) and sweep.finished_twin(
            client, parent.experiment_id, config.fingerprint(task)
        ):
            continue
        groups.setdefault(key, []).append((i, s))
    return list(groups.values())


def _train(groups: list[list[tuple[int, Settings]]], max_batch: int) -> dict[int, Trained]:
    """What each batch trained, by job index; a job of a batch that failed is left out."""
    trained: dict[int, Trained] = {}
    for members in groups:
        for start in range(0, len(members), max_batch):
            part = members[start : start + max_batch]
            settings = [s for _, s in part]
            try:
                with determinism.settings(settings[0]):  # as a run of its own on a GPU
                    outcomes = batched.train(settings)
            except batched.Interrupted as stopped:
                stopped.jobs = [i for i, _ in part]  # the batch's members, by job index
                raise
            except Exception as error:  # e.g. no cuda here: each job then says so itself
                log.warning(f"batch of {len(part)} jobs not trained together: {error}")
                continue
            trained.update(zip((i for i, _ in part), outcomes, strict=True))
            log.info(f"trained {len(part)} jobs as one batch")
    return trained


def _task(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])
