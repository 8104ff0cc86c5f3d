"""torch's deterministic settings, for the span of one run on a GPU.

What we measured (CPU, torch 2.13 with MKL, NumPy with OpenBLAS): a run is bit-identical from
process to process for the same thread count, and torch's deterministic mode changes none of
its CPU numbers (it only costs time), so on the CPU it stays off. The thread count does change
them (torch's matrix products with 1, 2 or 4 threads even for 2000 points; NumPy's with 1 or
more OpenBLAS threads from about 20000 points), so runs record their thread counts
(polyexp.record.provenance). On CUDA, cuBLAS needs a fixed workspace (CUBLAS_WORKSPACE_CONFIG) to
repeat its sums, and torch's deterministic mode warns about any operation that could not
repeat them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from polyexp.config import Settings

CUBLAS_WORKSPACE = ":4096:8"  # a fixed cuBLAS workspace, as torch's reproducibility notes ask


def wanted(s: Settings) -> bool:
    """A torch backend asked for cuda (or for auto, which may pick it)."""
    return s.backend.uses_torch and s.device in ("cuda", "auto")


@contextmanager
def settings(s: Settings) -> Iterator[None]:
    """Turns on torch's deterministic algorithms for a run that may use CUDA, then restores
    what was set before. Other runs are left alone (a numpy run never imports torch)."""
    if not wanted(s):
        yield
        return
    import torch

    # Read once, at the first cuBLAS call of the process; a value the user set wins.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    # warn_only: an operation without a deterministic version warns instead of failing the run.
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
