"""What a recorded run costs, whole (train + record), at 2000 and 100000 steps: the median of
a few runs of `polyexp.run` in one process on a fresh SQLite store, plus train_seconds.

    python benchmarks/record_cost.py [--repeat 5]

Run it against two checkouts side by side (PYTHONPATH=<other checkout>) to compare them."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs="*", default=[2000, 100000])
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="polyexp-cost-")
    os.chdir(folder)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    import polyexp

    polyexp.run(["backend=numpy", "steps=10", "log_every=0"])  # imports, store, first run
    for steps in args.steps:
        walls, trains = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = polyexp.run(["backend=numpy", f"steps={steps}", "log_every=0"])
            walls.append(time.perf_counter() - start)
            trains.append(result.train_seconds)
        wall, train = statistics.median(walls), statistics.median(trains)
        print(
            f"{polyexp.__file__.rsplit('/', 2)[0]}: steps={steps}: run {wall:.3f} s, "
            f"train {train:.3f} s, record {wall - train:.3f} s (median of {args.repeat})",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
