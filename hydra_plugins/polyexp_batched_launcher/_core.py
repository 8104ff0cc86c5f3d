"""The batched launch: compose every job, group them, train each group at once, then record
each job through Hydra's own run_job (its folder, .hydra/ files, callbacks, JobReturn) with
polyexp.sweeps.sweep.run_job as the task (child run, tags, Job file, resume), exactly as a job
of the basic launcher is recorded, only without training it again."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import (
    JobReturn,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from omegaconf import DictConfig, OmegaConf, open_dict

from polyexp import config
from polyexp.sweeps import batched, sweep
from polyexp.training import Trained, determinism

if TYPE_CHECKING:
    from hydra_plugins.polyexp_batched_launcher.batched_launcher import BatchedLauncher

log = logging.getLogger(__name__)


class Composer:
    """Each job's config, as Hydra's load_sweep_config composes it, only cheaper: a job whose
    overrides differ from an already composed job's only in values (`optimizer.lr=...`, never
    a group, an addition or a deletion) is that config with those values set, as Hydra sets
    them; any other job is composed by Hydra. (Hydra takes ~0.1 s to compose a job.)

    `install()` also answers the sweeper's own composition of every job (Hydra's
    Sweeper.validate_batch_is_legal, run before launch on the same config loader) this way, and
    keeps what it composed for the launch to take instead of composing it a second time."""

    def __init__(self, launcher: BatchedLauncher) -> None:
        assert launcher.config is not None and launcher.hydra_context is not None
        self.master = launcher.config
        self.loader = launcher.hydra_context.config_loader
        self.hydra = self.loader.load_sweep_config  # Hydra's own, whatever install() does
        self.parser = OverridesParser.create()
        self.composed: dict[tuple[str, ...], tuple[list[Override], DictConfig]] = {}
        self.kept: dict[tuple[str, ...], DictConfig] = {}

    def install(self) -> None:
        """Makes the config loader's load_sweep_config this composer's (for this process)."""
        self.loader.load_sweep_config = self._load_sweep_config  # type: ignore[method-assign]

    def _load_sweep_config(
        self, master_config: DictConfig, sweep_overrides: list[str]
    ) -> DictConfig:
        if master_config is not self.master:
            return self.hydra(master_config, sweep_overrides)
        cfg = self(sweep_overrides)
        self.kept[tuple(sweep_overrides)] = cfg
        return cfg  # Hydra's validation only looks whether composing raises

    def take(self, overrides: Sequence[str]) -> DictConfig:
        """The config of a job to launch: the one composed for the sweeper, else a new one."""
        return self.kept.pop(tuple(overrides), None) or self(overrides)

    def __call__(self, overrides: Sequence[str]) -> DictConfig:
        parsed = self.parser.parse_overrides(list(overrides))
        shape = tuple(o.key_or_group for o in parsed)
        if shape in self.composed:
            derived = self._derive(parsed, *self.composed[shape])
            if derived is not None:
                return derived
        cfg = self.hydra(self.master, list(overrides))
        self.composed.setdefault(shape, (parsed, cfg))
        return cfg

    def _derive(
        self, parsed: list[Override], ref_parsed: list[Override], ref: DictConfig
    ) -> DictConfig | None:
        pairs = zip(parsed, ref_parsed, strict=True)
        changed = [(o, r) for o, r in pairs if o.input_line != r.input_line]
        groups = ref.hydra.runtime.choices
        for o, r in changed:
            plain = o.type == r.type and not (o.is_add() or o.is_force_add() or o.is_delete())
            if not plain or o.package is not None or o.is_hydra_override():
                return None
            if o.key_or_group in groups or o.is_sweep_override():
                return None
        cfg = copy.deepcopy(ref)
        for o, _ in changed:
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = [str(o.input_line) for o in parsed]
            job = cfg.hydra.job
            job.override_dirname = get_overrides_dirname(
                overrides=[o for o in parsed if not o.is_hydra_override()],
                kv_sep=job.config.override_dirname.kv_sep,
                item_sep=job.config.override_dirname.item_sep,
                exclude_keys=job.config.override_dirname.exclude_keys,
            )
        OmegaConf.copy_cache(from_config=self.master, to_config=cfg)
        return cfg


def _record(cfg: DictConfig, parent: sweep.Parent, trained: Trained | None) -> float:
    """The task of one job: polyexp's own sweep job, given what its batch trained."""
    overrides = list(HydraConfig.get().overrides.task)
    return sweep.run_job(cfg, overrides, parent, trained)


def _plan(jobs: Sequence[DictConfig], parent: sweep.Parent) -> dict[str, list[int]]:
    """Groups the jobs to train together: {group key: job indices}. A job left out (a config
    that check refuses, a model not known to batch, a job resume will skip) runs as a job of
    the basic launcher would, and says why there."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(parent.uri)
    groups: dict[str, list[int]] = {}
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
        groups.setdefault(key, []).append(i)
    return groups


def _train(
    jobs: Sequence[DictConfig], groups: dict[str, list[int]], max_batch: int
) -> dict[int, Trained]:
    trained: dict[int, Trained] = {}
    for members in groups.values():
        for start in range(0, len(members), max_batch):
            part = members[start : start + max_batch]
            settings = [config.check(_task(jobs[i])) for i in part]
            try:
                with determinism.settings(settings[0]):  # as a run of its own on a GPU
                    outcomes = batched.train(settings)
            except Exception as error:  # e.g. no cuda here: each job then says so itself
                log.warning(f"batch of {len(part)} jobs not trained together: {error}")
                continue
            trained.update(zip(part, outcomes, strict=True))
            log.info(f"trained {len(part)} jobs as one batch")
    return trained


def _task(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])


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

    compose = launcher.composer or Composer(launcher)
    jobs: list[DictConfig] = []
    for idx, overrides in enumerate(job_overrides, initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        cfg = compose.take(list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        jobs.append(cfg)

    parent = sweep.parent_of(str(hydra.sweep.dir))
    trained = _train(jobs, _plan(jobs, parent), launcher.max_batch) if parent else {}

    runs = []
    for i, cfg in enumerate(jobs):
        task: Any = launcher.task_function
        if parent is not None:
            task = partial(_record, parent=parent, trained=trained.get(i))
        runs.append(
            run_job(
                hydra_context=launcher.hydra_context,
                task_function=task,
                config=cfg,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
        )
        configure_log(hydra.hydra_logging, hydra.verbose)
    return runs
