"""Hand-written update rules for the by-hand backends, in the (init, update) shape of optax.

Each optimizer is a pair of pure functions over arrays: `init(param) -> state` and
`update(param, grad, state) -> (param, state)`. They use only arithmetic operators and
`xp.sqrt`, so one rule serves NumPy arrays and torch tensors alike. A hyper-parameter is a
number, or for a batch of runs (polyexp.batched) an array of shape (B, 1), one per run, that
broadcasts against parameters of shape (B, ...). `sgd` and `rmsprop`
follow torch.optim.SGD and torch.optim.RMSprop step for step, with the same defaults;
tests prove them equal to torch.optim in float64. The autograd backend uses torch.optim itself.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

Array = Any  # np.ndarray or torch.Tensor


def _on(value: float | Array) -> bool:
    """Whether a hyper-parameter switches its term on: nonzero, or nonzero for any run of a batch.
    Decided once, when the rule is built, so a GPU never waits on it during training."""
    if isinstance(value, int | float):
        return value != 0
    return bool((value != 0).any())


class Optimizer(NamedTuple):
    init: Callable[[Array], Any]
    update: Callable[[Array, Array, Any], tuple[Array, Any]]


def manual_sgd(lr: float) -> Optimizer:
    """The seed's p -= lr * grad."""

    def update(param: Array, grad: Array, state: None) -> tuple[Array, None]:
        return param - lr * grad, None

    return Optimizer(init=lambda param: None, update=update)


class SGDState(NamedTuple):
    momentum_buffer: Array | None  # None until the first step, as in torch.optim.SGD


def sgd(
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> Optimizer:
    """torch.optim.SGD's rule. In a batch, momentum must be zero for every run or for none."""
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

    return Optimizer(init=lambda param: SGDState(None), update=update)


class RMSpropState(NamedTuple):
    square_avg: Array
    grad_avg: Array  # used when centered
    momentum_buffer: Array  # used when momentum > 0


def rmsprop(
    xp: ModuleType,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
) -> Optimizer:
    """torch.optim.RMSprop's rule; `xp` is the array module (numpy or torch) for sqrt."""
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

    return Optimizer(init=init, update=update)


def keep_unused(used: Array, new: Any, old: Any, xp: ModuleType) -> Any:
    """`new` where `used` is true, `old` elsewhere, leaf by leaf over (param, state) trees: the
    parameters a forward pass left out keep their value and state, as torch.optim skips a
    parameter without a gradient. A state leaf still unset (None) in `old` starts at zero there,
    as torch.optim starts it at that parameter's first gradient (the same numbers with
    dampening 0; torch's first momentum step skips dampening, which this cannot tell apart)."""
    if new is None:
        return None
    if isinstance(new, tuple):
        olds = old if old is not None else (None,) * len(new)
        leaves = [keep_unused(used, n, o, xp) for n, o in zip(new, olds, strict=True)]
        return type(new)(*leaves) if hasattr(new, "_fields") else tuple(leaves)
    return xp.where(used, new, new * 0 if old is None else old)


def build(name: str, hyper: dict[str, Any], xp: ModuleType) -> Optimizer:
    """The optimizer `name` (manual_sgd | sgd | rmsprop) with its checked hyper-parameters."""
    if name == "manual_sgd":
        return manual_sgd(**hyper)
    if name == "sgd":
        return sgd(**hyper)
    if name == "rmsprop":
        return rmsprop(xp, **hyper)
    raise ValueError(f"unknown optimizer {name!r}")
