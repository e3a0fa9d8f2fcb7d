"""SGN at the suite's batch size: the paper's damping floor against a floor of 0.1.

SGN adapts its damping λ by the reduction ratio, computed on the mini-batch the step was fitted
to; on small batches the ratio is good almost always, λ falls to its floor, and with the
paper's floor (1e-6) the steps overfit the batch. This script runs each variant on the given
problems for half of each problem's budget (the horizon on which the targets were calibrated)
with several seeds, in a local process pool (one torch thread per run), and prints per variant
and problem: the statuses, the steps to target per seed, and the median final damping.

    python benchmarks/sgn_damping_floor.py [--problems a,b] [--seeds 0,1,2] [--workers 2]

Its output is the provenance of ``sgn``'s defaults (``optimizers/sgn.py``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

from curvebench.harness import plan_run
from curvebench.problems import PROBLEMS, Budget, get_problem
from curvebench.store import RunStore
from curvebench.sweep import run_sweep

#: ``label -> sgn hyperparameter overrides`` (on top of the paper's defaults).
VARIANTS = {
    "paper (λ0 1e-4, floor 1e-6)": {"damping": 1e-4, "damping_min": 1e-6},
    "floor 0.1 (λ0 0.1)": {"damping": 0.1, "damping_min": 0.1},
    "floor 0.1 (λ0 1)": {"damping": 1.0, "damping_min": 0.1},
}


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]`` (argparse turns its ``ValueError`` into a usage error)."""
    return [int(value) for value in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="mnist1d-mlp,synthetic-linreg,digits-autoencoder")
    parser.add_argument("--seeds", type=seed_list, default="0,1,2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--optimizer", default="sgn",
                        help="registered SGN preset whose other defaults are used")
    args = parser.parse_args()
    unknown = [name for name in args.problems.split(",") if name not in PROBLEMS]
    if unknown:
        parser.error(f"unknown problem(s) {', '.join(unknown)}; known: "
                     f"{', '.join(PROBLEMS.names())}")
    seeds = args.seeds
    configs = {}
    for name in args.problems.split(","):
        problem = get_problem(name)
        budget = Budget(max_steps=problem.budget.max_steps // 2)
        for label, overrides in VARIANTS.items():
            for seed in seeds:
                config = plan_run(problem=name, optimizer=args.optimizer,
                                  hyperparameters=overrides, seed=seed, budget=budget)
                configs[config] = (name, label)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        result = run_sweep(list(configs), store=RunStore(directory), executor="process",
                           workers=args.workers, progress=False)
    print(f"{len(configs)} runs, batch 128, half of each problem's budget, 1 thread per run, "
          f"{args.workers} workers: {time.perf_counter() - start:.0f} s wall")
    rows: dict[tuple[str, str], list] = {}
    for planned, record in zip(configs, result.records, strict=True):  # in the same order
        rows.setdefault(configs[planned], []).append(record)
    for (name, label), records in rows.items():
        steps = [r.steps_to_target for r in records]
        damping = [r.history.get("damping", [math.nan])[-1] for r in records]
        statuses = ", ".join(r.status for r in records)
        shown = ", ".join("—" if s is None else str(s) for s in steps)
        print(f"{name:20s} {label:28s} status [{statuses}] steps→target [{shown}] "
              f"median final damping {statistics.median(damping):.3g}")


if __name__ == "__main__":
    main()
