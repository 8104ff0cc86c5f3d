"""The one seam between the loop and the arrays: a Backend option builds a `Fit` from the
run's model, optimizer and data (and a `BatchFit` for runs trained as one batch).

Each backend is a module (numpy, torch, autograd) imported only when chosen, so a run on the
numpy backend never imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from polyexp.errors import ConfigError
from polyexp.options import Option

if TYPE_CHECKING:
    from polyexp.config import Settings
    from polyexp.parts.data import Problem
    from polyexp.parts.models import Model


class Fit(Protocol):
    """A model and optimizer bound to one backend's arrays, ready to train."""

    device: str  # where it runs, e.g. "cpu" or "cuda:0"

    def step(self) -> Any:
        """One forward pass, loss, backward pass and update; returns the loss before the update,
        as the backend's own scalar (not synced to the host)."""
        ...

    def fetch(self, losses: list[Any]) -> np.ndarray:
        """Brings a chunk of step losses to the host as float64."""
        ...

    def coefficients(self) -> np.ndarray:
        """The current parameters, e.g. (a, b, c, d), as float64."""
        ...


class BatchFit(Fit, Protocol):
    """B runs of one config, by rows: `step` returns their losses, shape (B,); `fetch` gives
    (steps, B); `coefficients` (B, p)."""


@dataclasses.dataclass(frozen=True)
class Backend(Option):
    group: ClassVar[str] = "backend"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda", "mps", "auto")
    by_hand: ClassVar[bool] = False  # needs the model's gradient by hand (Model.by_hand)
    uses_torch: ClassVar[bool] = True  # torch deterministic mode matters (training.determinism)

    def check(self, model: Model, device: str) -> None:
        """Refuses, in one line, what this backend cannot run."""
        if device not in self.devices:
            raise ConfigError(
                f"device={device!r} cannot run backend={self.name}; "
                f"choose from {', '.join(self.devices)}"
            )
        if self.by_hand and not model.has_by_hand:
            raise ConfigError(
                f"model={model.name} has no gradient by hand (Model.by_hand), which "
                f"backend={self.name} needs; choose backend=autograd"
            )

    def build(self, s: Settings, problem: Problem) -> Fit:
        raise NotImplementedError

    def build_batch(self, settings: Sequence[Settings], problems: Sequence[Problem]) -> BatchFit:
        """Runs that differ only in numbers (polyexp.sweeps.batched), trained as one computation."""
        raise NotImplementedError


def hyper_columns(settings: Sequence[Settings], xp: Any, **array: Any) -> dict[str, Any]:
    """A batch's optimizer hyper-parameters: the numbers it may vary as columns (B, 1), one row
    per run (a pair such as Adam's betas as a pair of columns); the rest as they are, equal
    across a batch (polyexp.sweeps.batched.group_key)."""
    first = settings[0].optimizer

    def column(values: list[Any]) -> Any:
        if isinstance(values[0], tuple):
            return tuple(column([v[i] for v in values]) for i in range(len(values[0])))
        return xp.asarray([[v] for v in values], **array)

    rows = [s.optimizer.hyper() for s in settings]
    hyper = dict(rows[0])
    for key in first.numbers:
        hyper[key] = column([row[key] for row in rows])
    return hyper
