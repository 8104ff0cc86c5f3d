"""The one seam between the runner and the arrays: each backend builds a `Fit`.

A backend module (numpy, torch, autograd) has `build(settings, problem) -> Fit`. It is imported
only when chosen, so a run on the numpy backend never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

from polyexp.config import Settings
from polyexp.data import Problem


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
        """The current (a, b, c, d) as float64."""
        ...


def build(settings: Settings, problem: Problem) -> Fit:
    module = importlib.import_module(f"polyexp.backends.{settings.backend}")
    fit: Fit = module.build(settings, problem)
    return fit
