"""Where a run came from, as MLflow tags: code version, library versions, thread counts,
device and command line.

Everything here is cheap (one `git status` call, a few metadata reads) and never fails a run:
what cannot be found (no git, not a checkout, a library not installed) is left out.
"""

from __future__ import annotations

import contextlib
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import polyexp

# Distributions whose versions decide the numbers (torch is read from its metadata, not imported).
LIBRARIES = ("torch", "numpy", "hydra-core", "omegaconf", "mlflow")
PACKAGE_DIR = Path(polyexp.__file__).resolve().parent


def git_state(root: Path | None = None) -> dict[str, str]:
    """{'git.commit': ..., 'git.dirty': 'true'|'false'} for polyexp's own checkout, else {}.

    Only a checkout whose top folder holds this very package counts, so an installed polyexp
    never reports the commit of whatever repository its environment happens to sit in.
    Dirty means tracked files differ from the commit (untracked files do not count)."""
    root = PACKAGE_DIR.parent if root is None else root
    if not (root / ".git").exists():
        return {}
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain=v2", "--branch", "-uno"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    lines = done.stdout.splitlines()
    commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), None)
    if done.returncode != 0 or commit is None or commit == "(initial)":
        return {}
    dirty = any(not line.startswith("#") for line in lines)
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def versions() -> dict[str, str]:
    """{'versions.python': '3.11.7', 'versions.torch': '2.13.0', ...} for what is installed."""
    found = {"versions.python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[f"versions.{name}"] = metadata.version(name)
    return found


def threads() -> dict[str, str]:
    """{'threads.openblas': '2', 'threads.torch': '2', ...}: the thread pools loaded now, whose
    sizes decide how float sums are split (see polyexp.training.determinism)."""
    from threadpoolctl import threadpool_info

    found = {f"threads.{p['internal_api']}": str(p["num_threads"]) for p in threadpool_info()}
    if "torch" in sys.modules:  # only where a torch backend already imported it
        found["threads.torch"] = str(sys.modules["torch"].get_num_threads())
    return found


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: str) -> str:
    """A readable name for the device a run trained on ('cpu', 'cuda:0', 'mps')."""
    if device.startswith("cuda"):
        import torch  # only a torch backend runs on cuda, so torch is already imported

        return str(torch.cuda.get_device_name(device))
    return cpu_name()


def tags(device: str) -> dict[str, str]:
    """All provenance tags for a run on `device`; git ones also fill MLflow's own source tag."""
    found = {
        "polyexp.version": polyexp.__version__,
        "command": shlex.join(sys.argv),
        "device_name": device_name(device),
        **versions(),
        **threads(),
        **git_state(),
    }
    if "git.commit" in found:
        found["mlflow.source.git.commit"] = found["git.commit"]  # shown by the MLflow UI
    return found
