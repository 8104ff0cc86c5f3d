"""The README's Quick start shows what `make run` prints, and says what its first run installs."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

import polyexp

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _quick_start_output() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start") : text.index("## Choosing a run")]
    (block,) = re.findall(r"`make run` says .*?\n```\n(.*?)```", section, flags=re.S)
    return block.splitlines()


def _significant(number: str) -> int:
    return len(number.split("e")[0].replace("-", "").replace(".", "").lstrip("0"))


def _same_line(shown: str, printed: str) -> None:
    """The same words and numbers, written to the same precision (the last bits of a float32
    sum may differ with the machine's thread count)."""
    assert NUMBER.sub("#", shown) == NUMBER.sub("#", printed), (shown, printed)
    for a, b in zip(NUMBER.findall(shown), NUMBER.findall(printed), strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-4, abs=1e-9), (shown, printed)
        assert abs(_significant(a) - _significant(b)) <= 1, (a, b)


def test_the_quick_start_shows_what_the_default_run_prints(
    store, capsys: pytest.CaptureFixture[str]
) -> None:
    polyexp.run([])  # what `make run` runs
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    shown = _quick_start_output()
    where, first, _, last_step, result = shown
    assert _ == "..."
    # The store line: the run id and the folder are the reader's own.
    assert where.split(" run ")[0] == printed[0].split(" run ")[0] == "polyexp: recording"
    assert where.endswith("/outputs/mlflow.db")
    _same_line(first, printed[1])
    _same_line(last_step, next(line for line in printed if line.startswith("1999 ")))
    _same_line(result, next(line for line in printed if line.startswith("Result: ")))


def test_make_says_what_the_first_install_does_before_it_starts() -> None:
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", ".venv/.ready"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        # As from a shell, also when the suite itself runs under `make test`.
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")},
    ).stdout.splitlines()
    assert dry[0].startswith("echo ") and "about 3 minutes" in dry[0] and "2 GB" in dry[0]
    assert "venv" in dry[1]  # said before the install starts
    assert "roughly 3 minutes" in (ROOT / "README.md").read_text()
