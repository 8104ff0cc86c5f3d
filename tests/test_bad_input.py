"""Bad input, all of it, in one table: every row is refused in one line naming the key (or the
store, or the folder), with a non-zero exit status, before anything trains, and no run is left
RUNNING; a store's earlier runs are untouched.

Config rows go through the `polyexp` command's own entry (`polyexp.cli.main`) in this process,
which is fast; the rows marked PROCESS, and every store and folder row, run the command in a
real process, the permission rows as the unprivileged user `nobody` (root ignores permissions).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

import polyexp
import services
from conftest import Payload, polyexp_cli, runs
from polyexp import bounds, cli, config
from polyexp.errors import UserError
from polyexp.record import limits, runner, store
from polyexp.sweeps import rerun, sweep

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
    (["seed=-1"], "seed=-1: expected a whole number in [0, 18446744073709551615]", None),
    # torch's generator takes 64 bits (torch.manual_seed overflowed with a 50-line traceback)
    (
        ["backend=torch", "seed=18446744073709551616"],
        "seed=18446744073709551616: expected a whole number in [0, 18446744073709551615]",
        PROCESS,
    ),
    # a value the chosen dtype cannot hold (was a traceback and a FAILED run)
    (
        ["backend=autograd", "dtype=float32", "optimizer.lr=1e39"],
        "optimizer.lr=1e+39: dtype=float32 cannot hold it (its numbers reach 3.403e+38",
        PROCESS,
    ),
    (["dtype=float32", "optimizer.lr=1e-50"], "optimizer.lr=1e-50: dtype=float32 cannot", None),
    (["dtype=float32", "data.low=-1e39"], "data.low=-1e+39: dtype=float32 cannot hold it", None),
    # fewer points than parameters (was accepted, with a gap to the optimum of 5e63)
    (
        ["data.n=1"],
        "data.n=1: model=polynomial3 has 4 parameters (a, b, c, d); expected at least 4 data",
        None,
    ),
    (["model=dynamic", "data.n=4"], "data.n=4: model=dynamic has 5 parameters", None),
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


def _artifacts_at(db: Path, folder: Path, mode: int) -> None:
    """The store's experiments keep their artifacts in `folder` (made with `mode`), beside the
    store as polyexp makes them (the template's are in a folder only root can enter)."""
    with sqlite3.connect(db) as c:
        c.execute("UPDATE experiments SET artifact_location = ?", (folder.as_uri(),))
    folder.mkdir()
    folder.chmod(mode)


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


def _read_only_artifacts(place: Path, template: Path) -> tuple[list[str], str, Path]:
    db = _store(place, template, mode=0o666)
    (place / "store").chmod(0o777)
    artifacts = place / "store" / "mlartifacts"
    _artifacts_at(db, artifacts, 0o555)  # made read-only (root's) after the store existed
    return (
        as_nobody(),
        (
            f"the artifact folder {artifacts} of experiment 'earlier' is not writable by this "
            "user; fix its permissions or choose another store"
        ),
        db,
    )


STORE_ROWS = {
    "unreadable store": _unreadable,
    "store in a read-only folder": _unwritable_folder,
    "store path under a file": _parent_is_a_file,
    "store that is not a database": _not_a_database,
    "read-only artifact folder": _read_only_artifacts,  # was: trained in full, then FAILED
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "sweeping"),
    [(c, False) for c in STORE_ROWS]
    + [(c, True) for c in ("unreadable store", "read-only artifact folder")],
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
    _artifacts_at(db, place / "store" / "mlartifacts", 0o777)
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


# --- hostile and odd input: records, secrets, concurrent sweeps, MLflow's limits ---------------


def one_line(stderr: str) -> str:
    """The one line a refusal prints on stderr (asserting there is exactly one)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_planted_pickle_is_refused_and_its_code_never_runs(
    store: MlflowClient, tmp_path: Path
) -> None:
    marker = tmp_path / "planted-code-ran"
    planted = tmp_path / "config.pickle"  # as if planted in a sweep folder on a shared filesystem
    planted.write_bytes(pickle.dumps(Payload(marker)))
    done = polyexp_cli("--experimental-rerun", str(planted), cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert one_line(done.stderr) == f"polyexp: error: {cli.NO_HYDRA_RERUN}"
    assert not marker.exists() and runs(store) == []


@pytest.fixture
def recorded(store: MlflowClient, capsys: pytest.CaptureFixture[str]) -> tuple[str, Path]:
    """A finished run in the test's store: (its id, its artifact folder, where config.yaml and
    overrides.yaml can be planted as anyone who can write to a shared store could)."""
    run_id = polyexp.run(["backend=numpy", "steps=3", "log_every=0"]).run_id
    capsys.readouterr()
    return run_id, Path(store.get_run(run_id).info.artifact_uri.removeprefix("file://"))


def _set(path: str, value: object) -> object:
    def plant(config: dict) -> dict:
        *parents, last = path.split(".", 1)  # one level down at most
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
        return config

    return plant


# name: (what is planted in config.yaml (a function of its mapping, or text), overrides.yaml
# (text) or None, what the one line says after "run <id>: ")
RERUN_ROWS = {
    "interpolation": (
        _set("model.name", "${oc.env:HOME}"),
        None,
        "its record sets model.name to an interpolation ('${oc.env:HOME}'); a recorded config "
        "is data and is never resolved",
    ),
    "interpolation in a key": (
        _set("data.${oc.env:HOME}", 1),
        None,
        "its record sets data.${oc.env:HOME} to an interpolation",
    ),
    "interpolation in overrides": (
        None,
        "- model.name=${oc.env:HOME}\n",
        "its record sets overrides[0] to an interpolation",
    ),
    "unknown top-level key": (
        _set("planted", 1),
        None,
        "config.yaml has the key 'planted', which polyexp does not know",
    ),
    "unknown key in device": (
        _set("device.planted", "x"),
        None,
        "config.yaml has the key 'device.planted', which polyexp does not know",
    ),
    "not YAML": ("model: [unclosed\n", None, "config.yaml is not plain YAML ("),
    "a python tag": (
        "!!python/object/apply:os.system ['touch {marker}']\n",
        None,
        "config.yaml is not plain YAML (could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system')",
    ),
    "overrides not a list": (None, "a: 1\n", "overrides.yaml does not hold a list of overrides"),
}


@pytest.mark.parametrize("case", list(RERUN_ROWS))
def test_a_planted_record_cannot_be_rerun_in_one_line_and_exit_status_2(
    case: str,
    store: MlflowClient,
    recorded: tuple[str, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    run_id, folder = recorded
    config_plant, overrides_text, says = RERUN_ROWS[case]
    marker = tmp_path / "planted-code-ran"
    if callable(config_plant):
        text = yaml.safe_dump(config_plant(yaml.safe_load((folder / "config.yaml").read_text())))
        (folder / "config.yaml").write_text(text)
    elif config_plant is not None:
        (folder / "config.yaml").write_text(config_plant.format(marker=marker))
    if overrides_text is not None:
        (folder / "overrides.yaml").write_text(overrides_text)
    with pytest.raises(SystemExit) as exited:
        rerun.main([run_id])
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    line = one_line(err)
    assert line.startswith(f"polyexp-rerun: error: run {run_id}: {says}"), line
    assert not marker.exists()
    assert len(runs(store)) == 1  # nothing recorded


def test_a_planted_secret_never_reaches_the_store(
    store: MlflowClient, store_uri: str, recorded: tuple[str, Path], tmp_path: Path
) -> None:
    """The rerunner's environment holds a secret; a record asks for it with ${oc.env:...}."""
    run_id, folder = recorded
    secret = f"planted-secret-{uuid.uuid4().hex}"
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["model"]["name"] = "${oc.env:AWS_SECRET_ACCESS_KEY}"  # would become a tag and a param
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [str(Path(sys.executable).with_name("polyexp-rerun")), run_id],
        cwd=tmp_path,
        env={**os.environ, "AWS_SECRET_ACCESS_KEY": secret},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert line.startswith(f"polyexp-rerun: error: run {run_id}: its record sets model.name to an")
    assert secret not in done.stdout + done.stderr
    assert len(runs(store)) == 1
    # Nowhere in the store: not in the database, not in any artifact.
    db = Path(store_uri.removeprefix("sqlite:///"))
    for path in [db, *(p for p in db.parent.rglob("*") if p.is_file())]:
        assert secret.encode() not in path.read_bytes(), path


def test_a_run_whose_experiment_was_deleted_cannot_be_rerun(
    store: MlflowClient,
    recorded: tuple[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_id, _ = recorded
    experiment_id = store.get_run(run_id).info.experiment_id
    name = os.environ["MLFLOW_EXPERIMENT_NAME"]
    store.delete_experiment(experiment_id)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")  # the rerun goes beside its source
    with pytest.raises(SystemExit) as exited:
        rerun.main([run_id])
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    assert one_line(err).startswith(
        f"polyexp-rerun: error: run {run_id} cannot run here: MLFLOW_TRACKING_URI="
    )
    assert (
        f"the experiment {name!r} (id {experiment_id}) is deleted; restore it with: mlflow "
        f"experiments restore --experiment-id {experiment_id}"
    ) in err
    found = store.search_runs([experiment_id], run_view_type=ViewType.ALL)
    assert [r.info.run_id for r in found] == [run_id]


@pytest.mark.parametrize("sweeping", [False, True])
def test_a_deleted_experiment_is_refused_in_one_line_saying_how_to_restore_it(
    sweeping: bool, store: MlflowClient, command: None, tmp_path: Path
) -> None:
    name = os.environ["MLFLOW_EXPERIMENT_NAME"]
    experiment_id = store.create_experiment(name)
    store.delete_experiment(experiment_id)
    args = ["-m", "seed=0,1"] if sweeping else []
    done = polyexp_cli(*args, "backend=numpy", "steps=3", cwd=tmp_path)
    assert done.returncode == 1 and "Result" not in done.stdout
    line = one_line(done.stderr)
    assert line.startswith("polyexp: error: MLFLOW_TRACKING_URI="), line
    assert line.endswith(
        f"the experiment {name!r} (id {experiment_id}) is deleted; restore it with: mlflow "
        f"experiments restore --experiment-id {experiment_id} (with MLFLOW_TRACKING_URI set to "
        "this store), or set MLFLOW_EXPERIMENT_NAME to another name"
    ), line
    assert store.search_runs([experiment_id], run_view_type=ViewType.ALL) == []


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A throwaway PostgreSQL for the module; its store URI (no password: trust auth)."""
    lacking = services.missing()
    if lacking:
        pytest.skip(f"needs {', '.join(lacking)}")
    with services.postgres() as uri:
        yield uri


@pytest.mark.slow
@pytest.mark.parametrize("sweeping", [False, True])
def test_a_database_that_is_down_is_one_line_within_seconds_without_its_password(
    sweeping: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lacking = services.missing()
    if lacking:
        pytest.skip(f"needs {', '.join(lacking)}")
    with services.postgres() as running:
        pass  # started, then stopped: the database is down
    password = f"pw-{uuid.uuid4().hex}"
    uri = running.replace("postgres@", f"postgres:{password}@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    args = ["-m", "seed=0,1"] if sweeping else []
    start = time.monotonic()
    done = polyexp_cli(*args, "backend=numpy", "steps=5", cwd=tmp_path, timeout=200)
    took = time.monotonic() - start
    assert password not in done.stdout + done.stderr
    assert done.returncode == 1
    shown = running.replace("postgres@", "postgres:***@")
    assert one_line(done.stderr) == (
        f"polyexp: error: MLFLOW_TRACKING_URI={shown}: cannot reach the database (connection "
        "refused: nothing listens there); start it or set MLFLOW_TRACKING_URI to a store that "
        "exists (README: Sharing a tracking server)"
    )
    assert took < 10, took  # MLflow alone retries for ~100 s


# A run name over MLflow's 250 characters: fixed 17-digit coefficients and optimizer values.
LONG_NAME = [
    "init=fixed",
    "init.coefficients=[0.12345678901234567,-0.8567413456789012,0.01234567890123456,"
    "-0.09333012345678901]",
    "optimizer=rmsprop",
    "optimizer.lr=0.00012345678901234567",
    "optimizer.alpha=0.98765432109876543",
    "optimizer.eps=1.2345678901234567e-08",
    "optimizer.momentum=0.12345678901234567",
    "backend=numpy",
    "steps=5",
    "log_every=0",
]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_long_run_name_is_fitted_to_mlflow_and_kept_whole_on_every_store(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uri = (
        request.getfixturevalue("database")
        if kind == "postgresql"
        else (f"sqlite:///{tmp_path / 'mlflow.db'}")
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"long-{uuid.uuid4().hex[:8]}")
    monkeypatch.chdir(tmp_path)
    full = runner.run_name(config.check(polyexp.compose(LONG_NAME)), LONG_NAME)
    assert len(full) > limits.RUN_NAME_LENGTH
    result = polyexp.run(LONG_NAME)
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == full[: limits.RUN_NAME_LENGTH - 3] + "..."
    assert run.data.tags[limits.FULL_NAME_TAG] == full
    with tempfile.TemporaryDirectory() as tmp:
        kept = json.loads(
            Path(client.download_artifacts(run.info.run_id, limits.FULL_VALUES, tmp)).read_text()
        )
    assert kept == {"run_name": full}
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 5


def test_limits_cut_params_and_tags_to_mlflow_and_keep_them_whole() -> None:
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

    fitted = limits.fit("short", {"p": "x" * 7000, "q": 1.5}, {"t": "y" * 9000, "u": "v"})
    assert fitted.run_name == "short" and fitted.params["q"] == "1.5"
    assert len(fitted.params["p"]) == MAX_PARAM_VAL_LENGTH and fitted.params["p"].endswith("...")
    assert len(fitted.tags["t"]) == MAX_TAG_VAL_LENGTH and fitted.tags["u"] == "v"
    assert fitted.whole == {"params.p": "x" * 7000, "tags.t": "y" * 9000}
    assert limits.FULL_NAME_TAG not in fitted.tags


@pytest.mark.slow
def test_two_sweeps_started_together_in_one_folder_keep_their_own_parents(
    store: MlflowClient, tmp_path: Path
) -> None:
    def sweep_of(seeds: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "polyexp", "-m", f"seed={seeds}", "backend=numpy", "steps=5",
             "log_every=0", "hydra.sweep.dir=outputs/multirun/shared"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    both = [sweep_of("0,1"), sweep_of("2,3")]  # as a script's `&` starts them: together
    ended = [p.communicate(timeout=300) for p in both]
    assert [p.returncode for p in both] == [0, 0], ended
    found = runs(store)
    parents = [r for r in found if r.data.tags.get("sweep") == "parent"]
    assert len(parents) == 2
    seeds = []
    for parent in parents:
        children = [r for r in found if r.data.tags.get(sweep.PARENT_TAG) == parent.info.run_id]
        seeds.append(sorted(r.data.params["seed"] for r in children))
        assert parent.info.status == "FINISHED" and parent.data.metrics["jobs"] == 2
        assert {r.data.tags["sweep.pid"] for r in children} == {parent.data.tags["sweep.pid"]}
    assert sorted(seeds) == [["0", "1"], ["2", "3"]]
    for out, _ in ended:  # each summary names its own two jobs only
        assert out.count("seed=") == 2, out


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "postgresql+psycopg2://me:pa:ss@w@db.lab:5432/mlflow",
            "postgresql+psycopg2://me:***@db.lab:5432/mlflow",
        ),
        ("http://:token@host/x", "http://:***@host/x"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        (
            "(psycopg2.OperationalError) cannot connect to mysql://root:hunter2@h/db; retrying",
            "(psycopg2.OperationalError) cannot connect to mysql://root:***@h/db; retrying",
        ),
        ("host=db user=me password=hunter2 dbname=x", "host=db user=me password=*** dbname=x"),
        (
            "postgresql://h/db?user=me&password=hunter2&sslmode=require",
            "postgresql://h/db?user=me&password=***&sslmode=require",
        ),
    ],
)
def test_redact_hides_every_password_in_a_uri_or_a_message(text: str, shown: str) -> None:
    assert store.redact(text) == shown


def test_an_uncaught_error_that_echoes_a_uri_prints_no_password(tmp_path: Path) -> None:
    code = (
        "from polyexp.record import store; store.redact_tracebacks(); "
        "raise RuntimeError('cannot open postgresql://me:hunter2@db/mlflow')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 1 and "Traceback" in done.stderr
    assert "hunter2" not in done.stderr and "postgresql://me:***@db/mlflow" in done.stderr


@pytest.mark.parametrize("name", list(bounds.DEFAULTS))
@pytest.mark.parametrize("value", ["soon", "-1", "inf"])
def test_a_bad_time_limit_is_refused_in_one_line_before_any_work(
    name: str, value: str, store: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=rf"^{name}='{value}' is not a number of seconds"):
        bounds.check()
    monkeypatch.setenv(name, " 7.5 ")
    assert bounds.seconds(name) == 7.5
    monkeypatch.delenv(name)
    assert bounds.seconds(name) == bounds.DEFAULTS[name]


@pytest.mark.slow
def test_the_commands_refuse_a_bad_time_limit_before_recording(
    store: MlflowClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("POLYEXP_STOP_GRACE", "soon")
    done = polyexp_cli("backend=numpy", "steps=20", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "polyexp: error: POLYEXP_STOP_GRACE='soon' is not a number of seconds; set a number >= 0 "
        "or unset it"
    )
    sync_cli = Path(sys.executable).with_name("polyexp-sync")
    synced = subprocess.run([str(sync_cli)], cwd=tmp_path, capture_output=True, text=True)
    assert synced.returncode == 2 and synced.stderr.count("\n") == 1, synced.stderr
    assert "POLYEXP_STOP_GRACE='soon'" in synced.stderr
    assert runs(store) == [] and not (tmp_path / "outputs").exists()
