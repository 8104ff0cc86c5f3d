"""polyexp's speed side by side with the seed programs it replaces, measured in one run.

    make bench                  # or: .venv/bin/python benchmarks/bench.py [--quick]

Prints each figure and its ratio, and writes the table to benchmarks/RESULTS.md. The seed's six
programs it compares against are tests/seed_programs.py (run as written: printing every 100 steps).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import polyexp  # noqa: E402
import seed_programs  # noqa: E402
from polyexp import config, training  # noqa: E402
from polyexp.record import runner  # noqa: E402

INIT = [0.3, -0.5, 0.2, 0.1]
PRESETS = seed_programs.NAMES
ROWS: list[tuple[str, str, str, str]] = []  # (what, polyexp, reference, ratio)


def row(what: str, ours: str, reference: str, ratio: str) -> None:
    ROWS.append((what, ours, reference, ratio))
    print(f"{what:<58} {ours:>14} {reference:>14} {ratio:>9}", flush=True)


def best(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` timed calls, after one untimed warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def quiet(fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn()

    return call


def our_loop(overrides: list[str]) -> Callable[[], object]:
    """polyexp's training alone (polyexp.train's work after composing: parts, then loop)."""
    s = config.check(polyexp.compose(overrides))
    return quiet(lambda: training.train(s))


def seed_loop(name: str, steps: int = 2000) -> Callable[[], object]:
    return quiet(lambda: seed_programs.run(name, INIT, steps, record=False))


# One seed program as its own process: it imports only what that program imports.
SEED_SCRIPT = """import sys
sys.path.insert(0, {tests!r})
import seed_programs
seed_programs.run({name!r}, {init!r}, 2000, record=False)
"""


def section_loops(repeats: int) -> None:
    print("\n== Training loops: each preset against the seed program's own loop (2000 steps) ==")
    for name in PRESETS:
        ours = best(
            our_loop([f"experiment={name}", "init=fixed", f"init.coefficients={INIT}"]), repeats
        )
        seed = best(seed_loop(name), repeats)
        row(
            f"loop {name}",
            f"{ours / 2000 * 1e6:.1f} us/step",
            f"{seed / 2000 * 1e6:.1f} us/step",
            f"{seed / ours:.1f}x",
        )


def polyexp_cmd(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "polyexp", *args],
        cwd=cwd,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def section_command(work: Path, env: dict[str, str]) -> None:
    print(
        "\n== The whole command: six presets as one recorded multirun vs six bare seed programs =="
    )
    scripts = []
    for name in PRESETS:
        path = work / f"{name}.py"
        path.write_text(SEED_SCRIPT.format(tests=str(ROOT / "tests"), name=name, init=INIT))
        scripts.append(path)
    start = time.perf_counter()
    for path in scripts:
        subprocess.run([sys.executable, str(path)], cwd=work, check=True, stdout=subprocess.DEVNULL)
    seeds = time.perf_counter() - start
    polyexp_cmd(["backend=numpy", "steps=1"], work, env)  # the store exists before we time
    ours = polyexp_cmd(["-m", f"experiment={','.join(PRESETS)}"], work, env)
    row(
        "six presets, recorded (polyexp -m experiment=...)",
        f"{ours:.2f} s",
        f"{seeds:.2f} s",
        f"{ours / seeds:.2f}x time",
    )


def _quiet_run(cfg: DictConfig) -> runner.Result:
    with contextlib.redirect_stdout(io.StringIO()):
        return runner.run(cfg)


def section_recording(repeats: int) -> None:
    print("\n== Recording cost per run (params, 2000 step losses, artifacts, plots) ==")
    for overrides in (["backend=numpy"], ["experiment=seed_module"]):
        cfg = polyexp.compose([*overrides, "log_every=0"])
        costs = []  # (everything but the loop, the loop), per run
        for _ in range(repeats + 1):  # the first is a warm-up
            start = time.perf_counter()
            result = _quiet_run(cfg)
            total = time.perf_counter() - start
            costs.append((total - result.train_seconds, result.train_seconds))
        record, loop = min(costs[1:])
        row(
            f"record {' '.join(overrides)}",
            f"{record * 1e3:.0f} ms",
            f"{loop * 1e3:.0f} ms loop",
            f"{record / loop:.1f}x loop",
        )


HAND_SWEEP = """
import math, sys, mlflow, torch
mlflow.set_experiment("hand")
x = torch.linspace(-math.pi, math.pi, 2000); y = torch.sin(x)
for lr in [float(v) for v in sys.argv[2].split(",")]:
    with mlflow.start_run():
        mlflow.log_params({"lr": lr, "steps": int(sys.argv[1])})
        a, b, c, d = (torch.nn.Parameter(torch.tensor(v)) for v in (0.3, -0.5, 0.2, 0.1))
        opt = torch.optim.SGD([a, b, c, d], lr=lr)
        for t in range(int(sys.argv[1])):
            loss = (a + b * x + c * x ** 2 + d * x ** 3 - y).pow(2).sum()
            mlflow.log_metric("loss", loss.item(), step=t)
            opt.zero_grad(); loss.backward(); opt.step()
        mlflow.log_metric("final_loss", loss.item())
"""


def section_sweep(work: Path, env: dict[str, str], jobs: int, steps: int) -> None:
    print(
        f"\n== A {jobs}-job lr sweep ({steps} steps a job) against one log_metric call per step =="
    )
    lrs = ",".join(f"{v:.3g}" for v in np.geomspace(1e-7, 3e-6, jobs))
    script = work / "hand_sweep.py"
    script.write_text(HAND_SWEEP)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(script), str(steps), lrs],
        cwd=work,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    hand = time.perf_counter() - start
    args = ["-m", "experiment=seed_module", f"steps={steps}", f"optimizer.lr={lrs}", "log_every=0"]
    launchers: list[tuple[str, list[str]]] = [("basic", [])]
    if _installed("hydra_plugins.hydra_joblib_launcher"):
        launchers.append(("joblib", ["hydra/launcher=joblib"]))
    for launcher, extra in launchers:
        ours = polyexp_cmd([*args, *extra], work, env)
        row(
            f"{jobs}-job sweep, {launcher} launcher",
            f"{ours:.2f} s",
            f"{hand:.2f} s",
            f"{hand / ours:.1f}x",
        )


LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib"],
    "batched": ["hydra/launcher=batched"],
}


def section_launchers(
    work: Path,
    env: dict[str, str],
    steps: int,
    big: int,
    names: list[str] | None = None,
    repeat: int = 1,
) -> None:
    """The batched launcher against basic and joblib: an lr sweep of seed_module (autograd, SGD),
    every job recorded in full. basic and joblib run 64 jobs; at `big` jobs (0: none) only
    batched runs (basic would take most of an hour), and their rows give their 64-job rate per
    job. `names`: the launchers to run (all by default); each sweep's time is the best of
    `repeat` runs (the machine has other load: it moves every figure)."""
    names = names or list(LAUNCHERS)
    print(f"\n== Launchers: an lr sweep of experiment=seed_module, {steps} steps a job ==")
    rate: dict[str, float] = {}
    for jobs in (64, big) if big else (64,):
        lrs = ",".join(f"{v:.6g}" for v in np.geomspace(1e-7, 3e-6, jobs))
        args = ["experiment=seed_module", f"steps={steps}", f"optimizer.lr={lrs}", "log_every=0"]
        for name in names:
            if jobs > 64 and name != "batched":
                continue
            cmd = ["-m", *LAUNCHERS[name], *args, "resume=false"]
            seconds = min(polyexp_cmd(cmd, work, env) for _ in range(repeat))
            rate.setdefault(name, jobs / seconds)
            versus = f"{jobs / seconds / rate['basic']:.1f}x basic" if "basic" in rate else "-"
            row(
                f"{jobs}-job sweep, {name} launcher",
                f"{seconds:.2f} s",
                f"{jobs / seconds:.1f} jobs/s",
                versus,
            )


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def section_scaling(repeats: int) -> None:
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"\n== Time per step as the data grows (float32, {', '.join(devices)}) ==")
    for device in devices:
        for backend in ("numpy", "torch", "autograd"):
            if backend == "numpy" and device != "cpu":
                continue
            for n in (2_000, 100_000, 1_000_000, 10_000_000):
                steps = 200 if n <= 100_000 else 20
                lr = 1e-6 * 2000 / n  # the summed loss grows with n; keep the step stable
                loop = our_loop(
                    [
                        f"backend={backend}",
                        f"device={device}",
                        f"data.n={n}",
                        f"steps={steps}",
                        f"optimizer.lr={lr:.3g}",
                        "log_every=0",
                    ]
                )
                seconds = best(loop, max(1, repeats if n <= 100_000 else 1)) / steps
                row(
                    f"{backend} on {device}, n={n:,}",
                    f"{seconds * 1e6:.0f} us/step",
                    f"{1 / seconds:,.0f} steps/s",
                    f"{seconds / n * 1e9:.2f} ns/pt",
                )


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.system()} {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, numpy {np.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller sweep")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument(
        "--launchers", action="store_true", help="only the launcher comparison (~5 min)"
    )
    parser.add_argument(
        "--launcher",
        action="append",
        choices=list(LAUNCHERS),
        help="with --launchers: only this launcher (repeatable)",
    )
    parser.add_argument(
        "--big", type=int, default=1024, help="with --launchers: the big batched sweep (0: none)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="with --launchers: best of this many runs"
    )
    args = parser.parse_args()
    repeats = 1 if args.quick else 3

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
            "MLFLOW_EXPERIMENT_NAME": "bench",
        }
        os.environ.update(env)
        print(f"{'':<58} {'polyexp':>14} {'reference':>14} {'ratio':>9}")
        polyexp_cmd(["backend=numpy", "steps=1"], work, env)  # the store exists before we time
        if args.launchers:
            section_launchers(work, env, 500, args.big, args.launcher, args.repeat)
            return
        section_loops(repeats)
        section_recording(repeats)
        section_command(work, env)
        section_sweep(work, env, jobs=32, steps=200 if args.quick else 500)
        section_launchers(work, env, steps=500, big=256 if args.quick else 1024)
        section_scaling(repeats)

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}.",
        "",
        "| what | polyexp | reference | ratio |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ROWS]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
