"""An optimizer of your own: sign SGD, p -= lr * sign(grad).

A rule is a pair of functions over arrays (init, update); the same lines serve NumPy arrays and
torch tensors (`xp` is the array module), so it runs on every backend. Without a `torch_class`
the autograd backend applies it to each torch Parameter.
"""

import dataclasses
from typing import ClassVar

from polyexp.options import number
from polyexp.parts.optimizers import Optimizer, Rule


@dataclasses.dataclass(frozen=True)
class SignSGD(Optimizer):
    lr: float = number(1e-3, positive=True)  # checked when built: optimizer.lr=-1 is refused
    numbers: ClassVar[tuple[str, ...]] = ("lr",)  # what a batch may vary per run

    def rule(self, xp, hyper=None):
        lr = (hyper or self.hyper())["lr"]

        def update(param, grad, state):
            return param - lr * xp.sign(grad), state

        return Rule(init=lambda param: None, update=update)
