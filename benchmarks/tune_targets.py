"""Set the offline problems' targets from a tuned Adam baseline (as AlgoPerf does).

For each offline problem, Adam runs over a set of learning rates and several seeds with the
problem's full budget (training does not stop at the target; evaluations every
max(eval_every, 50) steps). For each learning rate we take, per seed, the best value of the
target's metric over the evaluations in the first half of the budget; the tuned learning rate is
the one with the best worst-seed value over the whole budget. The target is the tuned rate's
worst-seed value within half the budget, rounded to the loose side: the tuned baseline reaches
it in every seed with half the budget to spare.

The learning rates are Adam's configurations in a study file (``--study``, default
``studies/quick.toml``: the quick study's tuning protocol draws them from Adam's search space),
so the baseline that sets a target is one the study runs, and a study that runs each problem for
half its budget (``[budget] fraction = 0.5``) gives every method the horizon on which the target
was set. ``--lrs`` gives learning rates by hand instead.

    python benchmarks/tune_targets.py [--problems a,b] [--seeds 0,1] > targets.txt
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from sgn_damping_floor import seed_list

from curvebench.harness import run
from curvebench.problems import PROBLEMS
from curvebench.study import load_study

QUICK_STUDY = Path(__file__).resolve().parent.parent / "studies" / "quick.toml"


def study_learning_rates(path: Path) -> list[float]:
    """Adam's learning rates in the study at ``path`` (its tuned configurations)."""
    sweep = next(s for s in load_study(path).sweeps if s.optimizer == "adam")
    return [point.get("lr", 1e-3) for point in sweep.hyperparameter_points()]


def best_value(record, metric: str, direction: str, *, max_step: float = math.inf) -> float:
    values = np.array(record.evaluations[metric], dtype=float)
    steps = np.array(record.evaluations["step"], dtype=float)
    values = values[np.isfinite(values) & (steps <= max_step)]
    if not len(values):
        return math.nan
    return float(values.min() if direction == "min" else values.max())


def rate_list(text: str) -> list[float]:
    """``"0.1,0.3"`` → ``[0.1, 0.3]`` (argparse turns its ``ValueError`` into a usage error)."""
    return [float(value) for value in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", default="")
    parser.add_argument("--seeds", type=seed_list, default="0,1")
    parser.add_argument("--study", type=Path, default=QUICK_STUDY,
                        help="take Adam's learning rates from this study file")
    parser.add_argument("--lrs", type=rate_list,
                        help="comma-separated learning rates (instead of --study)")
    args = parser.parse_args()
    lrs = (args.lrs if args.lrs
           else study_learning_rates(args.study))
    seeds = args.seeds
    names = args.problems.split(",") if args.problems else [
        p.name for p in PROBLEMS if p.offline and p.name != "synthetic-linreg"]
    unknown = [name for name in names if name not in PROBLEMS]
    if unknown:
        parser.error(f"unknown problem(s) {', '.join(unknown)}; known: "
                     f"{', '.join(PROBLEMS.names())}")
    for name in names:
        problem = PROBLEMS.get(name)
        metric, direction = problem.target.metric, problem.target.direction
        results, halves = {}, {}
        half = problem.budget.max_steps / 2
        for lr in lrs:
            records = [run(problem=name, optimizer="adam", hyperparameters={"lr": lr}, seed=seed,
                           stop_at_target=False, eval_every=max(problem.eval_every, 50))
                       for seed in seeds]
            values = [best_value(r, metric, direction) for r in records]
            early = [best_value(r, metric, direction, max_step=half) for r in records]
            worst = max if direction == "min" else min
            results[lr], halves[lr] = worst(values), worst(early)
            print(f"{name} lr={lr:g} per-seed best {metric}: "
                  + ", ".join(f"{v:.4f}" for v in values)
                  + " | within half the budget: " + ", ".join(f"{v:.4f}" for v in early),
                  flush=True)
        pick = (min if direction == "min" else max)(results, key=lambda k: (
            results[k] if math.isfinite(results[k]) else (math.inf if direction == "min"
                                                          else -math.inf)))
        print(f"TARGET {name} {metric} {direction} lr={pick:g} worst-seed best="
              f"{results[pick]:.5f} (within half the budget: {halves[pick]:.5f}) "
              f"budget={problem.budget.max_steps} seeds={seeds}", flush=True)


if __name__ == "__main__":
    main()
