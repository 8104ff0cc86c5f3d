"""What a run records in MLflow, through the Python API (the CLI records the same: test_cli)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import polyexp
from conftest import ARTIFACTS, Payload, runs
from polyexp.config import ConfigError
from polyexp.record import tracking


def _artifacts(client: MlflowClient, run_id: str) -> dict[str, Path]:
    folder = Path(client.download_artifacts(run_id, ""))
    return {p.name: p for p in folder.iterdir()}


def test_run_returns_and_records_the_same_numbers(store: MlflowClient) -> None:
    result = polyexp.run(["model=sequential", "optimizer=rmsprop", "steps=300", "log_every=0"])
    run = store.get_run(result.run_id)

    assert run.info.status == "FINISHED"
    assert run.data.tags["model"] == "sequential" and run.data.tags["optimizer"] == "rmsprop"
    assert run.data.tags["backend"] == "autograd" and run.data.tags["device"] == "cpu"
    assert run.info.run_name == "sequential-rmsprop-autograd-cpu steps=300"
    history = store.get_metric_history(result.run_id, "loss")
    assert [m.step for m in history] == list(range(300))
    np.testing.assert_array_equal([m.value for m in history], result.losses)
    metrics = run.data.metrics
    assert metrics["final_loss"] == result.final_loss
    assert {k: metrics[k] for k in "abcd"} == result.coefficients
    assert metrics["train_seconds"] > 0
    assert run.data.params["optimizer.lr"] == "0.001"
    assert run.data.params["steps"] == "300" and run.data.params["dtype"] == "float32"
    assert run.data.params["data.n"] == "2000"


def test_final_loss_is_the_sse_of_the_final_coefficients(store: MlflowClient) -> None:
    result = polyexp.run(["backend=numpy", "steps=50", "log_every=0", "dtype=float64"])
    x = np.linspace(-np.pi, np.pi, 2000)
    a, b, c, d = result.coefficients.values()
    assert result.final_loss == pytest.approx(
        np.sum((a + b * x + c * x**2 + d * x**3 - np.sin(x)) ** 2)
    )
    assert result.final_loss < result.losses[-1]  # one more update after the last recorded loss


def test_artifacts_hold_config_overrides_result_parameters_and_plots(store: MlflowClient) -> None:
    result = polyexp.run(["model=sequential", "backend=numpy", "steps=20", "log_every=0"])
    files = _artifacts(store, result.run_id)
    assert set(files) == ARTIFACTS
    assert "name: sequential" in files["config.yaml"].read_text()
    assert "steps=20" in files["overrides.yaml"].read_text()
    assert json.loads(files["result.json"].read_text())["coefficients"] == result.coefficients
    with np.load(files["parameters.npz"], allow_pickle=False) as saved:
        assert saved["0.bias"].tolist() == [result.coefficients["a"]]
        assert saved["0.weight"].shape == (1, 3)
    for plot in ("loss.png", "fit.png"):
        assert files[plot].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parameters_read_back_as_plain_arrays_and_pickles_are_refused(
    store: MlflowClient, tmp_path: Path
) -> None:
    result = polyexp.run(["backend=numpy", "steps=5", "log_every=0"])
    saved = tracking.load_parameters(store, result.run_id)
    assert {k: float(v) for k, v in saved.items()} == result.coefficients  # polynomial3: a..d

    # A parameters.npz that smuggles a pickled object into a run's artifacts is refused.
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil" / "parameters.npz"
    evil.parent.mkdir()
    np.savez(evil, a=np.array([Payload(marker)], dtype=object))
    experiment = store.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    run = store.create_run(experiment.experiment_id)
    store.log_artifact(run.info.run_id, str(evil))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        tracking.load_parameters(store, run.info.run_id)
    assert not marker.exists()
    # The payload is real: a pickle-permitting load would have run it.
    with np.load(evil, allow_pickle=True) as unsafe:
        unsafe["a"]
    assert marker.exists()


def test_a_bad_value_records_nothing(store: MlflowClient) -> None:
    with pytest.raises(ConfigError):
        polyexp.run(["steps=0"])
    with pytest.raises(ConfigError):
        polyexp.run(["backend=numpy", "device=cuda"])
    assert runs(store) == []


def test_an_error_during_training_ends_the_run_failed_with_what_was_computed(
    store: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polyexp.parts.backends.numpy import NumpyFit

    original, calls = NumpyFit.step, []

    def failing_step(self: NumpyFit) -> object:
        calls.append(1)
        if len(calls) > 30:
            raise RuntimeError("boom")
        return original(self)

    monkeypatch.setattr(NumpyFit, "step", failing_step)
    with pytest.raises(RuntimeError, match="boom"):
        polyexp.run(["backend=numpy", "steps=100", "log_every=0"])
    (run,) = runs(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: boom"
    assert len(store.get_metric_history(run.info.run_id, "loss")) == 30


def test_the_environment_picks_the_experiment(
    store: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "elsewhere-test")
    result = polyexp.run(["backend=numpy", "steps=3", "log_every=0"])
    experiment = store.get_experiment_by_name("elsewhere-test")
    assert store.get_run(result.run_id).info.experiment_id == experiment.experiment_id


def test_default_store_is_sqlite_under_outputs_with_artifacts_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    result = polyexp.run(["backend=numpy", "steps=3", "log_every=0"])
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "polyexp"
    assert run.info.artifact_uri.startswith((tmp_path / "outputs" / "mlartifacts").as_uri())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "outputs"
    ]  # no stray mlruns/ or mlflow.db


def test_runs_logging_the_same_new_dataset_at_once_each_get_it(store: MlflowClient) -> None:
    # MLflow's SQL store looks a dataset up, then inserts it: without the retry some of these
    # threads fail on the datasets table's unique key (seen in CI with 4 joblib jobs).
    experiment = store.create_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
    errors: list[BaseException] = []
    for n in (100, 200, 300):  # three new datasets, eight runs racing for each
        runs = [store.create_run(experiment).info.run_id for _ in range(8)]
        start = threading.Barrier(len(runs))

        def log(run_id: str, n: int = n, start: threading.Barrier = start) -> None:
            client = MlflowClient(store.tracking_uri)
            start.wait()
            try:
                tracking.log_inputs(client, run_id, [tracking.data_input(n, -1.0, 1.0)])
            except Exception as error:  # collected for the assert
                errors.append(error)

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [len(store.get_run(r).inputs.dataset_inputs) for r in runs] == [1] * len(runs)
    assert errors == []
