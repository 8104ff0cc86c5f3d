"""The `polyexp` command: Hydra composes the config, polyexp.runner.run does the rest."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from polyexp.config import ConfigError


@hydra.main(version_base="1.3", config_path="pkg://polyexp.conf", config_name="config")
def _main(cfg: DictConfig) -> float:
    from polyexp.runner import run  # after composition, so `--help` stays fast

    try:
        result = run(cfg, list(HydraConfig.get().overrides.task))
    except ConfigError as error:
        sys.exit(f"polyexp: error: {error}")
    return result.final_loss  # what a sweeper (e.g. Optuna) minimises


def main() -> None:
    try:
        _main()
    except KeyboardInterrupt:
        # The run is already recorded as KILLED with every step computed so far.
        sys.exit("polyexp: interrupted")
