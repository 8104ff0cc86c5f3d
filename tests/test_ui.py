"""Checked where users look: a real sweep, a real `mlflow server`, Debian's chromium.

Needs `chromium` on PATH and the `playwright` package (a dev dependency); never downloads a
browser. Skips without chromium. `.ci/run` installs it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import services
from conftest import polyexp_cli, runs
from polyexp import sweep

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is missing"),
]

SWEEP = ("optimizer.lr=1e-3", "backend=numpy", "steps=300", "log_every=0")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(store_uri: str, tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on a free loopback port against the test's store; yields its URL."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            store_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers share its process group: stopped together
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "server.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        yield url
    finally:
        services.stop_group(process)
        log.close()


@pytest.fixture
def swept(store: MlflowClient, tmp_path: Path) -> tuple[str, object, list]:
    """A real two-job sweep in the store: (experiment id, parent run, child runs)."""
    done = polyexp_cli("-m", "optimizer=sgd,rmsprop", *SWEEP, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = runs(store)
    (parent,) = [r for r in found if r.data.tags.get("sweep") == "parent"]
    children = [r for r in found if sweep.PARENT_TAG in r.data.tags]
    assert len(children) == 2
    return parent.info.experiment_id, parent, children


def test_the_ui_lists_the_sweep_under_its_parent_and_compares_the_loss(
    swept: tuple[str, object, list], server: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    experiment_id, parent, children = swept
    names = [c.info.run_name for c in children]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 700})
            # The runs table (MLflow 3 opens an experiment on a GenAI overview instead).
            page.goto(f"{server}/#/experiments/{experiment_id}/runs")
            page.get_by_text(parent.info.run_name).first.wait_for(timeout=90_000)
            close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
            if close.count():
                close.first.click()  # the assistant panel would cover half the table
            for name in names:  # children are folded under their parent until expanded
                assert not page.get_by_text(name, exact=True).is_visible()
            name_cells = page.locator('[col-id="attributes.`Run Name`"]')
            name_cells.filter(has_text=parent.info.run_name).locator("button").first.click()
            for name in names:
                page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
                row = page.locator("[role=row]", has_text=name)
                row.locator("input.ag-checkbox-input").first.check()
            page.screenshot(path=str(tmp_path / "runs.png"))

            page.get_by_role("button", name="Compare").first.click()
            page.get_by_text("Comparing 2 Runs").first.wait_for(timeout=60_000)
            assert all(c.info.run_id in page.url for c in children)
            for name in names:
                page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
            page.get_by_text("Artifacts", exact=True).first.wait_for(timeout=60_000)
            text = page.inner_text("body")
            metrics = text[text.rindex("\nMetrics\n") : text.index("\nArtifacts\n")]
            assert "\nloss\n" in metrics, metrics  # the metric table compares the loss
            page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
        finally:
            browser.close()
