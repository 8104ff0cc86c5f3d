"""The record-contract check (tests/contract.py) can fail: a run that lacks the record is named."""

from __future__ import annotations

import os

import contract
from mlflow.tracking import MlflowClient


def test_the_contract_check_names_what_a_bare_run_lacks(store: MlflowClient) -> None:
    experiment = store.create_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
    run = store.create_run(experiment, tags={"backend": "numpy", "model": "polynomial3"})
    store.log_metric(run.info.run_id, "loss", 1.0, step=1)  # step 0 is missing
    run_id, missing = contract.lacks(store)
    assert run_id == run.info.run_id
    assert "metric final_loss" in missing and "tag optimizer" in missing
    assert "param seed" in missing and "artifact result.json" in missing
    assert "loss steps are not 0, 1, 2, ... (one per iteration)" in missing
    assert "status FINISHED (is RUNNING)" in missing
