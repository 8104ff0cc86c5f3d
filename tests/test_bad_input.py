"""Bad input, all of it, in one table: every row is refused in one line naming the key (or the
store, or the folder), with a non-zero exit status, before anything trains, and no run is left
RUNNING; a store's earlier runs are untouched.

Config rows go through the `polyexp` command's own entry (`polyexp.cli.main`) in this process,
which is fast; the rows marked PROCESS, and every store and folder row, run the command in a
real process, the permission rows as the unprivileged user `nobody` (root ignores permissions).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import polyexp
from conftest import polyexp_cli, runs
from polyexp import cli

PROCESS = "process"  # the row also runs as a real `python -m polyexp` process

CONFIG_ROWS = [
    # unknown options and keys
    (
        ["model=mlp"],
        "model=mlp is not an option; choose from dynamic, legendre3, polynomial3, sequential",
        PROCESS,
    ),
    (
        ["optimizer=adagrad"],
        "optimizer=adagrad is not an option; choose from adam, manual_sgd",
        None,
    ),
    (["model._target_=mlp.MLP"], "model._target_='mlp.MLP' cannot be imported", None),
    (
        ["backend._target_=polyexp.parts.models.Sequential"],
        "is not a polyexp.parts.backends.Backend",
        None,
    ),
    (["dtype=float16"], "dtype='float16' is not an option; choose from float32, float64", None),
    (["+optimizer.betas=1"], "optimizer.betas is not a hyper-parameter of optimizer=sgd", None),
    (["stepz=5"], "Could not override 'stepz'. To append to your config use +stepz=5", None),
    (["steps=[1"], "cannot parse the override 'steps=[1'", PROCESS),
    # wrong types
    (["steps=abc"], "steps='abc': expected a whole number >= 1", None),
    (["steps=1.5"], "steps=1.5: expected a whole number >= 1", None),
    (["optimizer.nesterov=maybe"], "optimizer.nesterov='maybe': expected true or false", None),
    (["resume=yes"], "resume='yes': expected true or false", None),
    # non-finite, zero or negative numbers
    (["steps=0"], "steps=0: expected a whole number >= 1", PROCESS),
    (["steps=-5"], "steps=-5: expected a whole number >= 1", None),
    (["seed=-1"], "seed=-1: expected a whole number >= 0", None),
    (["data.n=0"], "data.n=0: expected a whole number >= 1", None),
    (["optimizer.lr=0"], "optimizer.lr=0: expected a number > 0", None),
    (["optimizer.lr=-1"], "optimizer.lr=-1: expected a number > 0", None),
    (["optimizer.lr=nan"], "optimizer.lr=nan: expected a finite number", None),
    (["optimizer.lr=inf"], "optimizer.lr=inf: expected a finite number", None),
    (["optimizer.momentum=-0.5"], "optimizer.momentum=-0.5: expected a number >= 0", None),
    (["optimizer=rmsprop", "optimizer.eps=0"], "optimizer.eps=0: expected a number > 0", None),
    (
        ["optimizer=rmsprop", "optimizer.alpha=2"],
        "optimizer.alpha=2: expected a number in [0, 1]",
        None,
    ),
    (["optimizer.nesterov=true"], "optimizer.nesterov=true needs optimizer.momentum > 0", None),
    (["data.low=1", "data.high=0"], "data.high=0.0 must be greater than data.low=1.0", None),
    (["data.low=nan"], "data.low=nan: expected a finite number", None),
    # impossible devices
    (["backend=numpy", "device=cuda"], "device='cuda' cannot run backend=numpy", None),
    (["backend=numpy", "device=mps"], "device='mps' cannot run backend=numpy", None),
    # malformed coefficient lists
    (["init=fixed"], "init.coefficients is required with init=fixed", None),
    (["init=fixed", "init.coefficients=[1,2]"], "init.coefficients=[1, 2]: expected a list", None),
    (["init=fixed", "init.coefficients=[1,2,3,x]"], "init.coefficients[3]='x'", None),
    (["init=fixed", "init.coefficients=[1,2,3,nan]"], "init.coefficients[3]=nan", None),
    (["init=fixed", "init.coefficients=5"], "init.coefficients=5: expected a list", None),
    (["init=fixed", "init.coefficients=[1,2,3,4,5]"], "init.coefficients=[1, 2, 3, 4, 5]", None),
    (
        ["model=dynamic", "init=fixed", "init.coefficients=[1,2,3,4]"],
        "expected a list of 5 numbers [a,b,c,d,e] for model=dynamic",
        None,
    ),
]
if sys.platform != "darwin":  # no Apple GPU: mps cannot run here
    CONFIG_ROWS.append((["device=mps"], "device='mps' is not available on this machine", None))


@pytest.fixture
def command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """`polyexp.cli.main` as the command line runs it: argv, a clean HYDRA_FULL_ERROR, and the
    process's SIGTERM handler restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "")
    monkeypatch.delenv("HYDRA_FULL_ERROR")  # main() sets it; monkeypatch removes it again
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def refused_in_process(args: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(sys, "argv", ["polyexp", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    message = exited.value.code
    assert isinstance(message, str), f"exit status {message!r}, not an error line"
    return message  # sys.exit(text) prints the text and exits with status 1


@pytest.mark.parametrize(
    ("args", "names", "how"), CONFIG_ROWS, ids=[" ".join(a) for a, _, _ in CONFIG_ROWS]
)
def test_a_bad_value_is_refused_in_one_line_naming_the_key(
    args: list[str],
    names: str,
    how: str | None,
    store: MlflowClient,
    command: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if how == PROCESS:  # first: main() below leaves HYDRA_FULL_ERROR set until the test ends
        done = polyexp_cli(*args, cwd=tmp_path)
        assert done.returncode != 0
    message = refused_in_process(args, monkeypatch)
    assert message.startswith("polyexp: error: ") and names in message, message
    assert "\n" not in message
    if how == PROCESS:
        assert done.stderr.strip() == message, done.stderr  # the same line, the same path
    assert runs(store) == []


# --- the store and the outputs folder ----------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite store holding one finished run, made once and copied by each test."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "earlier"
    try:
        polyexp.run(["backend=numpy", "steps=3", "log_every=0"])
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    return db


@pytest.fixture
def place(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp folder that the user `nobody` can enter (pytest's own is root's alone), also
    used as that user's HOME; removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="polyexp-bad-"))
    folder.chmod(0o755)
    home = folder / "home"
    home.mkdir()
    shutil.chown(home, "nobody")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "earlier")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def as_nobody() -> list[str]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run polyexp as the unprivileged user nobody")
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _store(place: Path, template: Path, mode: int = 0o644) -> Path:
    db = place / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(template, db)
    db.chmod(mode)
    return db


def _unreadable(place: Path, template: Path) -> tuple[list[str], str, Path]:
    db = _store(place, template, mode=0o600)  # root's alone
    (place / "store").chmod(0o777)  # the folder itself is open
    return as_nobody(), f"{db} is not a file this user can read and write", db


def _unwritable_folder(place: Path, template: Path) -> tuple[list[str], str, Path]:
    db = _store(place, template)
    (place / "store").chmod(0o555)  # the journal cannot be written beside it
    return as_nobody(), f"the folder {db.parent} is not writable by this user", db


def _parent_is_a_file(place: Path, template: Path) -> tuple[list[str], str, Path]:
    (place / "file").write_text("not a folder\n")
    return [], f"cannot create the store's folder {place / 'file'} (", place / "file" / "mlflow.db"


def _not_a_database(place: Path, template: Path) -> tuple[list[str], str, Path]:
    db = _store(place, template)
    db.write_bytes(b"this is not an SQLite database\n" * 100)
    return [], "cannot open the database (file is not a database)", db


STORE_ROWS = {
    "unreadable store": _unreadable,
    "store in a read-only folder": _unwritable_folder,
    "store path under a file": _parent_is_a_file,
    "store that is not a database": _not_a_database,
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "sweeping"), [(c, False) for c in STORE_ROWS] + [("unreadable store", True)]
)
def test_a_store_polyexp_cannot_use_is_refused_in_one_line(
    case: str,
    sweeping: bool,
    place: Path,
    template: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix, names, db = STORE_ROWS[case](place, template)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    work = place / "work"
    work.mkdir()
    shutil.chown(work, "nobody")
    args = ["-m", "seed=0,1"] if sweeping else []
    done = polyexp_cli(*args, "backend=numpy", "steps=5", cwd=work, prefix=prefix, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [done.stderr.strip().splitlines()[-1]], (
        done.stderr
    )  # one line
    line = done.stderr.strip()
    assert line.startswith(f"polyexp: error: MLFLOW_TRACKING_URI={uri}: "), line
    assert names in line, line
    assert "Result" not in done.stdout  # nothing trained
    if db.is_file() and case != "store that is not a database":  # the earlier run is intact
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("earlier").experiment_id])
        assert run.info.status == "FINISHED"


def test_a_locked_store_is_refused_within_seconds_and_keeps_its_runs(
    place: Path, template: Path, command: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _store(place, template)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's write, never committed
    try:
        start = time.monotonic()
        message = refused_in_process(["backend=numpy", "steps=5"], monkeypatch)
        took = time.monotonic() - start
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert message == (
        f"polyexp: error: MLFLOW_TRACKING_URI={uri}: the database is locked by another process "
        "(waited 5 s); end that process or, for many writers use a tracking server "
        "(README: Sharing a tracking server)"
    )
    assert took < 15, took  # MLflow alone waits 20 s a statement and retries for minutes
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name("earlier").experiment_id])
    assert [r.info.status for r in found] == ["FINISHED"]  # nothing new, nothing RUNNING


def _read_only_outputs(work: Path) -> list[str]:
    (work / "outputs").mkdir()  # root's: nobody cannot write in it
    return as_nobody()


def _outputs_is_a_file(work: Path) -> list[str]:
    (work / "outputs").write_text("not a folder\n")
    return []


OUTPUT_ROWS = {"read-only outputs": _read_only_outputs, "outputs is a file": _outputs_is_a_file}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "sweeping"), [(c, False) for c in OUTPUT_ROWS] + [("read-only outputs", True)]
)
def test_an_outputs_folder_polyexp_cannot_write_is_refused_in_one_line(
    case: str, sweeping: bool, place: Path, template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _store(place, template, mode=0o666)
    (place / "store").chmod(0o777)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    work = place / "work"
    work.mkdir()
    shutil.chown(work, "nobody")
    prefix = OUTPUT_ROWS[case](work)
    args = ["-m", "seed=0,1"] if sweeping else []
    done = polyexp_cli(*args, "backend=numpy", "steps=5", cwd=work, prefix=prefix, timeout=120)
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"polyexp: error: cannot write {work / 'outputs'}"), line
    assert line.endswith(
        "the outputs folder (hydra.run.dir, hydra.sweep.dir) must be a writable folder"
    )
    client = MlflowClient(f"sqlite:///{db}")
    found = client.search_runs([client.get_experiment_by_name("earlier").experiment_id])
    assert [r.info.status for r in found] == ["FINISHED"]  # nothing new, nothing RUNNING
