"""polyexp: fit y = sin(x) with a cubic many ways, composed by Hydra and recorded in MLflow.

import polyexp
result = polyexp.run(["model=sequential", "optimizer=rmsprop"])
result.coefficients, result.losses, result.run_id
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from polyexp.runner import Result

__version__ = "0.1.0"
__all__ = ["compose", "run"]


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config the command line would compose for these overrides (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("polyexp.conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def run(overrides: Sequence[str] = ()) -> Result:
    """Runs one experiment exactly as `polyexp OVERRIDES...` would and records it in MLflow.

    Returns the final coefficients, the loss at every step and the MLflow run id. A bad value
    raises polyexp.config.ConfigError before anything is recorded."""
    from polyexp.runner import run as run_config

    return run_config(compose(overrides), overrides)
