"""Every preset and every model x optimizer x backend trains to the very loss history recorded
before options became objects (tests/golden.py wrote them at main 4474228), bit for bit."""

from __future__ import annotations

import golden
import numpy as np
import pytest

import polyexp

CASES = golden.cases()


@pytest.fixture(scope="module")
def recorded() -> dict[str, np.ndarray]:
    with np.load(golden.FILE) as saved:
        return {name: saved[name] for name in saved.files}


@pytest.mark.parametrize("name", list(CASES))
def test_the_loss_history_is_bit_identical_to_the_recorded_one(
    name: str, recorded: dict[str, np.ndarray]
) -> None:
    trained = polyexp.train(CASES[name])
    before = recorded[name]
    after = trained.losses
    if trained.diverged_at is not None:  # recorded with the loop's whole last chunk
        before = before[: trained.diverged_at]
    assert len(after) == len(before)
    assert after.tobytes() == before.tobytes(), name
