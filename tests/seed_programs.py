"""Runs the seed's own six programs (../shared/seed) from given initial coefficients.

The programs are taken from the walkthrough's code blocks as they are, with only what a
comparison needs changed: the random initial values become the given coefficients, the step
count is a parameter, each step's loss is kept instead of printed every 100 steps, and the
`a.itme()` typo that crashes `seed_tensor` is mended.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

SEED_FILE = Path(__file__).resolve().parents[2] / "shared" / "seed" / "000_951343b728d75463.txt"
# The walkthrough's code blocks, in order.
NAMES = ("seed_numpy", "seed_tensor", "seed_autograd", "seed_nn", "seed_optim", "seed_module")

_SET_SEQUENTIAL = (
    "with torch.no_grad():\n"
    "    model[0].bias.copy_(torch.tensor([INIT[0]]))\n"
    "    model[0].weight.copy_(torch.tensor([INIT[1:]]))\n"
)


def programs() -> dict[str, str]:
    text = SEED_FILE.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    if len(blocks) != len(NAMES):
        raise AssertionError(f"expected {len(NAMES)} programs in the seed, found {len(blocks)}")
    return dict(zip(NAMES, blocks, strict=True))


def source(name: str, initial: list[float], steps: int, keep_losses: bool = True) -> str:
    """Seed program `name` as runnable code starting from `initial`. With keep_losses it appends
    every step's loss to LOSSES; without, it runs as written (printing every 100 steps)."""
    letters = "abcd"
    code = programs()[name]
    code = f"INIT = {[float(v) for v in initial]!r}\n" + code
    code = code.replace("a.itme()", "a.item()").replace("range(2000)", f"range({steps})")
    # numpy: a = np.random.randn()
    code = re.sub(
        r"^(\w) = np\.random\.randn\(\)",
        lambda m: f"{m[1]} = INIT[{letters.index(m[1])}]",
        code,
        flags=re.M,
    )
    # torch tensors: a = torch.randn((), device=..., dtype=..., requires_grad=...)
    code = re.sub(
        r"^(\w) = torch\.randn\(\(\),",
        lambda m: f"{m[1]} = torch.tensor(INIT[{letters.index(m[1])}],",
        code,
        flags=re.M,
    )
    # Polynomial3: self.a = torch.nn.Parameter(torch.randn(()))
    code = re.sub(
        r"self\.(\w) = torch\.nn\.Parameter\(torch\.randn\(\(\)\)\)",
        lambda m: f"self.{m[1]} = torch.nn.Parameter(torch.tensor(INIT[{letters.index(m[1])}]))",
        code,
    )
    # Sequential: set bias = a, weight = [b, c, d] right after the model is built.
    code = (
        re.sub(r"^(loss_fn = )", _SET_SEQUENTIAL + r"\1", code, count=1, flags=re.M)
        if "torch.nn.Sequential" in code
        else code
    )
    if not keep_losses:
        return code
    # Keep every step's loss; print nothing.
    code = re.sub(
        r"^(\s*)if t % 100 == 99:", r"\1LOSSES.append(float(loss))\n\1if False:", code, flags=re.M
    )
    return "LOSSES = []\n" + code.replace("print(", "(lambda *a, **k: None)(")


def run(name: str, initial: list[float], steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Seed program `name` from `initial` = [a, b, c, d]: (loss at every step, final a, b, c, d)."""
    namespace: dict = {}
    exec(compile(source(name, initial, steps), f"<{name}>", "exec"), namespace)
    if "model" in namespace and hasattr(namespace["model"], "string"):  # seed_module
        m = namespace["model"]
        final = [m.a.item(), m.b.item(), m.c.item(), m.d.item()]
    elif "model" in namespace:  # seed_nn, seed_optim
        layer = namespace["model"][0]
        final = [layer.bias.item(), *layer.weight.flatten().tolist()]
    else:
        final = [float(namespace[k]) for k in "abcd"]
    return np.array(namespace["LOSSES"]), np.array(final)
