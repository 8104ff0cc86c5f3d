"""polyexp in the MLflow UI: `polyexp-ui` serves the store, and every sweep gets a ready view.

MLflow 3.17's runs page opens on its GenAI pages, shows no metric or parameter column, draws
10 runs and every metric in alphabetical order. A *shared view* changes all of that without a
click: an experiment tag `mlflow.sharedViewState.<key>` holding the page's state as JSON,
opened by `#/experiments/<id>/runs?viewStateShareKey=<key>`. The state's format is MLflow's own
(its UI's ExperimentPageUIState and search facets); tests/test_ui.py pins it in a browser, so an
upgrade that changes it fails there. `workflowType=machine_learning` in the URL opens the Model
training pages, whatever a browser chose before.

A sweep gets two views: `sweep-<parent run id>` (its jobs sorted by final_loss, the result
metrics and the keys it varies as columns, the loss curves first) and, when it varies `seed`,
`sweep-<parent run id>-seeds` (the same jobs grouped by everything but seed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from polyexp.record import store, tracking

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5000
URL_ENV = "POLYEXP_UI_URL"  # where polyexp-ui serves, when not on its default address
SHARE_TAG = "mlflow.sharedViewState."
DEFAULT_VIEW = "polyexp"  # the experiment-wide view polyexp-ui opens
RESULTS = ("final_loss", "gap_to_optimum", "train_seconds")  # metric columns, in this order
SECTION = "polyexp-metrics"  # the one chart section of a view
START_SECONDS = 120.0  # how long polyexp-ui waits for MLflow's server to answer
STOP_SECONDS = 15.0  # how long it waits for the server to stop before killing it


class UiError(Exception):
    """What polyexp-ui cannot do, in one line."""


# --- where the UI is ----------------------------------------------------------------------------


def served_at(uri: str | None = None) -> str:
    """The UI's base URL: the tracking server itself when the store is one, else where
    polyexp-ui serves (`POLYEXP_UI_URL`, default http://127.0.0.1:5000)."""
    uri = uri or tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        return store.redact(uri).rstrip("/")  # printed: never with a password
    return (os.environ.get(URL_ENV) or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}").rstrip("/")


def page_url(base: str, experiment_id: str, view: str | None = None) -> str:
    """The runs page of an experiment in the Model training pages, in the shared view `view`."""
    query = ([f"viewStateShareKey={view}"] if view else []) + ["workflowType=machine_learning"]
    return f"{base}/#/experiments/{experiment_id}/runs?{'&'.join(query)}"


# --- the views ----------------------------------------------------------------------------------


def column(key: str, params: Mapping[str, str], tags: Mapping[str, str]) -> str | None:
    """The runs table's column for an override key: a param (`optimizer.lr`), else the tag of
    a choice (`optimizer` -> the tag optimizer), else the choice's `<key>.name` param."""
    if key in params:
        return f"params.`{key}`"
    if key in tags:
        return f"tags.`{key}`"
    if f"{key}.name" in params:
        return f"params.`{key}.name`"
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Varying:
    """What a set of runs varies, as the runs table names it."""

    columns: list[str]  # e.g. ["tags.`optimizer`", "params.`optimizer.lr`", "params.`seed`"]
    numeric: list[str]  # the param keys among them whose values are all numbers
    group_by: list[tuple[str, str]]  # (mode, key) of each but seed, for MLflow's Group by


def varying(keys: Sequence[str], runs: Sequence[Run]) -> Varying:
    """`keys` (override keys, e.g. summary.choices of a sweep) as the runs' columns."""
    params = {k: v for r in runs for k, v in r.data.params.items()}
    tags = {k: v for r in runs for k, v in r.data.tags.items()}
    columns, numeric, group_by = [], [], []
    for key in keys:
        name = column(key, params, tags)
        if name is None:
            continue
        columns.append(name)
        kind, _, inner = name.partition(".")
        inner = inner.strip("`")
        values = [r.data.params.get(inner) for r in runs] if kind == "params" else []
        if values and all(v is not None and _is_number(v) for v in values):
            numeric.append(inner)
        if key != "seed":
            group_by.append(("param" if kind == "params" else "tag", inner))
    return Varying(columns, numeric, group_by)


def _line(metric: str, runs: int) -> dict[str, Any]:
    return {
        "uuid": f"polyexp-{metric}", "type": "LINE", "metricKey": metric,
        "metricSectionId": SECTION, "deleted": False, "isGenerated": False,
        "runsCountToCompare": runs, "scaleType": "log", "xAxisScaleType": "linear",
        "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
        "yAxisExpressions": [], "lineSmoothness": 0, "ignoreOutliers": False,
        "useGlobalXaxisKey": False, "useGlobalLineSmoothing": False, "range": {},
    }  # fmt: skip


def _bar(metric: str, runs: int, deleted: bool = False) -> dict[str, Any]:
    return {
        "uuid": f"polyexp-{metric}", "type": "BAR", "metricKey": metric,
        "metricSectionId": SECTION, "deleted": deleted, "isGenerated": deleted,
        "runsCountToCompare": runs,
    }  # fmt: skip


def _parallel(params: Sequence[str], runs: int) -> dict[str, Any]:
    return {
        "uuid": "polyexp-parallel", "type": "PARALLEL", "metricSectionId": SECTION,
        "deleted": False, "isGenerated": False, "runsCountToCompare": runs,
        "selectedParams": list(params), "selectedMetrics": ["final_loss"], "showAllRuns": True,
    }  # fmt: skip


def charts(metrics: Sequence[str], numeric: Sequence[str], runs: int) -> list[dict[str, Any]]:
    """The loss curves first (log scale), then final_loss, then the numeric varying keys
    against final_loss in parallel coordinates; every other metric hidden (MLflow would add
    a chart for a metric it has no card for)."""
    cards = [_line("loss", runs), _bar("final_loss", runs)]
    if numeric:
        cards.append(_parallel(numeric, runs))
    shown = {"loss", "final_loss"}
    cards += [_bar(m, runs, deleted=True) for m in sorted(set(metrics) - shown)]
    return cards


def view_state(
    search_filter: str,
    columns: Sequence[str],
    cards: Sequence[Mapping[str, Any]],
    group_by: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The runs page's state as MLflow's UI saves it: a filter, the columns, sorted by
    final_loss (best first), every run drawn in the charts, and with `group_by` the runs
    grouped by those (mode, key) pairs, charts showing each group's mean and min/max band."""
    grouping = None
    if group_by:
        keys = [{"mode": mode, "groupByData": key} for mode, key in group_by]
        grouping = {"aggregateFunction": "average", "groupByKeys": keys}
    section = {
        "uuid": SECTION, "name": "Model metrics", "display": True, "isReordered": True,
        "deleted": False, "isGenerated": False,
    }  # fmt: skip
    return {
        "searchFilter": search_filter,
        "orderByKey": "metrics.`final_loss`",
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        # A diverged job's final_loss is NaN (sorted last); its `diverged` tag says why.
        "selectedColumns": [*(f"metrics.`{m}`" for m in RESULTS), "tags.`diverged`", *columns],
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": list(cards),
        "compareRunSections": [section],
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
        "groupBy": grouping,
        "groupsExpanded": {},
        "useGroupedValuesInCharts": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0},
    }


def save_view(client: MlflowClient, experiment_id: str, key: str, state: Mapping[str, Any]) -> None:
    client.set_experiment_tag(experiment_id, SHARE_TAG + key, json.dumps(state))


def mark_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Tags the experiment as model training for MLflow 3's UI (new ones are created so)."""
    for key, value in tracking.EXPERIMENT_KIND.items():
        client.set_experiment_tag(experiment_id, key, value)


@dataclass(frozen=True)
class SweepViews:
    url: str  # the sweep's comparison view
    seeds_url: str | None  # the same jobs grouped over seeds; None when seed does not vary


def save_sweep_views(
    client: MlflowClient, experiment_id: str, parent_run_id: str, keys: Sequence[str],
    children: Sequence[Run],
) -> SweepViews:  # fmt: skip
    """Writes the sweep's views (its jobs: the children of `parent_run_id`; `keys`: the
    override keys it varies) and returns their URLs."""
    found = varying(keys, children)
    metrics = sorted({m for r in children for m in r.data.metrics})
    n = max(len(children), 10)
    cards = charts(metrics, found.numeric, n)
    search = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    key = f"sweep-{parent_run_id}"
    save_view(client, experiment_id, key, view_state(search, found.columns, cards))
    mark_experiment(client, experiment_id)
    base = served_at(client.tracking_uri)
    seeds_url = None
    if "seed" in keys:
        columns = [c for c in found.columns if c != "params.`seed`"]
        state = view_state(search, [*columns, "tags.`sweep.group`"], cards, found.group_by)
        save_view(client, experiment_id, f"{key}-seeds", state)
        seeds_url = page_url(base, experiment_id, f"{key}-seeds")
    return SweepViews(page_url(base, experiment_id, key), seeds_url)


DEFAULT_KEYS = ("model", "optimizer", "backend", "optimizer.lr", "seed", "steps")


def save_default_view(client: MlflowClient, experiment_id: str) -> None:
    """The experiment-wide view polyexp-ui opens: every run, sorted by final_loss."""
    columns = [f"tags.`{k}`" for k in DEFAULT_KEYS[:3]] + [
        f"params.`{k}`" for k in DEFAULT_KEYS[3:]
    ]
    cards = charts(["a", "b", "c", "d", "gap_to_optimum", "train_seconds"], [], 100)
    save_view(client, experiment_id, DEFAULT_VIEW, view_state("", columns, cards))
    mark_experiment(client, experiment_id)


# --- polyexp-ui ---------------------------------------------------------------------------------


def check_port(host: str, port: int) -> None:
    """Raises UiError when `host:port` cannot be listened on (in use, or not this machine's)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            s.bind((host, port))
        except OSError as error:
            raise UiError(
                f"cannot listen on {host}:{port} ({error.strerror}); "
                "another program uses it: choose another with --port"
            ) from None


def _experiment_url(client: MlflowClient, base: str) -> str:
    """The URL to open: polyexp's experiment in polyexp's default view, or the list of
    experiments when the store has none of that name yet."""
    experiment = client.get_experiment_by_name(tracking.experiment_name())
    if experiment is None:
        return f"{base}/#/experiments?workflowType=machine_learning"
    save_default_view(client, experiment.experiment_id)
    return page_url(base, experiment.experiment_id, DEFAULT_VIEW)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (its workers too), SIGKILL if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_SECONDS)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_until_ready(process: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None:
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
            raise UiError(f"MLflow's server stopped: {lines[-1] if lines else 'no output'}")
        if time.monotonic() > deadline:
            raise UiError(f"MLflow's server did not answer within {START_SECONDS:g} s")
        time.sleep(0.2)


def serve(host: str, port: int) -> int:
    """Serves the store until Ctrl-C or SIGTERM; returns the exit status."""
    from mlflow.tracking import MlflowClient

    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        with store.reaching(uri):
            url = _experiment_url(MlflowClient(uri), uri.rstrip("/"))
        print(f"polyexp-ui: MLFLOW_TRACKING_URI is a tracking server already; open {url}")
        return 0
    db = store.sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UiError(
            f"{store.describe(uri)}: no such database; run polyexp first or set "
            "MLFLOW_TRACKING_URI to the store to serve"
        )
    check_port(host, port)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    base = f"http://{shown}:{port}"
    with store.reaching(uri):
        url = _experiment_url(MlflowClient(uri), base)
    command = [
        str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", uri,
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    if db is not None:  # artifacts a new experiment of the server gets go beside the database
        command += ["--artifacts-destination", str(db.parent / "mlartifacts")]
    # MLflow's job runner (several processes, 20 s to start) serves GenAI features polyexp
    # does not use.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    signal.signal(signal.SIGTERM, _stop)
    with tempfile.TemporaryDirectory(prefix="polyexp-ui-") as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            _wait_until_ready(process, base, log)
            print(
                f"polyexp-ui: serving {store.redact(uri)}; open {url}  (Ctrl-C stops it)",
                flush=True,
            )
            return process.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            _stop_group(process)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="polyexp-ui",
        description="Serve polyexp's MLflow store with MLflow's UI and print the URL to open.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    args = parser.parse_args(argv)
    store.redact_tracebacks()
    try:
        status = serve(args.host, args.port)
    except (UiError, store.StoreError) as error:
        sys.exit(f"polyexp-ui: error: {error}")
    sys.exit(status)


if __name__ == "__main__":
    main()
