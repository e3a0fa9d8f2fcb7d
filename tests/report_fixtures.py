"""Synthetic run records for report tests and the report build-time measurement.

The records are made directly (no training), with loss curves ``L(t) = L_0 e^{-r t}`` whose
rate ``r`` peaks at a per-optimizer best learning rate, so sweeps have a clear optimum, some
configurations never reach the target, and a curvature optimizer reports damping, step size and
CG diagnostics.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Sequence

import numpy as np

from curvebench.records import RunConfig, RunRecord

__all__ = ["HOSTILE", "synthetic_records", "synthetic_record"]

#: A name a plugin could register: it must show as text, never as markup.
HOSTILE = "<script>alert(1)</script>"

_ENVIRONMENT = {"python": "3.11.0", "torch": "2.13.0+cpu", "numpy": "2.0.0",
                "curvebench": "0.1.0", "git_sha": "0123456789abcdef", "platform": "Linux",
                "device": "cpu", "device_name": "synthetic CPU", "cuda": None, "threads": 2,
                "dtype": "float32", "tf32_matmul": False, "tf32_cudnn": False}


def synthetic_record(*, problem: str, optimizer: str, hyperparameters: dict, seed: int,
                     batch_size: int = 128, steps: int = 200, eval_every: int = 20,
                     target: float = 0.3, curvature: bool = False,
                     status: str | None = None, stall: bool = False) -> RunRecord:
    """One synthetic run (see the module docstring); with ``stall`` (and ``curvature``), the
    damping falls to the ``damping_min`` hyperparameter after a tenth of the run and stays
    there, and CG stops at a relative residual around 0.75."""
    rng = np.random.default_rng(zlib.crc32(repr((problem, optimizer, seed, batch_size,
                                                 sorted(hyperparameters.items()))).encode()))
    lr = float(hyperparameters.get("lr", 0.1))
    best_lr = 0.3 if curvature else 0.05
    rate = 0.03 * math.exp(-0.5 * (math.log10(lr / best_lr) / 0.4) ** 2)
    rate *= (batch_size / 128) ** 0.5 * (1.0 + 0.2 * rng.standard_normal())
    if curvature:
        rate *= 1.0 + 0.5 / (1.0 + float(hyperparameters.get("damping", 1e-3)) * 10)
    t = np.arange(1, steps + 1, dtype=float)
    loss = 2.3 * np.exp(-max(rate, 1e-4) * t) * np.exp(0.05 * rng.standard_normal(steps)) + 0.05
    seconds = np.cumsum(np.full(steps, (0.004 if curvature else 0.001) * (batch_size / 128))
                        * (1 + 0.1 * rng.random(steps)))
    history: dict[str, list[float]] = {"step": t.tolist(), "seconds": seconds.tolist(),
                                       "loss": loss.tolist(),
                                       "count_forward_passes": [1.0] * steps,
                                       "count_backward_passes": [1.0] * steps}
    phases = {"forward": 0.3 * seconds[-1], "backward": 0.4 * seconds[-1],
              "update": 0.3 * seconds[-1]}
    counters = {"forward_passes": float(steps), "backward_passes": float(steps)}
    if curvature:
        cg = float(hyperparameters.get("cg_iterations", 3))
        history["count_ggn_products"] = [cg] * steps
        history["count_cg_iterations"] = [cg] * steps
        history["damping"] = (float(hyperparameters.get("damping", 1e-3))
                              * np.exp(-t / steps)).tolist()
        history["step_size"] = (0.5 + 0.5 * rng.random(steps)).tolist()
        history["cg_relative_residual"] = (10 ** (-cg / 3) * (1 + rng.random(steps))).tolist()
        if stall:
            floor = float(hyperparameters["damping_min"])
            history["damping"] = np.where(t > steps / 10, floor,
                                          float(hyperparameters["damping"])).tolist()
            history["cg_relative_residual"] = (0.6 + 0.3 * rng.random(steps)).tolist()
        counters.update(ggn_products=cg * steps, cg_iterations=cg * steps)
        phases = {"forward": 0.1 * seconds[-1], "backward": 0.15 * seconds[-1],
                  "curvature": 0.45 * seconds[-1], "solve": 0.2 * seconds[-1],
                  "update": 0.1 * seconds[-1]}
    eval_steps = list(range(0, steps + 1, eval_every))
    train = [2.35 if s == 0 else float(loss[s - 1]) for s in eval_steps]
    reached = next((s for s, v in zip(eval_steps, train, strict=True) if v <= target), None)
    if reached is not None:  # runs stop at the target
        cut = reached
        history = {k: v[:cut] for k, v in history.items()}
        eval_steps = [s for s in eval_steps if s <= cut]
        train = train[:len(eval_steps)]
    evaluations = {"step": [float(s) for s in eval_steps],
                   "seconds": [float(seconds[s - 1]) if s else 0.0 for s in eval_steps],
                   "train_loss": train, "test_loss": [v * 1.1 for v in train],
                   "test_accuracy": [min(0.99, 1.0 - v / 2.5) for v in train]}
    steps_run = len(history["step"])
    run_seconds = float(history["seconds"][-1]) if steps_run else 0.0
    config = RunConfig.create(problem=problem, optimizer=optimizer,
                              hyperparameters=hyperparameters, seed=seed, batch_size=batch_size,
                              max_steps=steps, max_seconds=None, device="cpu")
    return RunRecord(
        config=config, status=status or ("reached" if reached is not None else "budget"),
        steps_run=steps_run, seconds=run_seconds,
        steps_to_target=reached,
        seconds_to_target=run_seconds if reached is not None else None,
        target={"metric": "train_loss", "value": target, "direction": "min"},
        final={"train_loss": train[-1], "test_loss": train[-1] * 1.1,
               "test_accuracy": min(0.99, 1.0 - train[-1] / 2.5),
               "minibatch_loss": float(loss[steps_run - 1]) if steps_run else math.nan},
        history=history, evaluations=evaluations, counters=counters, phase_seconds=phases,
        peak_memory_bytes=1 << 20, environment=dict(_ENVIRONMENT),
        started_at=f"2026-01-01T00:{seed:02d}:00+00:00")


def synthetic_records(*, problems: Sequence[str] = ("synth-mlp", "synth-logreg"),
                      seeds: Sequence[int] = (0, 1, 2),
                      first_order_lrs: Sequence[float] = (0.01, 0.05, 0.2),
                      curvature_lrs: Sequence[float] = (0.1, 0.3, 1.0),
                      dampings: Sequence[float] = (1e-4, 1e-2),
                      cg_iterations: Sequence[int] = (3, 10),
                      batch_sizes: Sequence[int] = (64, 128),
                      hostile: bool = False) -> list[RunRecord]:
    """A small study: a first-order optimizer swept over learning rate and batch size, a
    curvature optimizer over learning rate × damping × CG iterations × batch size."""
    records = []
    first_order = HOSTILE if hostile else "sgd-synth"
    for problem, seed in itertools.product(problems, seeds):
        for lr, batch in itertools.product(first_order_lrs, batch_sizes):
            records.append(synthetic_record(problem=problem, optimizer=first_order,
                                            hyperparameters={"lr": lr, "momentum": 0.9},
                                            seed=seed, batch_size=batch))
        for lr, damping, cg, batch in itertools.product(curvature_lrs, dampings, cg_iterations,
                                                        batch_sizes):
            records.append(synthetic_record(
                problem=problem, optimizer="sgn-synth", seed=seed, batch_size=batch,
                hyperparameters={"lr": lr, "damping": damping, "cg_iterations": cg},
                curvature=True))
    return records
