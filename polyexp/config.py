"""Checks a composed config before any work starts and turns it into typed settings: each
config group's option built as its object (polyexp.options), the top-level keys checked.

Every problem is a `ConfigError` whose message is one line naming the key and what is
allowed, so the command line can print it without a traceback.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from omegaconf import DictConfig, OmegaConf

from polyexp.errors import ConfigError
from polyexp.options import build, check_dtype
from polyexp.parts.backends import Backend
from polyexp.parts.data import Data, Init, Problem
from polyexp.parts.models import Model
from polyexp.parts.optimizers import Optimizer

__all__ = ["ConfigError", "Settings", "check", "fingerprint", "flatten", "options"]

DEVICES = ("cpu", "cuda", "mps", "auto")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Settings:
    """What a run needs, checked: each group's option as its object, the rest plain values."""

    model: Model
    optimizer: Optimizer
    backend: Backend
    data: Data
    init: Init
    device: str  # the device asked for (cpu, cuda, mps, auto)
    dtype: str
    seed: int
    steps: int
    log_every: int

    def problem(self) -> Problem:
        """The data and the initial parameters, in float64."""
        x, y = self.data.points()
        initial = self.init.initial(self.model.names, self.seed, self.model.name)
        return Problem(x=x, y=y, initial=initial)

    def choices(self) -> dict[str, str]:
        """The option chosen on each axis, as the run's tags name them."""
        return {
            "model": self.model.name,
            "optimizer": self.optimizer.name,
            "backend": self.backend.name,
            "device": self.device,
        }


def options(group: str) -> tuple[str, ...]:
    """The options polyexp ships for a config group: its YAML files under conf/<group>/."""
    folder = resources.files("polyexp.conf") / group
    return tuple(
        sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
    )


def _choice(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> str:
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not an option; choose from {', '.join(allowed)}")
    return str(value)


def _int(cfg: DictConfig, key: str, minimum: int, maximum: int | None = None) -> int:
    value = OmegaConf.select(cfg, key)
    if maximum is not None and not (isinstance(value, int) and minimum <= value <= maximum):
        raise ConfigError(f"{key}={value!r}: expected a whole number in [{minimum}, {maximum}]")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r}: expected a whole number >= {minimum}")
    return value


# torch's generator takes a seed of 64 bits (torch.manual_seed overflows beyond).
SEED_MAX = 2**64 - 1


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'lr': 1e-6}} -> {'optimizer.lr': 1e-6}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return {k.removesuffix("."): v for k, v in flat.items()}


# Keys that change what is printed or whether a job is skipped, never what a run computes.
VOLATILE_KEYS = ("log_every", "resume")


def fingerprint(cfg: DictConfig) -> str:
    """A hash of the resolved config minus VOLATILE_KEYS: equal hashes, identical runs."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    kept = {k: v for k, v in resolved.items() if k not in VOLATILE_KEYS and k != "hydra"}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check(cfg: DictConfig) -> Settings:
    """Validates every value a run uses; raises ConfigError (one line) on the first bad one."""
    optimizer = build(cfg, "optimizer", Optimizer)
    backend = build(cfg, "backend", Backend)
    device = _choice(cfg, "device.name", DEVICES)
    init = build(cfg, "init", Init)
    data = build(cfg, "data", Data)
    resume = OmegaConf.select(cfg, "resume", default=True)
    if not isinstance(resume, bool):
        raise ConfigError(f"resume={resume!r}: expected true or false")
    model = build(cfg, "model", Model)
    backend.check(model, device)
    s = Settings(
        model=model,
        optimizer=optimizer,
        backend=backend,
        data=data,
        init=init,
        device=device,
        dtype=_choice(cfg, "dtype", DTYPES),
        seed=_int(cfg, "seed", 0, SEED_MAX),
        steps=_int(cfg, "steps", 1),
        log_every=_int(cfg, "log_every", 0),
    )
    init.initial(model.names, s.seed, model.name)  # one number per parameter, or refused
    for group, option in (
        ("model", model),
        ("optimizer", optimizer),
        ("data", data),
        ("init", init),
    ):
        check_dtype(group, option, s.dtype)  # e.g. optimizer.lr=1e39 is inf in float32
    if data.n < len(model.names):  # the fit is not determined: no optimum, no gap to it
        raise ConfigError(
            f"data.n={data.n}: model={model.name} has {len(model.names)} parameters "
            f"({', '.join(model.names)}); expected at least {len(model.names)} data points"
        )
    return s
