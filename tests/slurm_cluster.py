"""A throwaway one-node Slurm cluster on loopback, from Debian's slurmctld, slurmd and munge.

Everything (config, state, spool, logs, munge socket) lives in one temp folder; the daemons are
stopped and the folder removed on exit. Slurm's ports (6817-6819) are fixed: one cluster per
machine at a time.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BINARIES = ("slurmctld", "slurmd", "sinfo", "sbatch", "munged", "setpriv")
PARTITION = "polyexp"


def missing() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _config(folder: Path, node: str, munge_socket: Path) -> str:
    return "\n".join(
        [
            "ClusterName=polyexp",
            f"SlurmctldHost={node}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={munge_socket}",
            "CredType=cred/munge",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            f"StateSaveLocation={folder / 'state'}",
            f"SlurmdSpoolDir={folder / 'spool'}",
            f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
            f"SlurmdPidFile={folder / 'slurmd.pid'}",
            f"SlurmctldLogFile={folder / 'slurmctld.log'}",
            f"SlurmdLogFile={folder / 'slurmd.log'}",
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


PORTS = (6817, 6818)  # slurmctld, slurmd: Slurm's defaults (the config written here keeps them)


def _in_use(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _wait_for_ports(timeout: float) -> None:
    """Until the previous cluster's daemons (and a job step they left) have let go of Slurm's
    fixed ports: a cluster started right after another would fail to bind them."""
    deadline = time.monotonic() + timeout
    while busy := [port for port in PORTS if _in_use(port)]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Slurm's ports {busy} are still in use by another process")
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextmanager
def one_node_cluster(timeout: float = 30) -> Iterator[dict[str, str]]:
    """Starts munged, slurmctld and slurmd; yields the environment for Slurm's clients
    (SLURM_CONF) once the node is idle; stops them (slurmd first) and wipes the folder."""
    folder = Path(tempfile.mkdtemp(prefix="polyexp-slurm-"))
    folder.chmod(0o755)  # munged runs as the munge user and must reach its socket folder
    munge = folder / "munge"
    munge.mkdir()
    shutil.chown(munge, "munge", "munge")
    munge_socket = munge / "munge.socket"
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    node = socket.gethostname()
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, node, munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(
            subprocess.Popen(
                [
                    "setpriv",
                    "--reuid=munge",
                    "--regid=munge",
                    "--init-groups",
                    "munged",
                    "--foreground",
                    f"--socket={munge_socket}",
                    f"--pid-file={munge / 'munged.pid'}",
                    f"--seed-file={munge / 'seed'}",
                    f"--log-file={munge / 'munged.log'}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + timeout
        while not munge_socket.exists():
            if time.monotonic() > deadline or started[0].poll() is not None:
                raise RuntimeError(f"munged did not start: {_tail(munge / 'munged.log')}")
            time.sleep(0.05)
        _wait_for_ports(timeout)
        for daemon in ("slurmctld", "slurmd"):
            started.append(
                subprocess.Popen(
                    [daemon, "-D"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        while True:
            sinfo = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True
            )
            if sinfo.stdout.strip() == "idle":
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in started):
                raise RuntimeError(
                    f"the Slurm node did not come up ({sinfo.stdout.strip()}): "
                    f"{_tail(folder / 'slurmctld.log')} {_tail(folder / 'slurmd.log')}"
                )
            time.sleep(0.2)
        yield env
    finally:
        for process in reversed(started):  # slurmd before slurmctld, munged last
            _stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def _tail(path: Path) -> str:
    return path.read_text()[-800:] if path.exists() else f"(no {path.name})"
