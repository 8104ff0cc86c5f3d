"""A sweep's summary: its jobs ranked by final loss, their differing choices as columns, and one
plot overlaying every job's loss curve. Printed at the end of a multirun and recorded on the
parent run (`summary.md`, `losses.png`, and its description). When the sweep varies `seed`, a
second table groups the jobs that differ only by seed: mean, spread, min and max over seeds."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from polyexp.record.tracking import loss_history

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from polyexp.sweeps.sweep import Job


def now_ms() -> int:
    return int(time.time() * 1000)


def _sort_key(job: Job) -> tuple[float, bool, int]:
    loss = job.final_loss
    return (loss if loss is not None and not math.isnan(loss) else math.inf, loss is None, job.num)


def rank(jobs: Sequence[Job]) -> list[Job]:
    """Best final loss first; diverged (inf) and failed jobs (no loss) last."""
    return sorted(jobs, key=_sort_key)


def choices(jobs: Sequence[Job]) -> list[str]:
    """The override keys whose values differ between jobs (every key, for a single job)."""
    values = [dict(o.split("=", 1) for o in j.overrides if "=" in o) for j in jobs]
    keys = list(dict.fromkeys(k for v in values for k in v))
    if len(jobs) == 1:
        return keys
    return [k for k in keys if len({v.get(k) for v in values}) > 1]


def _value(job: Job, key: str) -> str:
    for o in job.overrides:
        if o.split("=", 1)[0] == key:
            return o.split("=", 1)[1]
    return ""


def table(ranked: Sequence[Job]) -> str:
    """A Markdown table: readable in a terminal, rendered in MLflow's artifact view."""
    keys = choices(ranked)
    header = ["rank", "job", *keys, "final_loss", "status", "run"]
    rows = [
        [
            str(i),
            str(j.num),
            *(_value(j, k) for k in keys),
            "" if j.final_loss is None else f"{j.final_loss:.6g}",
            j.status,
            (j.run_id or "")[:8],
        ]
        for i, j in enumerate(ranked, 1)
    ]
    return markdown(header, rows)


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with aligned columns: readable in a terminal, rendered by MLflow."""
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


SEED = "seed"  # the override key that grouping over seeds leaves out


@dataclass(frozen=True)
class Group:
    """The jobs of a sweep that differ only by seed, and their final losses' statistics
    (over the jobs that have one: a failed job has none, a diverged one counts as inf)."""

    choices: tuple[tuple[str, str], ...]  # the varying keys but seed, with their values
    jobs: tuple[Job, ...]
    n: int  # how many final losses the statistics are over
    mean: float
    std: float  # sample standard deviation (n - 1); nan for a single seed
    min: float
    max: float


def _group_of(jobs: Sequence[Job], keys: Sequence[str]) -> Group:
    values = np.array([j.final_loss for j in jobs if j.final_loss is not None], dtype=np.float64)
    choices = tuple((k, _value(jobs[0], k)) for k in keys)
    if not len(values):
        return Group(choices, tuple(jobs), 0, math.nan, math.nan, math.nan, math.nan)
    with np.errstate(invalid="ignore"):  # inf - inf in the spread of a diverged group
        std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    stats = (float(np.mean(values)), std, float(np.min(values)), float(np.max(values)))
    return Group(choices, tuple(jobs), len(values), *stats)


def groups(jobs: Sequence[Job]) -> list[Group]:
    """The jobs grouped by their choices without `seed`, best mean first (groups without a loss
    last); empty when the sweep does not vary `seed`."""
    keys = choices(jobs)
    if len(jobs) < 2 or SEED not in keys:
        return []
    others = [k for k in keys if k != SEED]
    members: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        members.setdefault(tuple(_value(job, k) for k in others), []).append(job)
    found = [_group_of(g, others) for g in members.values()]
    return sorted(found, key=lambda g: (math.isnan(g.mean), g.mean))


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def grouped_table(found: Sequence[Group]) -> str:
    """One row per configuration without seed: seeds, mean, std, min and max of final_loss."""
    keys = [k for k, _ in found[0].choices] if found else []
    header = ["rank", *keys, "seeds", "mean", "std", "min", "max"]
    rows = [
        [str(i), *(v for _, v in g.choices), str(g.n), *map(_number, (g.mean, g.std, g.min, g.max))]
        for i, g in enumerate(found, 1)
    ]
    return markdown(header, rows)


def description(table: str, grouped: str | None, url: str | None) -> str:
    """The parent run's description (`mlflow.note.content`, shown on its page): the ranked
    table, the table over seeds when there is one, and where to compare the jobs."""
    parts = ["Jobs ranked by final_loss (best first):", "", table]
    if grouped:
        parts += ["", "Grouped over seeds, ranked by mean final_loss:", "", grouped]
    if url:
        parts += ["", f"Compare them in the MLflow UI (`polyexp-ui`): {url}"]
    return "\n".join(parts) + "\n"


def label(job: Job, keys: Sequence[str]) -> str:
    return " ".join(f"{k}={_value(job, k)}" for k in keys) or f"job {job.num}"


def plot(curves: Sequence[tuple[str, np.ndarray]], path: Path) -> None:
    """Every job's loss curve on one log-scale axis."""
    fig = Figure(figsize=(8, 5), dpi=100)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.93, bottom=0.1)
    ax = fig.add_subplot()
    for name, losses in curves:
        ax.plot(np.arange(len(losses)), losses, lw=1.2, label=name)
    ax.set_yscale("log")
    starts = [c[0] for _, c in curves if len(c) and np.isfinite(c[0])]
    if starts:  # a diverging curve runs off the top instead of squashing the others
        ax.set_ylim(top=10 * max(starts))
    ax.set(xlabel="step", ylabel="loss (sum of squared errors)", title="Loss of every job")
    ax.grid(True, which="both", alpha=0.3)
    if 0 < len(curves) <= 20:
        ax.legend(fontsize="small")
    FigureCanvasAgg(fig).print_png(path)


def record(client: MlflowClient, run_id: str, ranked: Sequence[Job], text: str) -> None:
    """Logs the table (`summary.md`) and the overlaid loss curves (`losses.png`) on `run_id`."""
    keys = choices(ranked)
    curves = []
    for job in ranked:
        if job.run_id is None:
            continue
        losses = loss_history(client, job.run_id)
        losses[~(losses > 0)] = np.nan  # a log axis cannot show them
        if len(losses):
            name = label(job, keys) + (" (diverged)" if job.status == "DIVERGED" else "")
            curves.append((name, losses))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "summary.md").write_text(text + "\n")
        plot(curves, folder / "losses.png")
        client.log_artifacts(run_id, str(folder))
