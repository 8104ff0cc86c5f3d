"""The MLflow store: where it is, its experiment, a run's data as a dataset, reading back.

The store is `MLFLOW_TRACKING_URI` when set, else an embedded SQLite database under
`outputs/` (no server); the experiment is `MLFLOW_EXPERIMENT_NAME` when set, else `polyexp`.
Everything goes through an explicit MlflowClient and batched writes: no global active run
that could leak into the next job of a multirun, and 2000 step losses in one call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from polyexp.record import store

DEFAULT_EXPERIMENT = "polyexp"
DEFAULT_STORE = Path("outputs") / "mlflow.db"
# The experiment tag that tells MLflow 3's UI this is model training, not GenAI.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}

# MLflow and alembic announce schema migrations at INFO, which Hydra would print on every new store.
for _name in ("alembic", "mlflow.store.db.utils"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def _not_reraised(record: logging.LogRecord) -> bool:
    """MLflow's SQL store logs every database error with its whole traceback (~40 lines: a full
    disk, a lock held too long), then raises it; polyexp reports what it raises in one line."""
    return not record.getMessage().startswith("SQLAlchemy database error.")


logging.getLogger("mlflow.store.db.utils").addFilter(_not_reraised)


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


def log_inputs(client: MlflowClient, run_id: str, inputs: list[DatasetInput]) -> None:
    """Links `inputs` to the run. MLflow's SQL store looks a dataset up, then inserts it, so two
    runs logging the same new dataset at once can collide on its unique key; the loser's second
    call finds the dataset and only links it (log_inputs is idempotent)."""
    try:
        client.log_inputs(run_id, inputs)
    except MlflowException as error:
        if "unique constraint" not in str(error).lower():
            raise
        client.log_inputs(run_id, inputs)


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
