"""The `polyexp` command: Hydra composes the config, polyexp.runner.run does the rest."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from polyexp import sweep
from polyexp.config import ConfigError


@hydra.main(version_base="1.3", config_path="pkg://polyexp.conf", config_name="config")
def _main(cfg: DictConfig) -> float:
    from polyexp.runner import run  # after composition, so `--help` stays fast

    overrides = list(HydraConfig.get().overrides.task)
    parent = sweep.current_parent()
    if parent is not None:  # a job of a multirun: a child run; a bad value fails this job only
        return sweep.run_job(cfg, overrides, parent)
    try:
        result = run(cfg, overrides)
    except ConfigError as error:
        sys.exit(f"polyexp: error: {error}")
    return result.final_loss  # what a sweeper (e.g. Optuna) minimises


def main() -> None:
    try:
        _main()
    except KeyboardInterrupt:
        # The run is already recorded as KILLED with every step computed so far.
        sweep.close_open("KILLED")
        sys.exit("polyexp: interrupted")
    except BaseException:
        # Hydra re-raises a failed job at the end of a sweep (as SystemExit after printing it),
        # so on_multirun_end never runs: the parent is closed here.
        sweep.close_open("FAILED")
        raise
