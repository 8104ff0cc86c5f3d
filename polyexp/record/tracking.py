"""Recording a run in MLflow: where the store is, and one run's params, metrics and artifacts.

The store is `MLFLOW_TRACKING_URI` when set, else an embedded SQLite database under
`outputs/` (no server); the experiment is `MLFLOW_EXPERIMENT_NAME` when set, else `polyexp`.
Everything goes through an explicit MlflowClient and batched writes: no global active run
that could leak into the next job of a multirun, and 2000 step losses in one call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

from polyexp.record import limits, store

DEFAULT_EXPERIMENT = "polyexp"
DEFAULT_STORE = Path("outputs") / "mlflow.db"
# The experiment tag that tells MLflow 3's UI this is model training, not GenAI.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}

# MLflow and alembic announce schema migrations at INFO, which Hydra would print on every new store.
for _name in ("alembic", "mlflow.store.db.utils"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE.resolve()}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    # Artifacts of an SQLite store live beside the database, never in a stray ./mlruns.
    db = store.sqlite_path(uri)
    location = (db.parent / "mlartifacts").resolve().as_uri() if db else None
    try:
        return str(client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND))
    except MlflowException:  # another process created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


class RecordedRun:
    """One MLflow run, open while training: metrics and artifacts go in through here."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_metrics(self, losses: np.ndarray, final: Mapping[str, float]) -> None:
        """Logs the loss of every step (step = iteration index) and the final numbers, in
        batched writes: one call instead of one a step (2000 single calls take ~7 s on SQLite)."""
        now = int(time.time() * 1000)
        metrics = [Metric("loss", float(v), now, step) for step, v in enumerate(losses)]
        # A value that is not finite (a diverged run's final_loss, gap_to_optimum) is logged as
        # NaN: SQL stores write inf as 1.7976931348623157e308, which reads as a number in the UI,
        # and sort NaN last. The run's `diverged` tag and result.json (inf) say what happened.
        metrics += [
            Metric(k, float(v) if math.isfinite(v) else math.nan, now, 0) for k, v in final.items()
        ]
        self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)

    def log_data(self, n: int, low: float, high: float, target: str = "sin") -> None:
        """Logs the fitted data as the run's MLflow dataset input (context `training`): the
        Dataset column of the UI names it, and runs can be grouped by it."""
        self.client.log_inputs(self.run_id, [data_input(n, low, high, target)])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifacts(self, folder: Path) -> None:
        self.client.log_artifacts(self.run_id, str(folder))


def data_input(n: int, low: float, high: float, target: str = "sin") -> DatasetInput:
    """The data `n` evenly spaced points x on [low, high], y = target(x), as an MLflow dataset:
    its name says what was fitted, its digest changes with any of the four values."""
    spec = {"target": target, "n": n, "low": low, "high": high}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    schema = {"mlflow_colspec": [{"type": "double", "name": c} for c in ("x", "y")]}
    dataset = Dataset(
        name=f"{target}(x) n={n} [{low:.6g}, {high:.6g}]",
        digest=digest,
        source_type="code",
        source=json.dumps({"tags": {"polyexp.parts.data": json.dumps(spec)}}),
        schema=json.dumps(schema),
        profile=json.dumps({"num_rows": n}),
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])


def loss_history(client: MlflowClient, run_id: str) -> np.ndarray:
    """The recorded `loss` of every step, step 0 first, as float64."""
    history = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    return np.array([m.value for m in history], dtype=np.float64)


def load_parameters(client: MlflowClient, run_id: str) -> dict[str, np.ndarray]:
    """A run's trained parameters (its `parameters.npz`, under the model's state_dict names),
    read without pickle: a file holding pickled objects is refused (ValueError), never run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "parameters.npz", tmp)
        with np.load(path, allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files}


def open_store(experiment: str | None = None) -> tuple[MlflowClient, str]:
    """A client on the store and the id of `experiment` (default: experiment_name()), creating
    both when they do not exist yet. Raises store.StoreError (one line) within seconds when the
    store cannot be used."""
    uri, name = tracking_uri(), experiment or experiment_name()
    with store.reaching(uri), store.created_once(uri):
        client = MlflowClient(uri)
        experiment_id = _experiment_id(client, name, uri)
        usable_experiment(client, uri, name, experiment_id)
        return client, experiment_id


def usable_experiment(client: MlflowClient, uri: str, name: str, experiment_id: str) -> None:
    """StoreError (one line) when the experiment is deleted or its artifacts cannot be written."""
    found = client.get_experiment(experiment_id)
    store.check_experiment(uri, name, experiment_id, found.lifecycle_stage, found.artifact_location)


@contextmanager
def start_run(
    run_name: str, params: Mapping[str, Any], tags: Mapping[str, str], experiment: str | None = None
) -> Iterator[RecordedRun]:
    """Opens a run in `experiment` (default: experiment_name()) and always closes it: FINISHED,
    FAILED (error in the tag `error`) or KILLED."""
    client, experiment_id = open_store(experiment)
    fitted = limits.fit(run_name, params, tags)  # the same record on every store
    run = client.create_run(experiment_id, run_name=fitted.run_name, tags=resolve_tags(fitted.tags))
    run_id = run.info.run_id
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in fitted.params.items()])
        fitted.keep(client, run_id)
        yield RecordedRun(client, run_id)
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    except BaseException as error:
        client.set_tag(run_id, "error", store.redact(f"{type(error).__name__}: {error}")[:5000])
        raise
    finally:
        client.set_terminated(run_id, status)
