"""Checks a composed config before any work starts and turns it into plain, typed settings.

Every problem is a `ConfigError` whose message is one line naming the key and what is
allowed, so the command line can print it without a traceback.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from polyexp import models

MODELS = tuple(models.MODELS)
OPTIMIZERS = ("manual_sgd", "sgd", "rmsprop")
BACKENDS = ("numpy", "torch", "autograd")
DEVICES = ("cpu", "cuda", "mps", "auto")
INITS = ("normal", "fixed")
DTYPES = ("float32", "float64")


class ConfigError(ValueError):
    """A config value that cannot run; the message is one line for the user."""


@dataclass(frozen=True)
class Settings:
    """What a run needs, checked: the config reduced to plain Python values."""

    model: str
    optimizer: str
    hyper: dict[str, Any]  # the optimizer's hyper-parameters (lr, momentum, ...)
    backend: str
    device: str  # the device asked for (cpu, cuda, mps, auto)
    dtype: str
    seed: int
    steps: int
    log_every: int
    n: int
    low: float
    high: float
    init: str
    coefficients: tuple[float, ...] | None  # with init=fixed: one number per model parameter


def _choice(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> str:
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not an option; choose from {', '.join(allowed)}")
    return str(value)


def _int(cfg: DictConfig, key: str, minimum: int) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r}: expected a whole number >= {minimum}")
    return value


def _number(value: Any, key: str, minimum: float | None = None, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key}={value!r}: expected a finite number")
    if positive and value <= 0:
        raise ConfigError(f"{key}={value!r}: expected a number > 0")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}={value!r}: expected a number >= {minimum}")
    return float(value)


# Each optimizer's hyper-parameters: key -> (kind, lower bound); "pos" means > 0.
_HYPER: dict[str, dict[str, tuple[str, float]]] = {
    "manual_sgd": {"lr": ("pos", 0.0)},
    "sgd": {
        "lr": ("pos", 0.0),
        "momentum": ("num", 0.0),
        "dampening": ("num", 0.0),
        "weight_decay": ("num", 0.0),
        "nesterov": ("bool", 0.0),
    },
    "rmsprop": {
        "lr": ("pos", 0.0),
        "alpha": ("num", 0.0),
        "eps": ("pos", 0.0),
        "weight_decay": ("num", 0.0),
        "momentum": ("num", 0.0),
        "centered": ("bool", 0.0),
    },
}


def _hyper(cfg: DictConfig, optimizer: str) -> dict[str, Any]:
    given = {k: v for k, v in cfg.optimizer.items() if k != "name"}
    allowed = _HYPER[optimizer]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(
            f"optimizer.{unknown[0]} is not a hyper-parameter of optimizer={optimizer}; "
            f"choose from {', '.join(allowed)}"
        )
    hyper: dict[str, Any] = {}
    for key, (kind, low) in allowed.items():
        full, value = f"optimizer.{key}", given.get(key)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{full}={value!r}: expected true or false")
            hyper[key] = value
        else:
            hyper[key] = _number(value, full, minimum=low, positive=kind == "pos")
    if optimizer == "rmsprop" and hyper["alpha"] > 1:
        raise ConfigError(f"optimizer.alpha={hyper['alpha']!r}: expected a number in [0, 1]")
    if hyper.get("nesterov") and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0 and dampening = 0")
    return hyper


def _coefficients(cfg: DictConfig, model: str) -> tuple[float, ...]:
    names = models.get(model).names
    wanted = f"[{','.join(names)}]"
    try:
        value = OmegaConf.to_container(cfg.init, resolve=True, throw_on_missing=True).get(  # type: ignore[union-attr]
            "coefficients"
        )
    except MissingMandatoryValue:
        value = None
    if value is None:
        raise ConfigError(
            f"init.coefficients is required with init=fixed: 'init.coefficients={wanted}'"
        )
    if not isinstance(value, list) or len(value) != len(names):
        raise ConfigError(
            f"init.coefficients={value!r}: expected a list of {len(names)} numbers {wanted}"
            f" for model={model}"
        )
    return tuple(_number(v, f"init.coefficients[{i}]") for i, v in enumerate(value))


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
    optimizer = _choice(cfg, "optimizer.name", OPTIMIZERS)
    backend = _choice(cfg, "backend.name", BACKENDS)
    device = _choice(cfg, "device.name", DEVICES)
    init = _choice(cfg, "init.name", INITS)
    low = _number(OmegaConf.select(cfg, "data.low"), "data.low")
    high = _number(OmegaConf.select(cfg, "data.high"), "data.high")
    if high <= low:
        raise ConfigError(f"data.high={high!r} must be greater than data.low={low!r}")
    resume = OmegaConf.select(cfg, "resume", default=True)
    if not isinstance(resume, bool):
        raise ConfigError(f"resume={resume!r}: expected true or false")
    if backend == "numpy" and device not in ("cpu", "auto"):
        raise ConfigError(
            f"device={device!r} cannot run backend=numpy (CPU only); choose from cpu, auto"
        )
    model = _choice(cfg, "model.name", MODELS)
    return Settings(
        model=model,
        optimizer=optimizer,
        hyper=_hyper(cfg, optimizer),
        backend=backend,
        device=device,
        dtype=_choice(cfg, "dtype", DTYPES),
        seed=_int(cfg, "seed", 0),
        steps=_int(cfg, "steps", 1),
        log_every=_int(cfg, "log_every", 0),
        n=_int(cfg, "data.n", 1),
        low=low,
        high=high,
        init=init,
        coefficients=_coefficients(cfg, model) if init == "fixed" else None,
    )
