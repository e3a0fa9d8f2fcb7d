"""Costs of the K-FAC family relative to SGD, measured in one process (ratios, medians).

Prints, for ``digits-mlp``, ``digits-cnn``, ``mnist1d-cnn`` (registered problems, their default
batch size) and an MLP 784-256-256-10 at batch 512 (random data):

* amortised step time of every K-FAC preset at its default update periods ÷ SGD step time;
* factor-update time ÷ gradient (forward + backward) time;
* optimizer state memory ÷ parameter memory: every tensor the optimizer keeps in its state,
  factors, decompositions and the cached damped inverses included (they live in the state);

and the time of one damped decomposition (``eigh`` and ``cholesky``, float32) against the
layer width. Presets come from the optimizer registry (every spec whose optimizer is a
:class:`~curvebench.optimizers.kfac.KFAC`); a preset that does not support convolutions is
skipped on CNNs. Timings (process CPU time) interleave SGD and the presets and report the
median over ``--repeats`` rounds, so load from other processes affects both sides alike.

With ``--time-to-target`` it instead reports, on ``digits-mlp`` and ``digits-autoencoder`` at
full batch, the steps and seconds to the registered target of every preset at its defaults
against Adam over a small learning-rate grid (through :func:`curvebench.harness.run`).

Usage: ``python benchmarks/kfac_costs.py [--repeats 5] [--cycles 2] [--hp KEY=VALUE ...]`` or
``python benchmarks/kfac_costs.py --time-to-target [--max-steps 1500]``
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import statistics
import time
from collections.abc import Callable

import torch
from kfac_peers import Workload, tensor_bytes
from torch import nn

from curvebench.environment import device_description
from curvebench.kronecker import kronecker_layers
from curvebench.losses import CrossEntropyLoss
from curvebench.optimizers import OPTIMIZERS
from curvebench.optimizers.kfac import KFAC, damped_decomposition
from curvebench.problems import get_problem, models
from curvebench.problems.torch_models import build_torch_model, torch_dataset
from curvebench.spaces import HyperparameterError
from curvebench.timing import PhaseTimer


def workloads() -> list[Workload]:
    result = []
    for name in ("digits-mlp", "digits-cnn", "mnist1d-cnn"):
        problem = get_problem(name)
        data = torch_dataset(problem.dataset())
        batch = problem.batch_size
        result.append(Workload(name, problem.build_model(seed=0), problem.make_loss(),
                               data.x_train[:batch], data.y_train[:batch].long()))
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    result.append(Workload("mlp-784-256-256-10@512",
                           build_torch_model(models.mlp([784, 256, 256, 10]), seed=None),
                           CrossEntropyLoss(), torch.randn(512, 784, generator=generator),
                           torch.randint(0, 10, (512,), generator=generator)))
    return result


def presets() -> list[str]:
    probe = nn.Sequential(nn.Linear(2, 2))
    return [spec.name for spec in OPTIMIZERS
            if spec.needs_curvature and "torch" in spec.backends
            and isinstance(spec.build(model=probe, loss=CrossEntropyLoss()), KFAC)]


def _has_conv(model: nn.Module) -> bool:
    return any(not isinstance(m, nn.Linear) for _, m in kronecker_layers(model))


def _timed(fn: Callable[[], None], steps: int) -> float:
    start = time.process_time()
    for _ in range(steps):
        fn()
    return (time.process_time() - start) / steps


def measure(workload: Workload, names: list[str], *, repeats: int, cycles: int,
            overrides: dict[str, str]) -> list[dict]:
    base = workload.model
    sgd_model = _clone(base)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=1e-3, momentum=0.9)

    def sgd_step() -> None:
        sgd.zero_grad(set_to_none=True)
        workload.loss(sgd_model(workload.inputs), workload.targets).backward()
        sgd.step()

    def gradient() -> None:
        sgd.zero_grad(set_to_none=True)
        workload.loss(sgd_model(workload.inputs), workload.targets).backward()

    optimizers = {}
    for name in names:
        spec = OPTIMIZERS.get(name)
        if _has_conv(base) and not spec.supports_conv:
            continue
        model = _clone(base)
        optimizer = spec.build(model=model, loss=workload.loss,
                               hyperparameters={**overrides, "lr": 1e-4})  # timing only
        optimizer.phase_timer = PhaseTimer("cpu")
        optimizers[name] = optimizer

    def kfac_step(optimizer: KFAC) -> Callable[[], None]:
        return lambda: optimizer.step(inputs=workload.inputs, targets=workload.targets)

    period = {name: _lcm(opt.cov_update_period, opt.inv_update_period)
              for name, opt in optimizers.items()}
    for name, optimizer in optimizers.items():  # warm up (first factors and inverses)
        _timed(kfac_step(optimizer), period[name])
        optimizer.phase_timer.collect()
    _timed(sgd_step, 5)

    ratios: dict[str, list[float]] = {name: [] for name in optimizers}
    factor_ratios: dict[str, list[float]] = {name: [] for name in optimizers}
    sgd_times, grad_times = [], []
    for _ in range(repeats):
        sgd_time = _timed(sgd_step, max([10, *period.values()]))
        grad_time = _timed(gradient, 10)
        sgd_times.append(sgd_time)
        grad_times.append(grad_time)
        for name, optimizer in optimizers.items():
            steps = cycles * period[name]
            optimizer.counters.clear()
            step_time = _timed(kfac_step(optimizer), steps)
            phases = optimizer.phase_timer.collect()
            updates = max(optimizer.counters["factor_updates"], 1)
            ratios[name].append(step_time / sgd_time)
            factor_ratios[name].append(phases.get("curvature", 0.0) / updates / grad_time)
    parameter_bytes = sum(tensor_bytes(p) for p in base.parameters())
    rows = []
    for name, optimizer in optimizers.items():
        state = sum(tensor_bytes(s) for s in optimizer.state.values())
        rows.append({
            "workload": workload.name, "preset": name,
            "step / sgd step": statistics.median(ratios[name]),
            "factor update / gradient": statistics.median(factor_ratios[name]),
            "state / params": state / parameter_bytes,
            "T_cov/T_inv": f"{optimizer.cov_update_period}/{optimizer.inv_update_period}",
            "sgd step ms": 1e3 * statistics.median(sgd_times),
        })
    return rows


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def _clone(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def inversion_times(widths: list[int], *, repeats: int) -> list[dict]:
    rows = []
    generator = torch.Generator().manual_seed(0)
    for width in widths:
        x = torch.randn(4 * width, width, generator=generator)
        matrix = x.T @ x / (4 * width)
        row: dict[str, float | int] = {"width": width}
        for method in ("eigh", "cholesky"):
            shift = 0.0 if method == "eigh" else 1e-3
            decompose = functools.partial(damped_decomposition, matrix, shift=shift,
                                          method=method)
            times = [_timed(decompose, 3) for _ in range(repeats)]
            row[f"{method} ms"] = 1e3 * statistics.median(times)
        rows.append(row)
    return rows


def time_to_target(names: list[str], *, adam_grid: list[float], max_steps: int) -> list[dict]:
    """Steps and seconds to the registered target, full batch, presets at defaults vs Adam.

    Adam is tuned over ``adam_grid`` (learning rates); the best run by seconds is reported
    together with the whole grid.
    """
    from curvebench.harness import run
    from curvebench.problems import Budget

    rows = []
    for problem in ("digits-mlp", "digits-autoencoder"):
        spec = get_problem(problem)
        batch = len(spec.dataset().x_train)
        runs: list[tuple[str, dict]] = [(name, {}) for name in names]
        runs += [("adam", {"lr": lr}) for lr in adam_grid]
        for name, hyperparameters in runs:
            record = run(problem=problem, optimizer=name, hyperparameters=hyperparameters,
                         batch_size=batch, budget=Budget(max_steps=max_steps), eval_every=10)
            rows.append({
                "problem": problem, "optimizer": name,
                "hyperparameters": ",".join(f"{k}={v}" for k, v in hyperparameters.items())
                or "defaults",
                "status": record.status, "steps to target": record.steps_to_target,
                "seconds to target": record.seconds_to_target,
                "seconds per step": record.seconds / max(record.steps_run, 1),
                "target": f"{spec.target.metric} {spec.target.direction} {spec.target.value}",
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=2,
                        help="inverse-update cycles per timed block")
    parser.add_argument("--time-to-target", action="store_true",
                        help="instead: steps/seconds to target of each preset vs tuned Adam "
                             "on digits-mlp and digits-autoencoder, full batch")
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset hyperparameter for the cost measurement "
                             "(e.g. --hp inverse_method=cholesky --hp cov_update_period=10)")
    args = parser.parse_args()
    from tabulate import tabulate

    torch.manual_seed(0)
    names = presets()
    malformed = [item for item in args.hp if "=" not in item]
    if malformed:
        parser.error(f"--hp takes KEY=VALUE, got {', '.join(map(repr, malformed))}")
    overrides = dict(item.split("=", 1) for item in args.hp)
    if args.time_to_target:
        rows = time_to_target(names, adam_grid=[1e-3, 3e-3, 1e-2, 3e-2],
                              max_steps=args.max_steps)
        print(tabulate(rows, headers="keys", floatfmt=".3g"))
        return
    rows = []
    try:  # every preset is built with the overrides before anything is timed
        for workload in workloads():
            rows += measure(workload, names, repeats=args.repeats, cycles=args.cycles,
                            overrides=overrides)
    except HyperparameterError as error:
        parser.error(str(error))
    cpu = device_description(torch.device("cpu"))
    print(f"torch {torch.__version__} on {cpu}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved rounds")
    print(tabulate(rows, headers="keys", floatfmt=".2f"))
    print()
    print("Damped decomposition of one factor (float32):")
    print(tabulate(inversion_times([64, 128, 256, 512, 1024], repeats=args.repeats),
                   headers="keys", floatfmt=".2f"))


if __name__ == "__main__":
    main()
