"""A model of your own: y = a sin(b x + c) + d, not linear in its parameters.

`names` and `forward` are all a model needs: polyexp trains it on the autograd backend (one
scalar torch Parameter per name, `forward` with torch's functions) and records it like its own.
"""

import dataclasses
from typing import ClassVar

from polyexp.parts.models import Model


@dataclasses.dataclass(frozen=True)
class Sine(Model):
    names: ClassVar[tuple[str, ...]] = ("a", "b", "c", "d")

    def forward(self, theta, x, xp):  # xp: numpy or torch, whichever arrays x is
        a, b, c, d = theta
        return a * xp.sin(b * x + c) + d
