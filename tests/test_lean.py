"""Runs stay lean: the numpy backend never imports torch; 10^7 points train within memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPORT = (
    "import atexit, resource, sys;"
    "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules,"
    " 'peak MB:', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024));"
)


def _cli(args: list[str], cwd: Path) -> str:
    code = REPORT + f"sys.argv = ['polyexp', *{args!r}]; from polyexp.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(("backend", "imported"), [("numpy", False), ("torch", True)])
def test_only_torch_backends_import_torch(
    backend: str, imported: bool, store: MlflowClient, tmp_path: Path
) -> None:
    out = _cli([f"backend={backend}", "steps=3", "log_every=0"], tmp_path)
    assert f"torch imported: {imported}" in out


def test_ten_million_points_train_within_memory(store: MlflowClient, tmp_path: Path) -> None:
    # The summed loss grows with n, so the stable lr shrinks with it.
    out = _cli(["backend=numpy", "data.n=10000000", "steps=3", "optimizer.lr=1e-10"], tmp_path)
    peak_mb = int(out.split("peak MB:")[1].split()[0])
    # float64 x and y, float32 features (160 MB) and the final prediction: about 1 GB at most.
    assert peak_mb < 1500, out
    assert "Result: y = " in out


def test_train_without_recording_imports_neither_mlflow_nor_torch_on_numpy(tmp_path: Path) -> None:
    code = (
        "import sys, polyexp;"
        "t = polyexp.train(['backend=numpy', 'steps=20', 'log_every=0']);"
        "print(len(t.losses), t.diverged_at, 'mlflow' in sys.modules, 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["20", "None", "False", "False"]
    assert not (tmp_path / "outputs").exists()  # nothing recorded, no store made
