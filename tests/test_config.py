"""Every option composes, presets pick their seed program's choices, bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import polyexp
from polyexp import config

CONF = Path(polyexp.__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "optimizer", "backend", "device", "init", "data", "experiment")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_the_axes_offer_what_the_design_names() -> None:
    assert config.options("model") == ("dynamic", "legendre3", "polynomial3", "sequential")
    assert config.options("optimizer") == ("adam", "manual_sgd", "rmsprop", "sgd")
    assert config.options("backend") == ("autograd", "numpy", "torch")
    assert config.options("device") == ("auto", "cpu", "cuda", "mps")
    assert config.options("init") == ("fixed", "normal")
    seeds = ["seed_numpy", "seed_tensor", "seed_autograd", "seed_nn", "seed_optim", "seed_module"]
    assert _options("experiment") == sorted([*seeds, "tutorial_legendre", "tutorial_dynamic"])


@pytest.mark.parametrize(
    "override",
    [f"{g}={o}" for g in GROUPS for o in _options(g) if not (g == "init" and o == "fixed")]
    + ["init=fixed"],
)
def test_every_option_composes_and_names_itself(override: str) -> None:
    extra = ["init.coefficients=[0,1,0,0]"] if override == "init=fixed" else []
    cfg = polyexp.compose([override, *extra])
    group, option = override.split("=")
    if group != "experiment":
        assert cfg[group].name == option
    if group not in ("device", "experiment") and override != "backend=numpy":
        config.check(cfg)  # every option is also valid on the default choices


def test_defaults_are_the_seed_module_program() -> None:
    cfg = polyexp.compose()
    s = config.check(cfg)
    assert tuple(s.choices().values()) == ("polynomial3", "sgd", "autograd", "cpu")
    assert (s.steps, s.dtype, s.optimizer.lr, s.data.n) == (2000, "float32", 1e-6, 2000)


@pytest.mark.parametrize(
    ("preset", "model", "optimizer", "backend", "dtype"),
    [
        ("seed_numpy", "polynomial3", "manual_sgd", "numpy", "float64"),
        ("seed_tensor", "polynomial3", "manual_sgd", "torch", "float32"),
        ("seed_autograd", "polynomial3", "manual_sgd", "autograd", "float64"),
        ("seed_nn", "sequential", "manual_sgd", "autograd", "float32"),
        ("seed_optim", "sequential", "rmsprop", "autograd", "float32"),
        ("seed_module", "polynomial3", "sgd", "autograd", "float32"),
    ],
)
def test_presets_choose_what_their_seed_program_uses(
    preset: str, model: str, optimizer: str, backend: str, dtype: str
) -> None:
    s = config.check(polyexp.compose([f"experiment={preset}"]))
    assert (s.model.name, s.optimizer.name, s.backend.name) == (model, optimizer, backend)
    assert (s.dtype, s.optimizer.lr, s.steps) == (dtype, 1e-6, 2000)


def test_the_tutorial_presets_choose_what_the_tutorial_programs_use() -> None:
    legendre = config.check(polyexp.compose(["experiment=tutorial_legendre"]))
    assert tuple(legendre.choices().values())[:3] == ("legendre3", "manual_sgd", "autograd")
    assert (legendre.optimizer.lr, legendre.steps, legendre.dtype) == (5e-6, 2000, "float32")
    assert legendre.problem().initial.tolist() == [0.0, -1.0, 0.0, 0.3]
    dynamic = config.check(polyexp.compose(["experiment=tutorial_dynamic"]))
    assert tuple(dynamic.choices().values())[:3] == ("dynamic", "sgd", "autograd")
    hyper = dynamic.optimizer.hyper()
    assert (hyper["lr"], hyper["momentum"], dynamic.steps) == (1e-8, 0.9, 30000)
    assert (dynamic.dtype, dynamic.log_every, dynamic.init.name) == ("float32", 2000, "normal")


def test_rmsprop_alone_defaults_to_a_converging_lr_and_torch_defaults() -> None:
    s = config.check(polyexp.compose(["optimizer=rmsprop"]))
    assert s.optimizer.hyper() == {
        "lr": 1e-3,
        "alpha": 0.99,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "momentum": 0.0,
        "centered": False,
    }


def test_a_preset_still_takes_overrides() -> None:
    s = config.check(polyexp.compose(["experiment=seed_optim", "optimizer.lr=1e-3", "steps=5"]))
    assert (s.optimizer.lr, s.steps, s.optimizer.name) == (1e-3, 5, "rmsprop")


def test_the_error_lists_the_choices() -> None:
    with pytest.raises(config.ConfigError, match="choose from float32, float64"):
        config.check(polyexp.compose(["dtype=float16"]))


def test_config_yaml_comments_every_top_level_key() -> None:
    text = (CONF / "config.yaml").read_text()
    for key in ("seed", "steps", "dtype", "log_every"):
        line = next(row for row in text.splitlines() if row.startswith(f"{key}:"))
        assert "#" in line, f"{key} has no comment"
    assert set(OmegaConf.load(CONF / "config.yaml")) >= {"seed", "steps", "dtype"}


def test_adam_defaults_are_torchs() -> None:
    s = config.check(polyexp.compose(["optimizer=adam"]))
    assert s.optimizer.hyper() == {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
    }
    with pytest.raises(config.ConfigError, match=r"optimizer.betas\[1\]=2: expected a number in"):
        config.check(polyexp.compose(["optimizer=adam", "optimizer.betas=[0.9,2]"]))
    with pytest.raises(config.ConfigError, match=r"optimizer.betas=\[0.9\]: expected a list of 2"):
        config.check(polyexp.compose(["optimizer=adam", "optimizer.betas=[0.9]"]))
