"""The record contract (DESIGN.md, "Per run, in MLflow"): what the newest run in a store must
hold. Our own copy of the team's check_record.py, so a plain clone checks it too.

It checks names and shapes only; the other tests check the numbers.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

METRICS = ("loss", "final_loss", "a", "b", "c", "d", "train_seconds")
TAGS = ("model", "optimizer", "backend", "device")
PARAMS = ("seed", "steps", "dtype")


def lacks(client: MlflowClient) -> tuple[str, list[str]]:
    """(the newest run with a `backend` tag in the store, what it lacks; empty if nothing)."""
    runs = [
        r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id], max_results=1000)
    ]
    jobs = [r for r in runs if "backend" in r.data.tags]
    if not jobs:
        return "", ["a run with a 'backend' tag in this store"]
    run = max(jobs, key=lambda r: r.info.start_time)
    m, t, p = run.data.metrics, run.data.tags, run.data.params
    missing = [f"metric {k}" for k in METRICS if k not in m]
    missing += [f"tag {k}" for k in TAGS if k not in t]
    missing += [f"param {k}" for k in PARAMS if k not in p]
    if not any(k.startswith("optimizer.") for k in p):
        missing.append("params flattened to dotted keys (optimizer.lr, ...)")
    history = client.get_metric_history(run.info.run_id, "loss")
    steps = sorted(h.step for h in history)
    if steps and steps != list(range(len(steps))):
        missing.append("loss steps are not 0, 1, 2, ... (one per iteration)")
    files: list[str] = []
    stack: list[str | None] = [None]
    while stack:
        for f in client.list_artifacts(run.info.run_id, stack.pop()):
            (stack.append(f.path) if f.is_dir else files.append(f.path))
    if not any(f.endswith("result.json") for f in files):
        missing.append("artifact result.json")
    if sum(f.endswith(".png") for f in files) < 2:
        missing.append("two PNG plots")
    if not any(f.endswith((".yaml", ".yml")) for f in files):
        missing.append("resolved config as YAML")
    if run.info.status != "FINISHED":
        missing.append(f"status FINISHED (is {run.info.status})")
    return run.info.run_id, missing


def assert_newest_run_meets_it(uri: str) -> None:
    run_id, missing = lacks(MlflowClient(uri))
    assert not missing, f"run {run_id} lacks: " + "; ".join(missing)
