"""polyexp: fit y = sin(x) with a cubic many ways, composed by Hydra and recorded in MLflow.

import polyexp
trained = polyexp.train(["backend=numpy"])        # train only: nothing recorded, no MLflow
result = polyexp.run(["model=sequential", "optimizer=rmsprop"])   # train, then record
result.coefficients, result.losses, result.run_id
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from polyexp.record.runner import Result
    from polyexp.training import Trained

__version__ = "0.1.0"
__all__ = ["compose", "run", "train"]


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config the command line would compose for these overrides (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("polyexp.conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def train(overrides: Sequence[str] = ()) -> Trained:
    """Trains one run as `polyexp OVERRIDES...` would, without recording it: returns the loss
    at every step, the final parameters, where the loss stopped being finite (if it did) and
    the loop's time. Never imports MLflow (nor torch on the numpy backend). A bad value raises
    polyexp.errors.ConfigError (one line)."""
    from polyexp import config, training

    return training.train(config.check(compose(overrides)))


def run(overrides: Sequence[str] = ()) -> Result:
    """Runs one experiment exactly as `polyexp OVERRIDES...` would and records it in MLflow.

    Returns the final coefficients, the loss at every step and the MLflow run id. A bad value
    raises polyexp.errors.ConfigError before anything is recorded."""
    from polyexp.record.runner import run as run_config

    return run_config(compose(overrides), overrides)
