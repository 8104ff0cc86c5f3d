"""Every run records where it came from: code, library versions, threads, device, command."""

from __future__ import annotations

import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

import polyexp
from conftest import ROOT, runs
from polyexp.record import provenance


def _git(root: Path, *args: str) -> str:
    command = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def test_a_run_records_versions_threads_device_and_command_line(store: MlflowClient) -> None:
    result = polyexp.run(["backend=torch", "steps=10", "log_every=0"])
    tags = store.get_run(result.run_id).data.tags

    assert tags["polyexp.version"] == polyexp.__version__
    assert tags["versions.python"] == ".".join(map(str, sys.version_info[:3]))
    for name in ("torch", "numpy", "hydra-core", "omegaconf", "mlflow"):
        assert tags[f"versions.{name}"] == metadata.version(name)
    assert tags["threads.torch"] == str(torch.get_num_threads())
    assert tags["device_name"] == provenance.cpu_name() != ""
    assert tags["command"] == shlex.join(sys.argv)  # this process: pytest's command line


def test_a_run_from_a_checkout_records_its_commit_and_whether_it_was_dirty(
    store: MlflowClient,
) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not run from a git checkout")
    result = polyexp.run(["backend=numpy", "steps=10", "log_every=0"])
    tags = store.get_run(result.run_id).data.tags
    assert tags["git.commit"] == _git(ROOT, "rev-parse", "HEAD")
    assert tags["mlflow.source.git.commit"] == tags["git.commit"]  # the MLflow UI shows this one
    dirty = _git(ROOT, "status", "--porcelain", "--untracked-files=no") != ""
    assert tags["git.dirty"] == str(dirty).lower()


def test_git_state_tells_clean_from_dirty_and_ignores_untracked_files(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    commit = _git(tmp_path, "rev-parse", "HEAD")

    assert provenance.git_state(tmp_path) == {"git.commit": commit, "git.dirty": "false"}
    (tmp_path / "notes.txt").write_text("scratch\n")  # untracked: not part of the code
    assert provenance.git_state(tmp_path)["git.dirty"] == "false"
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.git_state(tmp_path) == {"git.commit": commit, "git.dirty": "true"}


def test_git_state_is_absent_outside_a_checkout_of_polyexp_itself(tmp_path: Path) -> None:
    assert provenance.git_state(tmp_path) == {}  # no repository at all
    _git(tmp_path, "init", "-q")
    (tmp_path / "site-packages").mkdir()
    # An installed polyexp inside someone else's repository must not report that repository.
    assert provenance.git_state(tmp_path / "site-packages") == {}
    assert provenance.git_state(tmp_path) == {}  # a repository without a commit yet


@pytest.mark.slow
def test_a_numpy_run_records_provenance_without_importing_torch(
    store: MlflowClient, tmp_path: Path
) -> None:
    code = (
        "import sys, polyexp\n"
        "polyexp.run(['backend=numpy', 'steps=5', 'log_every=0'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    (run,) = runs(store)
    tags = run.data.tags
    assert tags["versions.torch"] == metadata.version("torch")  # read from metadata, not imported
    assert "threads.torch" not in tags and any(k.startswith("threads.") for k in tags)  # BLAS
