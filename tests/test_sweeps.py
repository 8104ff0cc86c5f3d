"""Sweeps end to end: a parent run per multirun, failures, divergence, resume, the summary.

Every test runs the real `polyexp -m ...` in a subprocess against a real SQLite store."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import polyexp
from conftest import ARTIFACTS, Payload, build_fit, default_sigint, polyexp_cli, runs
from polyexp import cli, config
from polyexp.sweeps import sweep
from polyexp.training.loop import History, loop

FAST = ("backend=numpy", "steps=30", "log_every=0")
FOREVER = ("steps=100000000", "log_every=0")
WRITERS = 16  # parallel jobs writing to one SQLite store at once


def split(found: list) -> tuple[list, list]:
    """(parents, children) of a list of runs."""
    parents = [r for r in found if r.data.tags.get("sweep") == "parent"]
    children = [r for r in found if sweep.PARENT_TAG in r.data.tags]
    assert len(parents) + len(children) == len(found)
    return parents, children


def children_of(parent, found: list) -> list:
    return [r for r in found if r.data.tags.get(sweep.PARENT_TAG) == parent.info.run_id]


def assert_hydra_rerun_is_refused(cwd: Path, client: MlflowClient) -> None:
    """The sweep in `cwd` left no pickle in its job folders, and one planted there is refused by
    `polyexp --experimental-rerun` in one line, its code never run and nothing recorded."""
    outputs = cwd / "outputs"
    assert not list(outputs.rglob(".hydra/*.pickle"))
    job = next(outputs.glob("multirun/*/*/0/.hydra"))
    marker = cwd / "planted-code-ran"
    planted = job / "config.pickle"
    planted.write_bytes(pickle.dumps(Payload(marker)))
    before = len(runs(client))
    for option in ("--experimental-rerun", "--experimental"):  # argparse takes a prefix too
        done = polyexp_cli(option, str(planted), cwd=cwd)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.splitlines() == [f"polyexp: error: {cli.NO_HYDRA_RERUN}"]
        assert "polyexp-rerun RUN_ID" in done.stderr
    assert not marker.exists() and len(runs(client)) == before
    with planted.open("rb") as file:  # the payload is real: unpickling it runs its code
        pickle.load(file)
    assert marker.exists()


# --- divergence (in process) -------------------------------------------------------------------


def test_training_stops_at_the_first_chunk_whose_loss_is_not_finite() -> None:
    fit = build_fit("backend=numpy", "optimizer=manual_sgd", "optimizer.lr=1e-3")
    history = History(fit)
    with np.errstate(over="ignore", invalid="ignore"):
        loop(fit, 100_000, history, log_every=10)
    losses = history.values()
    step = history.diverged_at
    assert step is not None
    assert np.isfinite(losses[:step]).all() and not np.isfinite(losses[step])
    assert len(losses) <= (step // 10 + 1) * 10  # stopped at the chunk that showed it


def test_a_diverging_run_ends_finished_tagged_with_its_finite_losses(
    store: MlflowClient,
) -> None:
    result = polyexp.run(["backend=numpy", "optimizer.lr=1e-3", "steps=400", "log_every=10"])
    assert result.diverged_step is not None and result.diverged_step < 400
    assert result.final_loss == float("inf")
    (run,) = runs(store)
    assert run.info.status == "FINISHED"
    assert run.data.tags["diverged"] == "true"
    assert run.data.tags["diverged_step"] == str(result.diverged_step)
    history = store.get_metric_history(run.info.run_id, "loss")
    assert len(history) == result.diverged_step
    assert all(np.isfinite(m.value) for m in history)
    assert sweep.PARENT_TAG not in run.data.tags  # a single run has no parent


def test_a_run_is_tagged_with_a_fingerprint_of_its_config_minus_volatile_keys() -> None:
    base = config.fingerprint(polyexp.compose(["steps=30"]))
    assert base == config.fingerprint(polyexp.compose(["steps=30", "log_every=7", "resume=false"]))
    assert base != config.fingerprint(polyexp.compose(["steps=31"]))
    assert base != config.fingerprint(polyexp.compose(["steps=30", "optimizer.lr=2e-6"]))


def test_resume_must_be_a_boolean() -> None:
    with pytest.raises(config.ConfigError, match=r"^resume='yes': expected true or false$"):
        config.check(polyexp.compose(["resume=yes"]))


# --- sweeps through the command line -----------------------------------------------------------


@pytest.mark.slow
def test_a_multirun_has_one_finished_parent_with_a_ranked_summary_and_resumes(
    store: MlflowClient, tmp_path: Path
) -> None:
    done = polyexp_cli("-m", "optimizer=sgd,rmsprop", *FAST, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (parent,), children = split(runs(store))
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.overrides"] == (
        "optimizer=sgd,rmsprop backend=numpy steps=30 log_every=0"
    )
    assert parent.data.metrics["jobs"] == 2 and parent.data.metrics["jobs_failed"] == 0
    assert len(children_of(parent, children)) == 2
    assert {r.info.status for r in children} == {"FINISHED"}

    # The terminal table: ranked by final loss, the differing choice as a column.
    losses = {r.data.tags["optimizer"]: r.data.metrics["final_loss"] for r in children}
    table = done.stdout[done.stdout.index("Sweep summary") :].splitlines()[1:5]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["rank", "job", "optimizer", "final_loss", "status", "run"]
    ranked = [row.strip("|").split("|")[2].strip() for row in table[2:]]
    assert ranked == sorted(losses, key=losses.__getitem__)
    assert parent.data.metrics["best_final_loss"] == pytest.approx(min(losses.values()))
    assert_hydra_rerun_is_refused(tmp_path, store)

    # The same table and one overlay plot on the parent.
    artifacts = {a.path for a in store.list_artifacts(parent.info.run_id)}
    assert {"summary.md", "losses.png"} <= artifacts
    folder = store.download_artifacts(parent.info.run_id, "summary.md", str(tmp_path))
    assert Path(folder).read_text().strip() == "\n".join(table)
    png = Path(store.download_artifacts(parent.info.run_id, "losses.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Again, with seed=0 (the default, so the same resolved configs) and seed=1: the two
    # finished jobs are skipped and only the new ones run.
    again = polyexp_cli("-m", "optimizer=sgd,rmsprop", "seed=0,1", *FAST, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped: the same config already FINISHED") == 2
    # ... and it said so before the first job, once.
    announced = (
        "polyexp: resuming: 2 of this sweep's 4 jobs already FINISHED in the experiment and "
        "will be skipped (resume=false reruns them)"
    )
    assert again.stdout.count(announced) == 1 and announced not in done.stdout
    assert again.stdout.index(announced) < again.stdout.index("job 0 skipped")
    parents, children = split(runs(store))
    assert len(parents) == 2 and len(children) == 4
    assert {r.data.params["seed"] for r in children_of(parents[1], children)} == {"1"}
    assert parents[1].data.metrics["jobs"] == 4
    assert parents[1].data.metrics["jobs_skipped"] == 2
    assert parents[1].info.status == "FINISHED"

    # resume=false reruns a finished job.
    third = polyexp_cli("-m", "optimizer=sgd", "resume=false", *FAST, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "skipped" not in third.stdout and "resuming" not in third.stdout
    parents, children = split(runs(store))
    assert len(parents) == 3 and len(children_of(parents[2], children)) == 1


@pytest.mark.slow
def test_a_failed_job_fails_the_parent_and_the_sweep_goes_on(
    store: MlflowClient, tmp_path: Path
) -> None:
    # Job 0 is refused (lr < 0), job 1 diverges, job 2 finishes: the sweep runs all three.
    done = polyexp_cli(
        "-m",
        "optimizer=manual_sgd",
        "optimizer.lr=-1,1e-3,1e-6",
        *FAST[:1],
        "steps=300",
        "log_every=10",
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "optimizer.lr=-1: expected a number > 0" in done.stderr
    (parent,), children = split(runs(store))
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["jobs"] == 3
    assert parent.data.metrics["jobs_failed"] == 1
    assert parent.data.metrics["jobs_diverged"] == 1
    by_lr = {r.data.params["optimizer.lr"]: r for r in children}
    assert set(by_lr) == {"0.001", "1e-06"}
    assert by_lr["0.001"].info.status == "FINISHED"
    assert by_lr["0.001"].data.tags["diverged"] == "true"
    assert by_lr["1e-06"].info.status == "FINISHED"
    rows = done.stdout[done.stdout.index("Sweep summary") :].splitlines()[3:6]
    assert [r.split("|")[-3].strip() for r in rows] == ["FINISHED", "DIVERGED", "FAILED"]


@pytest.mark.slow
def test_sixteen_parallel_writers_on_a_fresh_sqlite_store_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # not even its folder exists yet
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "joblib")
    done = polyexp_cli(
        "-m",
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={WRITERS}",
        f"seed=range({WRITERS})",
        *FAST,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "database is locked" not in done.stderr + done.stdout
    assert "pickle" not in (done.stderr + done.stdout).lower()  # no PicklingError warnings
    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "joblib"]
    found = list(client.search_runs([experiment.experiment_id]))
    (parent,), children = split(found)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs"] == WRITERS
    assert sorted(int(r.data.params["seed"]) for r in children) == list(range(WRITERS))
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags[sweep.PARENT_TAG] for r in children} == {parent.info.run_id}
    # Each job ran in a worker process, not in the launching one, at the same time as others.
    pids = {r.data.tags["sweep.pid"] for r in children}
    assert parent.data.tags["sweep.pid"] not in pids and len(pids) > 1
    # Nothing lost: every step's loss, every final number and every artifact of every job.
    for child in children:
        history = client.get_metric_history(child.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(30))
        assert {"final_loss", "a", "b", "c", "d"} <= set(child.data.metrics)
        assert {a.path for a in client.list_artifacts(child.info.run_id)} == ARTIFACTS
    assert_hydra_rerun_is_refused(tmp_path, client)


@pytest.mark.slow
def test_submitit_local_runs_every_job_as_a_child(store: MlflowClient, tmp_path: Path) -> None:
    done = polyexp_cli(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "seed=0,1",
        *FAST,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    (parent,), children = split(runs(store))
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.params["seed"] for r in children_of(parent, children)) == ["0", "1"]
    assert parent.data.tags["sweep.pid"] not in {r.data.tags["sweep.pid"] for r in children}
    assert_hydra_rerun_is_refused(tmp_path, store)


@pytest.mark.slow
def test_optuna_searches_past_diverging_trials(store: MlflowClient, tmp_path: Path) -> None:
    args = ("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=6", "backend=numpy")
    done = polyexp_cli(*args, "steps=200", "log_every=10", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (parent,), children = split(runs(store))
    assert parent.info.status == "FINISHED"
    assert len(children) == 6
    assert len({r.data.tags["optimizer"] for r in children}) >= 2  # it searched the choice
    lrs = [float(r.data.params["optimizer.lr"]) for r in children]
    assert max(lrs) / min(lrs) > 100  # log scale across decades
    diverged = [r for r in children if r.data.tags.get("diverged") == "true"]
    assert diverged, "seed 0 proposes learning rates that diverge"
    best = min(r.data.metrics["final_loss"] for r in children if r not in diverged)
    results = next((tmp_path / "outputs" / "multirun").glob("*/*/optimization_results.yaml"))
    assert f"best_value: {best}" in results.read_text()

    # The same search again: the seeded sampler proposes the same trials, every one is skipped
    # and hands Optuna its recorded final loss, so the search ends where it ended before.
    results.unlink()
    again = polyexp_cli(*args, "steps=200", "log_every=10", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped: the same config already FINISHED") == 6
    assert len(split(runs(store))[1]) == 6  # no new child runs
    results = next((tmp_path / "outputs" / "multirun").glob("*/*/optimization_results.yaml"))
    assert f"best_value: {best}" in results.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_ends_the_sweep_killed_parent_and_child_alike(
    stop: signal.Signals, store: MlflowClient, tmp_path: Path
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "polyexp", "-m", "seed=0,1", "backend=numpy", *FOREVER],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # a shell's background job would ignore it
    )
    deadline = time.monotonic() + 120
    while len(runs(store)) < 2 and time.monotonic() < deadline:  # the parent and job 0's run
        time.sleep(0.2)
    time.sleep(0.3)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "Traceback" not in stderr
    (parent,), (child,) = split(runs(store))
    assert parent.info.status == "KILLED"
    assert child.info.status == "KILLED" and child.data.params["seed"] == "0"
    assert len(store.get_metric_history(child.info.run_id, "loss")) > 0  # its steps so far
