"""The optimizers: each is an Option that owns its hyper-parameters (typed fields with torch's
defaults and bounds), its update rule, its torch.optim counterpart for the autograd backend, and
which of its numbers the batched launcher may vary within one batch.

A rule has the (init, update) shape of optax: `init(param) -> state` and
`update(param, grad, state) -> (param, state)`, pure functions over arrays. They use only
arithmetic operators and a few functions NumPy and torch share (`xp.sqrt`, `xp.maximum`), so one
rule serves NumPy arrays and torch tensors alike. A hyper-parameter is a number, or for a batch
of runs (polyexp.sweeps.batched) an array of shape (B, 1), one per run, that broadcasts against
parameters of shape (B, ...). `sgd`, `rmsprop` and `adam` follow torch.optim step for step, with
the same defaults; tests prove them equal to torch.optim in float64.

Adding an optimizer is a class here (or in your own module) and a YAML file in conf/optimizer/.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any, ClassVar, NamedTuple

from polyexp.errors import ConfigError
from polyexp.options import Option, number, values

Array = Any  # np.ndarray or torch.Tensor


class Rule(NamedTuple):
    init: Callable[[Array], Any]
    update: Callable[[Array, Array, Any], tuple[Array, Any]]


def _on(value: float | Array) -> bool:
    """Whether a hyper-parameter switches its term on: nonzero, or nonzero for any run of a batch.
    Decided once, when the rule is built, so a GPU never waits on it during training."""
    if isinstance(value, int | float):
        return value != 0
    return bool((value != 0).any())


@dataclasses.dataclass(frozen=True)
class Optimizer(Option):
    """An update rule with its hyper-parameters as fields (all but `name`)."""

    group: ClassVar[str] = "optimizer"
    key_kind: ClassVar[str] = "a hyper-parameter"
    # The torch.optim class the autograd backend uses (None: this rule, applied per parameter).
    torch_class: ClassVar[str | None] = None
    # The hyper-parameters that only change numbers, not the computation: a batch may vary them.
    numbers: ClassVar[tuple[str, ...]] = ()

    def hyper(self) -> dict[str, Any]:
        """The hyper-parameters, e.g. {'lr': 1e-6, 'momentum': 0.0, ...}."""
        return values(self)

    def rule(self, xp: ModuleType, hyper: Mapping[str, Any] | None = None) -> Rule:
        """The (init, update) rule over `xp`'s arrays, with `hyper` (default: this option's own;
        a batch passes its numbers as columns)."""
        raise NotImplementedError

    def batch_key(self) -> dict[str, Any]:
        """What must be equal across a batch besides the config's non-numbers (e.g. a switch a
        number turns on)."""
        return {}

    def torch_step(self, params: list[Any]) -> Callable[[], None]:
        """One optimizer step over torch Parameters whose .grad is set (the autograd backend):
        torch.optim's own class when there is one, else this rule under no_grad."""
        import torch

        if self.torch_class is not None:
            module, _, name = self.torch_class.rpartition(".")
            optimizer = getattr(importlib.import_module(module), name)(params, **self.hyper())
            return optimizer.step
        rule = self.rule(torch)
        states: list[Any] = [rule.init(p.detach()) for p in params]

        @torch.no_grad()
        def step() -> None:
            for i, param in enumerate(params):
                if param.grad is not None:  # None: the forward pass did not use it (dynamic)
                    new, states[i] = rule.update(param, param.grad, states[i])
                    param.copy_(new)

        return step


@dataclasses.dataclass(frozen=True)
class ManualSGD(Optimizer):
    """The seed's explicit update, p -= lr * grad."""

    lr: float = number(1e-6, positive=True)
    numbers: ClassVar[tuple[str, ...]] = ("lr",)

    def rule(self, xp: ModuleType, hyper: Mapping[str, Any] | None = None) -> Rule:
        lr = (hyper or self.hyper())["lr"]

        def update(param: Array, grad: Array, state: None) -> tuple[Array, None]:
            return param - lr * grad, None

        return Rule(init=lambda param: None, update=update)


class SGDState(NamedTuple):
    momentum_buffer: Array | None  # None until the first step, as in torch.optim.SGD


@dataclasses.dataclass(frozen=True)
class SGD(Optimizer):
    """torch.optim.SGD. In a batch, momentum must be zero for every run or for none."""

    lr: float = number(1e-3, positive=True)
    momentum: float = number(0.0, low=0.0)
    dampening: float = number(0.0, low=0.0)
    weight_decay: float = number(0.0, low=0.0)
    nesterov: bool = False
    torch_class: ClassVar[str | None] = "torch.optim.SGD"
    numbers: ClassVar[tuple[str, ...]] = ("lr", "momentum", "dampening", "weight_decay")

    def __post_init__(self) -> None:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ConfigError(
                "optimizer.nesterov=true needs optimizer.momentum > 0 and dampening = 0"
            )

    def batch_key(self) -> dict[str, Any]:
        # Momentum on or off is another rule: SGD keeps no buffer without it.
        return {"momentum on": bool(self.momentum)}

    def rule(self, xp: ModuleType, hyper: Mapping[str, Any] | None = None) -> Rule:
        h = hyper or self.hyper()
        lr, momentum, dampening = h["lr"], h["momentum"], h["dampening"]
        weight_decay, nesterov = h["weight_decay"], h["nesterov"]
        decay, heavy = _on(weight_decay), _on(momentum)

        def update(param: Array, grad: Array, state: SGDState) -> tuple[Array, SGDState]:
            if decay:
                grad = grad + weight_decay * param
            buf = state.momentum_buffer
            if heavy:
                # torch starts the buffer at the first gradient itself, undamped.
                buf = grad if buf is None else momentum * buf + (1 - dampening) * grad
                grad = grad + momentum * buf if nesterov else buf
            return param - lr * grad, SGDState(buf)

        return Rule(init=lambda param: SGDState(None), update=update)


class RMSpropState(NamedTuple):
    square_avg: Array
    grad_avg: Array  # used when centered
    momentum_buffer: Array  # used when momentum > 0


@dataclasses.dataclass(frozen=True)
class RMSprop(Optimizer):
    """torch.optim.RMSprop."""

    lr: float = number(1e-2, positive=True)
    alpha: float = number(0.99, low=0.0, high=1.0)
    eps: float = number(1e-8, positive=True)
    weight_decay: float = number(0.0, low=0.0)
    momentum: float = number(0.0, low=0.0)
    centered: bool = False
    torch_class: ClassVar[str | None] = "torch.optim.RMSprop"
    numbers: ClassVar[tuple[str, ...]] = ("lr", "alpha", "eps", "weight_decay", "momentum")

    def rule(self, xp: ModuleType, hyper: Mapping[str, Any] | None = None) -> Rule:
        h = hyper or self.hyper()
        lr, alpha, eps, momentum = h["lr"], h["alpha"], h["eps"], h["momentum"]
        weight_decay, centered = h["weight_decay"], h["centered"]
        decay, heavy = _on(weight_decay), _on(momentum)

        def init(param: Array) -> RMSpropState:
            zeros = param * 0
            return RMSpropState(zeros, zeros, zeros)

        def update(param: Array, grad: Array, state: RMSpropState) -> tuple[Array, RMSpropState]:
            if decay:
                grad = grad + weight_decay * param
            square_avg = alpha * state.square_avg + (1 - alpha) * grad * grad
            grad_avg = state.grad_avg
            if centered:
                grad_avg = grad_avg + (1 - alpha) * (grad - grad_avg)  # torch's lerp
                avg = xp.sqrt(square_avg - grad_avg * grad_avg) + eps
            else:
                avg = xp.sqrt(square_avg) + eps
            buf = state.momentum_buffer
            if heavy:
                buf = momentum * buf + grad / avg
                param = param - lr * buf
            else:
                param = param - lr * (grad / avg)
            return param, RMSpropState(square_avg, grad_avg, buf)

        return Rule(init=init, update=update)


class AdamState(NamedTuple):
    step: Array  # per parameter, as torch.optim counts each parameter's own steps
    exp_avg: Array
    exp_avg_sq: Array
    max_exp_avg_sq: Array  # used when amsgrad


@dataclasses.dataclass(frozen=True)
class Adam(Optimizer):
    """torch.optim.Adam."""

    lr: float = number(1e-3, positive=True)
    betas: tuple[float, float] = number((0.9, 0.999), low=0.0, high=1.0)
    eps: float = number(1e-8, positive=True)
    weight_decay: float = number(0.0, low=0.0)
    amsgrad: bool = False
    torch_class: ClassVar[str | None] = "torch.optim.Adam"
    numbers: ClassVar[tuple[str, ...]] = ("lr", "betas", "eps", "weight_decay")

    def __post_init__(self) -> None:
        if any(beta >= 1 for beta in self.betas):
            raise ConfigError(f"optimizer.betas={list(self.betas)}: expected numbers in [0, 1)")

    def rule(self, xp: ModuleType, hyper: Mapping[str, Any] | None = None) -> Rule:
        h = hyper or self.hyper()
        lr, (beta1, beta2), eps = h["lr"], h["betas"], h["eps"]
        weight_decay, amsgrad = h["weight_decay"], h["amsgrad"]
        decay = _on(weight_decay)

        def init(param: Array) -> AdamState:
            zeros = param * 0
            return AdamState(zeros, zeros, zeros, zeros)

        def update(param: Array, grad: Array, state: AdamState) -> tuple[Array, AdamState]:
            step = state.step + 1
            if decay:
                grad = grad + weight_decay * param
            exp_avg = state.exp_avg + (1 - beta1) * (grad - state.exp_avg)  # torch's lerp
            exp_avg_sq = beta2 * state.exp_avg_sq + (1 - beta2) * (grad * grad)
            step_size = lr / (1 - beta1**step)
            bias_correction2_sqrt = (1 - beta2**step) ** 0.5
            max_exp_avg_sq = state.max_exp_avg_sq
            if amsgrad:
                max_exp_avg_sq = xp.maximum(max_exp_avg_sq, exp_avg_sq)
                denom = xp.sqrt(max_exp_avg_sq) / bias_correction2_sqrt + eps
            else:
                denom = xp.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
            param = param - step_size * (exp_avg / denom)
            return param, AdamState(step, exp_avg, exp_avg_sq, max_exp_avg_sq)

        return Rule(init=init, update=update)


def keep_unused(used: Array, new: Any, old: Any, xp: ModuleType) -> Any:
    """`new` where `used` is true, `old` elsewhere, leaf by leaf over (param, state) trees: the
    parameters a forward pass left out keep their value and state, as torch.optim skips a
    parameter without a gradient. A state leaf still unset (None) in `old` starts at zero there,
    as torch.optim starts it at that parameter's first gradient (the same numbers with
    dampening 0; torch's first momentum step skips dampening, which this cannot tell apart)."""
    if new is None:
        return None
    if isinstance(new, tuple):
        olds: Iterable[Any] = old if old is not None else (None,) * len(new)
        leaves = [keep_unused(used, n, o, xp) for n, o in zip(new, olds, strict=True)]
        return type(new)(*leaves) if hasattr(new, "_fields") else tuple(leaves)
    return xp.where(used, new, new * 0 if old is None else old)
