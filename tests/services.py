"""A throwaway PostgreSQL (Debian's `postgresql`) and an `mlflow server` on it, on loopback.

Everything lives in one temp folder that is removed on exit. PostgreSQL refuses to run as root,
so initdb and pg_ctl run as the `postgres` user (`runuser`); `fsync=off` because the data is
thrown away. The server stores runs in PostgreSQL and artifacts in a folder it serves itself.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def pg_bin() -> Path | None:
    """PostgreSQL's bin folder: Debian keeps initdb and pg_ctl out of PATH."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(folders[-1]) if folders and Path(folders[-1], "pg_ctl").exists() else None


def missing() -> list[str]:
    """What this machine lacks to run the services (empty: all there)."""
    lacking = [] if pg_bin() else ["PostgreSQL (apt-get install postgresql)"]
    if shutil.which("runuser") is None:
        lacking.append("runuser")
    if os.geteuid() != 0:
        lacking.append("root (to run PostgreSQL as the postgres user)")
    return lacking


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stops a server started with start_new_session=True and its workers: SIGTERM to its
    process group, SIGKILL if it has not ended within `timeout` seconds."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@contextmanager
def postgres() -> Iterator[str]:
    """Starts a PostgreSQL cluster on 127.0.0.1 and a free port; yields the store URI MLflow
    takes (`postgresql+psycopg2://...`) and stops the cluster on exit."""
    binaries = pg_bin()
    assert binaries is not None, missing()
    folder = Path(tempfile.mkdtemp(prefix="polyexp-pg-"))
    folder.chmod(0o755)  # the postgres user must enter it (every parent: /tmp is 1777)
    data = folder / "data"
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    port = free_port()
    try:
        _as_postgres(
            str(binaries / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        )
        options = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c full_page_writes=off"
        _as_postgres(
            str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(data / "log"),
            "-w", "start",
        )  # fmt: skip
        _as_postgres(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "mlflow")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(binaries / "pg_ctl"), "-D", str(data),
             "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Server:
    uri: str  # what MLFLOW_TRACKING_URI takes: http://127.0.0.1:<port>
    backend_store_uri: str
    artifacts: Path  # the folder the server keeps artifacts in


@contextmanager
def mlflow_server(
    backend_store_uri: str, timeout: float = 90, port: int | None = None
) -> Iterator[Server]:
    """`mlflow server` on 127.0.0.1 and `port` (default: a free one), on `backend_store_uri`,
    serving artifacts from a temp folder; yields once /health answers, stops it on exit."""
    artifacts = Path(tempfile.mkdtemp(prefix="polyexp-artifacts-"))
    port = port or free_port()
    log = artifacts.with_suffix(".log")
    mlflow = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", backend_store_uri, "--artifacts-destination", str(artifacts)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: the server's workers stop with it
        )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.25)
        yield Server(uri, backend_store_uri, artifacts)
    finally:
        stop_group(process)
        shutil.rmtree(artifacts, ignore_errors=True)
        log.unlink(missing_ok=True)
