"""A sweep sent to a real (one-node, loopback) Slurm cluster: every job a child run.

Needs Debian's slurmctld, slurmd, slurm-client and munge, and root (munged runs as the munge
user); skips without them. `.ci/run` installs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import slurm_cluster
from conftest import runs
from polyexp.sweeps import sweep

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("slurm"),  # Slurm's ports are fixed: one cluster at a time
    pytest.mark.skipif(
        bool(slurm_cluster.missing()),
        reason=f"Slurm is not installed (missing: {' '.join(slurm_cluster.missing())})",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="starting munged and slurmd needs root"),
]


def test_a_sweep_on_slurm_records_every_job_as_a_child(store: MlflowClient, tmp_path: Path) -> None:
    with slurm_cluster.one_node_cluster() as env:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "polyexp",
                "-m",
                "hydra/launcher=submitit_slurm",
                f"hydra.launcher.partition={slurm_cluster.PARTITION}",
                "hydra.launcher.timeout_min=5",
                "seed=0,1,2",
                "backend=numpy",
                "steps=30",
                "log_every=0",
            ],
            cwd=tmp_path,
            env={
                **env,
                **{k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")},
            },
            capture_output=True,
            text=True,
            timeout=240,  # submitit can wait forever on a job Slurm killed before it reported
        )
    assert done.returncode == 0, done.stderr[-3000:]
    found = runs(store)
    parents = [r for r in found if r.data.tags.get("sweep") == "parent"]
    children = [r for r in found if sweep.PARENT_TAG in r.data.tags]
    (parent,) = parents
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs"] == 3
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1", "2"]
    assert {r.data.tags[sweep.PARENT_TAG] for r in children} == {parent.info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    # Slurm ran them: one job array, one log per task, named <array id>_<task>_log.out.
    logs = list((tmp_path / "outputs" / "multirun").glob("*/*/.submitit/*_*/*_log.out"))
    assert sorted(p.name.split("_")[1] for p in logs) == ["0", "1", "2"]
    assert parent.data.tags["sweep.pid"] not in {r.data.tags["sweep.pid"] for r in children}
