"""The benchmark needs nothing outside the repository: its seed programs are in tests/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import seed_programs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402


@pytest.mark.parametrize("name", seed_programs.NAMES)
def test_the_bench_times_each_seed_program_as_written(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bench.seed_loop(name, steps=100)()  # prints into a buffer
    assert capsys.readouterr().out == ""
    losses, final = seed_programs.run(name, bench.INIT, 100, record=False)
    printed = capsys.readouterr().out.splitlines()  # as the seed prints: t, loss; the result
    assert printed[0].split()[0] == "99" and printed[1].startswith("Result")
    assert len(losses) == 0 and np.all(np.isfinite(final))


def test_the_bench_writes_each_seed_program_as_a_script_of_its_own(tmp_path: Path) -> None:
    script = tmp_path / "seed_numpy.py"
    script.write_text(
        bench.SEED_SCRIPT.format(tests=str(ROOT / "tests"), name="seed_numpy", init=bench.INIT)
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 21 and lines[-1].startswith("Result: y =")
    assert not re.search(r"\bshared\b", Path(bench.__file__).read_text())  # nothing outside
