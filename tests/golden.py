"""The float64 loss histories recorded before the option objects (issue 12), replayed after.

`python tests/golden.py` writes tests/data/golden_histories.npz: for every preset and every
model x optimizer x backend (plus a few optimizer variants), the loss at every step of a run
trained without recording. test_golden.py trains the same overrides again and compares bit
for bit. Every override that matters is explicit, so a change of a default does not move them.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

FILE = Path(__file__).resolve().parent / "data" / "golden_histories.npz"
MODELS = ("polynomial3", "sequential", "legendre3", "dynamic")
OPTIMIZERS = {
    "manual_sgd": ["optimizer.lr=1e-6"],
    "sgd": ["optimizer.lr=1e-6"],
    "rmsprop": ["optimizer.lr=1e-3"],
}
VARIANTS = [  # the switches and numbers the defaults leave off
    ["optimizer=sgd", "optimizer.lr=1e-6", "optimizer.momentum=0.9", "optimizer.nesterov=true"],
    [
        "optimizer=sgd",
        "optimizer.lr=1e-6",
        "optimizer.momentum=0.5",
        "optimizer.dampening=0.1",
        "optimizer.weight_decay=0.01",
    ],
    [
        "optimizer=rmsprop",
        "optimizer.lr=1e-3",
        "optimizer.centered=true",
        "optimizer.momentum=0.5",
        "optimizer.weight_decay=0.01",
        "optimizer.alpha=0.9",
        "optimizer.eps=1e-6",
    ],
]
PRESETS = (
    "seed_numpy",
    "seed_tensor",
    "seed_autograd",
    "seed_nn",
    "seed_optim",
    "seed_module",
    "tutorial_legendre",
    "tutorial_dynamic",
)
COMMON = ["log_every=0"]


def cases() -> dict[str, list[str]]:
    """Each case's name -> its overrides."""
    found: dict[str, list[str]] = {}
    for model, (optimizer, hyper), backend in itertools.product(
        MODELS, OPTIMIZERS.items(), ("numpy", "torch", "autograd")
    ):
        found[f"{model}-{optimizer}-{backend}"] = [
            f"model={model}",
            f"optimizer={optimizer}",
            *hyper,
            f"backend={backend}",
            "dtype=float64",
            "steps=200",
            *COMMON,
        ]
    for i, variant in enumerate(VARIANTS):
        for backend in ("numpy", "torch", "autograd"):
            found[f"variant{i}-{backend}"] = [
                "model=polynomial3",
                *variant,
                f"backend={backend}",
                "dtype=float64",
                "steps=200",
                *COMMON,
            ]
    for preset in PRESETS:
        steps = ["steps=3000"] if preset == "tutorial_dynamic" else []
        found[preset] = [f"experiment={preset}", *steps, *COMMON]
    return found


def _train_before(overrides: list[str]) -> np.ndarray:
    """How main at 4474228 trained without recording (runner._train, minus MLflow)."""
    import polyexp
    from polyexp import config
    from polyexp.parts import backends
    from polyexp.parts.data import make_problem
    from polyexp.training.loop import History, train

    s = config.check(polyexp.compose(overrides))
    fit = backends.build(s, make_problem(s))
    history = History(fit)
    train(fit, s.steps, history, s.log_every)
    return history.values()


if __name__ == "__main__":
    histories = {name: _train_before(o) for name, o in cases().items()}
    FILE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FILE, **histories)
    print(f"{len(histories)} histories -> {FILE} ({FILE.stat().st_size} bytes)")
