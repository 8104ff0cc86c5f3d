"""Every choice of a config group is an `Option`: a frozen dataclass that owns what it knows,
built from its YAML file, which names it with Hydra's `_target_`:

    # conf/optimizer/sgd.yaml
    _target_: polyexp.parts.optimizers.SGD
    name: sgd
    lr: 1.0e-6

`build` imports the target (Hydra's own `get_class`) and checks every value against the
class's typed fields before anything runs: an unknown key, a wrong type or a value out of its
bounds is a one-line ConfigError naming the key and what is allowed. Bounds are the fields'
metadata, written with `number(...)`; checks across fields go in the class's `__post_init__`.
A user adds an option from their own code the same way: a class and a YAML file in their own
config folder (README: Extending polyexp).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar, TypeVar, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from polyexp.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a config group; `name` is how the user chose it (recorded as a tag)."""

    group: ClassVar[str] = "option"
    key_kind: ClassVar[str] = "a key"  # what errors call its fields (optimizers: hyper-parameters)
    name: str


def number(
    default: Any = None,
    *,
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
) -> Any:
    """A numeric field with its bounds: `low <= value <= high`, and `> 0` when `positive`."""
    meta = {"low": low, "high": high, "positive": positive}
    if default is None:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _bounds(value: float, field: dataclasses.Field[Any]) -> str | None:
    meta = field.metadata
    if meta.get("positive") and value <= 0:
        return "expected a number > 0"
    low, high = meta.get("low"), meta.get("high")
    if low is not None and high is not None and not low <= value <= high:
        return f"expected a number in [{low:g}, {high:g}]"
    if low is not None and value < low:
        return f"expected a number >= {low:g}"
    if high is not None and value > high:
        return f"expected a number <= {high:g}"
    return None


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _convert(key: str, value: Any, kind: Any, field: dataclasses.Field[Any]) -> Any:
    """`value` as the field's type, or a ConfigError naming `key`."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType) and type(None) in args:  # Optional[X]
        if value is None:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if kind is int:
        low = field.metadata.get("low")
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (low is not None and value < low)
        ):
            at_least = "" if low is None else f" >= {low:g}"
            raise ConfigError(f"{key}={value!r}: expected a whole number{at_least}")
        return value
    if kind is float:
        if not _finite(value):
            raise ConfigError(f"{key}={value!r}: expected a finite number")
        problem = _bounds(float(value), field)
        if problem:
            raise ConfigError(f"{key}={value!r}: {problem}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    if origin is tuple:  # tuple[float, float] (e.g. Adam's betas) or tuple[float, ...]
        size = None if args[-1] is Ellipsis else len(args)
        if not isinstance(value, list | tuple) or (size is not None and len(value) != size):
            what = f"a list of {size} numbers" if size else "a list of numbers"
            raise ConfigError(f"{key}={value!r}: expected {what}")
        items = []
        for i, item in enumerate(value):
            items.append(_convert(f"{key}[{i}]", item, args[0] if size is None else args[i], field))
        return tuple(items)
    return value  # any other annotation: taken as it is


T = TypeVar("T", bound=Option)


def build(cfg: DictConfig, group: str, base: type[T]) -> T:
    """The option of `group` in the composed config, checked; a one-line ConfigError if not."""
    node = OmegaConf.select(cfg, group)
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{group}: expected an option with a _target_ (e.g. {group}=<option>)")
    target = str(node._target_)
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception as error:
        cause = error.__cause__ or error
        raise ConfigError(f"{group}._target_={target!r} cannot be imported ({cause})") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{group}._target_={target!r} is not a {base.__module__}.{base.__name__}")
    name = node.get("name", group)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    given = [str(k) for k in node if k != "_target_"]
    unknown = [k for k in given if k not in fields]
    if unknown:
        allowed = ", ".join(k for k in fields if k != "name")
        raise ConfigError(
            f"{group}.{unknown[0]} is not {cls.key_kind} of {group}={name}; choose from {allowed}"
        )
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key in given:
        try:
            raw = node[key]
            if isinstance(raw, DictConfig | ListConfig):
                raw = OmegaConf.to_container(raw, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue:
            raise ConfigError(
                f"{group}.{key} is required with {group}={name}: set it ({group}.{key}=...)"
            ) from None
        values[key] = _convert(f"{group}.{key}", raw, hints[key], fields[key])
    missing = [
        k
        for k, f in fields.items()
        if k not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{group}.{missing[0]} is required for {group}={name}")
    return cls(**values)


def values(option: Option) -> dict[str, Any]:
    """An option's settings (its init fields but `name`), e.g. an optimizer's hyper-parameters."""
    return {
        f.name: getattr(option, f.name)
        for f in dataclasses.fields(option)
        if f.init and f.name != "name"
    }


def check_dtype(group: str, option: Option, dtype: str) -> None:
    """Refuses a number of `option` that `dtype` cannot hold: beyond its largest finite number
    (it would be inf) or not zero yet below its smallest (it would be 0), e.g. optimizer.lr=1e39
    with float32."""
    import numpy as np

    info = np.finfo(dtype)
    largest, smallest = float(info.max), float(info.smallest_subnormal)
    for key, value in values(option).items():
        items = value if isinstance(value, tuple) else (value,)
        for i, item in enumerate(items):
            if not isinstance(item, float) or item == 0:
                continue
            if smallest <= abs(item) <= largest:
                continue
            at = f"{group}.{key}" + (f"[{i}]" if isinstance(value, tuple) else "")
            raise ConfigError(
                f"{at}={item!r}: dtype={dtype} cannot hold it (its numbers reach "
                f"{largest:.4g}, the smallest above 0 is {smallest:.4g}); "
                "choose a value in that range or dtype=float64"
            )
