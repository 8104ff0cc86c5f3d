"""Checked where users look: a real sweep, `polyexp-ui` (MLflow's own server), Debian's chromium.

Needs `chromium` on PATH and the `playwright` package (a dev dependency); never downloads a
browser. Skips without chromium. `.ci/run` installs it. Writes the README's screenshots into
docs/. The view's format is MLflow's UI state (polyexp.sweeps.ui): if an MLflow upgrade changes it,
the columns, the order or the charts below stop appearing and this test fails."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import services
from conftest import ROOT, polyexp_cli, runs
from polyexp.sweeps import sweep, ui

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is missing"),
]

# 2 optimizers x 3 learning rates x 2 seeds; sgd at 1e-5 and 1e-3 diverges.
SWEEP = (
    "optimizer=sgd,rmsprop", "optimizer.lr=1e-6,1e-5,1e-3", "seed=0,1", "backend=numpy",
    "steps=50", "log_every=0",
)  # fmt: skip
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Swept:
    children: list
    url: str  # the line the sweep printed
    seeds_url: str


def _printed(stdout: str, prefix: str) -> str:
    (line,) = [x for x in stdout.splitlines() if x.startswith(prefix)]
    return line.removeprefix(prefix).strip()


@pytest.fixture
def port() -> int:
    return services.free_port()


@pytest.fixture
def swept(store: MlflowClient, port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Swept:
    """A real 12-job sweep in the store, its URLs pointing at polyexp-ui on `port`."""
    monkeypatch.setenv(ui.URL_ENV, f"http://127.0.0.1:{port}")
    done = polyexp_cli("-m", *SWEEP, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    children = [r for r in runs(store) if sweep.PARENT_TAG in r.data.tags]
    assert len(children) == 12
    url = _printed(done.stdout, "polyexp: compare the 12 jobs in the MLflow UI (polyexp-ui): ")
    seeds = _printed(done.stdout, "polyexp: the same jobs grouped over seeds: ")
    return Swept(children, url, seeds)


@pytest.fixture
def served(store_uri: str, port: int, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """`polyexp-ui --port PORT` on the test's store, once it printed its URL."""
    start = time.monotonic()
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("polyexp-ui")), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group: the cleanup below reaches its server too
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until it is ready (or ends)
        assert line.startswith("polyexp-ui: serving "), line
        assert f"http://127.0.0.1:{port}/#/experiments/" in line
        print(f"polyexp-ui answered in {time.monotonic() - start:.1f} s")
        yield process
    finally:
        if process.poll() is None:
            services.stop_group(process)


def _closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _cell(page: object, row: int, column: str) -> str:
    cell = page.locator(f'[row-index="{row}"] [col-id="{column}"]').first  # type: ignore[attr-defined]
    return str(cell.inner_text()).strip()


def test_a_sweep_prints_a_view_that_compares_it_without_a_click(
    swept: Swept, served: subprocess.Popen[str], port: int
) -> None:
    from playwright.sync_api import sync_playwright

    final = {c.info.run_id: c.data.metrics.get("final_loss") for c in swept.children}
    best = min(v for v in final.values() if not math.isnan(v))
    assert sum(math.isnan(v) for v in final.values()) == 4  # diverged: NaN, not 1.79e308
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 820})
            page = context.new_page()
            page.goto(swept.url)
            lr = "params.`optimizer.lr`"
            page.locator(f'[row-index="0"] [col-id="{lr}"]').first.wait_for(timeout=120_000)
            close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
            if close.count():
                close.first.click()  # the assistant panel would cover half the table
            # The Model training runs page, not the GenAI overview.
            assert "/runs" in page.url
            page.get_by_text("Run Name", exact=True).first.wait_for()
            # The sweep's 12 jobs, best final_loss first, with the varying keys as columns.
            page.get_by_text("12 matching runs").wait_for()
            for header in ("final_loss", "gap_to_optimum", "train_seconds", "optimizer.lr", "seed"):
                assert page.locator(".ag-header-cell", has_text=header).count(), header
            assert float(_cell(page, 0, "metrics.`final_loss`")) == pytest.approx(best)
            values = {_cell(page, r, lr) for r in range(12)}
            assert values == {"1e-06", "1e-05", "0.001"}
            assert {_cell(page, r, "tags.`optimizer`") for r in range(12)} == {"sgd", "rmsprop"}
            # Diverged jobs last, read as diverged: no 1.7976931348623157e+308.
            assert _cell(page, 11, "tags.`diverged`") == "true"
            assert "e+308" not in _cell(page, 11, "metrics.`final_loss`")
            page.screenshot(path=str(DOCS / "sweep-table.png"))

            # The chart view: the loss curves of all 12 jobs first, then final_loss, then
            # the parallel coordinates; nothing else.
            page.goto(swept.url + "&compareRunsMode=CHART")
            page.get_by_text("Parallel Coordinates").first.wait_for(timeout=60_000)
            plots = page.locator(".js-plotly-plot")
            plots.first.locator("g.trace").nth(11).wait_for(timeout=60_000)
            drawn = plots.first.locator("g.trace path.js-line").evaluate_all(
                "paths => paths.filter(p => (p.getAttribute('d') || '').length > 2).length"
            )
            # MLflow 3.17 draws two line traces a run: 24 for all 12 jobs, 20 for the first 10.
            assert drawn == 2 * 12, drawn
            text = page.inner_text("body")
            shown = re.search(r"Model metrics\s*\((\d+)\)", text)
            assert shown and shown.group(1) == "3", text[:2000]  # the other metrics are hidden
            charts = text[shown.end() :]
            titles = [charts.index(t) for t in ("\nloss\n", "\nfinal_loss\n", "Parallel Coord")]
            assert titles == sorted(titles), charts[:400]
            assert "1e+" in plots.first.inner_text()  # the loss axis is logarithmic
            page.screenshot(path=str(DOCS / "sweep-charts.png"))

            # Grouped over seeds: one row per configuration, its two seeds under it.
            page.goto(swept.seeds_url)
            page.get_by_text("Group: optimizer: sgd, optimizer.lr: 1e-06").first.wait_for(
                timeout=60_000
            )
            assert page.inner_text("body").count("Group: optimizer: ") == 6
            page.screenshot(path=str(DOCS / "sweep-seeds.png"))
        finally:
            browser.close()

    # SIGTERM stops polyexp-ui and the server it started: nothing is left listening.
    served.send_signal(signal.SIGTERM)
    assert served.wait(timeout=30) == 0
    assert _closed(port)
    with pytest.raises(ProcessLookupError):
        os.killpg(served.pid, 0)  # no process of its group is left
