"""What the benchmarks run: parameter lists from the registries and one step built like the harness.

Which problems each family of benchmarks covers is decided by problem tags, never by names:

* step-level benchmarks (one step, one gradient, one GGN-vector product, memory, state size)
  cover every problem tagged :data:`STEP_TAGS`;
* training runs to the target (steps, seconds, final loss) cover problems carrying all of
  :data:`TRAINING_TAGS`, the cheapest ones, so the whole suite stays minutes on two CPU cores;
* the robustness sample covers problems carrying all of :data:`ROBUSTNESS_TAGS`.

Every optimizer in :data:`curvebench.optimizers.OPTIMIZERS` is benchmarked; capability flags
(``supports_conv``) mark the combinations that cannot exist, which the benchmarks' ``setup``
turns into ``NotImplementedError`` (shown by asv as n/a).
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import sys
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from curvebench import stepping
from curvebench.batches import ShuffledBatches
from curvebench.harness import DTYPES, DeviceData, device_data
from curvebench.losses import CurvatureLoss
from curvebench.optimizers import (
    OPTIMIZERS,
    HyperparameterError,
    OptimizerSpec,
    get_optimizer,
)
from curvebench.problems import PROBLEMS, Budget, ProblemSpec, get_problem
from curvebench.stepping import Stepper, build_stepper
from curvebench.timing import PhaseTimer, synchronized_clock

__all__ = [
    "SEED",
    "STEP_TAGS",
    "TRAINING_TAGS",
    "ROBUSTNESS_TAGS",
    "ROBUSTNESS_SAMPLES",
    "ModelBatch",
    "StepWorkload",
    "problem_names",
    "optimizer_names",
    "unsupported_reason",
    "build_model_batch",
    "build_step_workload",
    "unsupported_model_errors",
    "state_bytes",
    "hyperparameter_sample",
    "MAX_STEPS_VARIABLE",
    "training_budget",
    "nan_if_none",
    "prepare_benchmark_process",
    "warm_step_workload",
    "warm_model_batch",
    "THREADS",
]

#: Seed of every model initialisation, batch order and hyperparameter sample in the suite.
SEED = 0
#: Problems the step-level benchmarks cover: those carrying all of these tags.
STEP_TAGS = frozenset({"suite"})
#: Problems trained to their target (steps, seconds, final loss): the cheapest suite problems.
TRAINING_TAGS = frozenset({"suite", "convex"})
#: Problems of the robustness sample (one run per sampled hyperparameter setting).
ROBUSTNESS_TAGS = frozenset({"suite", "convex", "regression"})
#: Hyperparameter settings drawn per optimizer for the robustness track.
ROBUSTNESS_SAMPLES = 4
#: torch threads in benchmark processes. One: on a shared two-core machine a two-thread pool
#: makes every parallel operation wait for a descheduled peer (a 0.15 ms step measured 30 ms).
THREADS = 1
#: Environment variable that caps the step budget of training runs (smoke runs and tests only;
#: results of a capped run are not comparable with full ones).
MAX_STEPS_VARIABLE = "CURVEBENCH_SUITE_MAX_STEPS"


def problem_names(tags: frozenset[str]) -> list[str]:
    """Registered problems carrying every tag in ``tags``, sorted by name."""
    return [p.name for p in PROBLEMS if tags <= p.tags]


def optimizer_names() -> list[str]:
    """Every registered optimizer, sorted by name."""
    return OPTIMIZERS.names()


def unsupported_reason(problem: ProblemSpec, optimizer: OptimizerSpec) -> str | None:
    """Why ``optimizer`` cannot run on ``problem`` according to its capability flags, or None."""
    reason = optimizer.unsupported_reason(tags=problem.tags,
                                          num_parameters=problem.num_parameters)
    return None if reason is None else f"{optimizer.name}: {reason} ({problem.name})"


@dataclass
class ModelBatch:
    """A problem's model, loss and first training mini-batch, built as the harness builds them.

    Same seeding, dtype, data placement and batch order as :func:`curvebench.harness.execute`,
    so a step or a curvature product here is one of a harness run.
    """

    problem: ProblemSpec
    data: DeviceData
    model: nn.Module
    loss: CurvatureLoss
    inputs: torch.Tensor
    targets: torch.Tensor

    def gradient(self) -> torch.Tensor:
        """Forward and backward pass on the batch (as a first-order step does); returns the loss."""
        for parameter in self.model.parameters():
            parameter.grad = None
        value = self.loss(self.model(self.inputs), self.targets)
        value.backward()
        return value.detach()


@dataclass
class StepWorkload:
    """A :class:`ModelBatch`'s model, an optimizer on it and the run's mini-batch stream."""

    batch: ModelBatch
    optimizer_spec: OptimizerSpec
    optimizer: Stepper
    batches: ShuffledBatches
    phase_timer: PhaseTimer
    clock: Callable[[], float]

    def step(self) -> float:
        """One step as the harness takes it (:func:`curvebench.stepping.take_step`): fetch the
        next mini-batch, forward, backward, curvature work, update. Returns the batch loss."""
        return stepping.take_step(self.optimizer, self.batches, clock=self.clock).loss


def build_model_batch(problem: str, *, device: str = "cpu",
                      dtype: str = "float32") -> ModelBatch:
    """Build the problem's model from seed :data:`SEED` and draw its first mini-batch.

    Raises:
        UnknownNameError: unknown problem.
    """
    problem_spec = get_problem(problem)
    torch_device = torch.device(device)
    data = device_data(problem_spec, device=torch_device, dtype=DTYPES[dtype])
    torch.manual_seed(SEED)
    model = problem_spec.build_model(seed=SEED, device=torch_device, dtype=DTYPES[dtype])
    model.train()
    batches = ShuffledBatches(data.x_train, data.y_train, batch_size=problem_spec.batch_size,
                              seed=SEED)
    inputs, targets = next(batches)
    return ModelBatch(problem=problem_spec, data=data, model=model, loss=problem_spec.make_loss(),
                      inputs=inputs, targets=targets)


def build_step_workload(problem: str, optimizer: str, *,
                        hyperparameters: Mapping[str, Any] | None = None,
                        device: str = "cpu", dtype: str = "float32") -> StepWorkload:
    """Build problem × optimizer as the harness does (seed :data:`SEED`, first mini-batch).

    Raises:
        NotImplementedError: the combination cannot exist — ruled out by the optimizer's
            capability flags or refused by the optimizer for this model (asv shows n/a).
        UnknownNameError: unknown problem or optimizer.
        HyperparameterError: the optimizer rejects ``hyperparameters``.
    """
    optimizer_spec = get_optimizer(optimizer)
    reason = unsupported_reason(get_problem(problem), optimizer_spec)
    if reason is not None:
        raise NotImplementedError(reason)
    batch = build_model_batch(problem, device=device, dtype=dtype)
    try:
        stepper = build_stepper(optimizer_spec, model=batch.model, loss=batch.loss,
                                hyperparameters=hyperparameters)
    except HyperparameterError as error:
        if isinstance(error.__cause__, unsupported_model_errors()):
            raise NotImplementedError(str(error)) from error
        raise
    device = batch.inputs.device
    stepper.phase_timer = PhaseTimer(device)
    batches = ShuffledBatches(batch.data.x_train, batch.data.y_train,
                              batch_size=batch.problem.batch_size, seed=SEED)
    return StepWorkload(batch=batch, optimizer_spec=optimizer_spec, optimizer=stepper,
                        batches=batches, phase_timer=stepper.phase_timer,
                        clock=functools.partial(synchronized_clock, device))


def unsupported_model_errors() -> tuple[type[Exception], ...]:
    """The exception types optimizers raise for a model they cannot handle.

    They live in the curvature modules, which older commits (benchmarked by ``asv continuous``)
    may lack, so they are looked up rather than imported.
    """
    found: list[type[Exception]] = []
    for module_name in ("curvebench.curvature", "curvebench.kronecker"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        error = getattr(module, "UnsupportedModelError", None)
        if isinstance(error, type) and issubclass(error, Exception):
            found.append(error)
    return tuple(found)


def state_bytes(optimizer: Stepper | torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's ``state_dict()`` (momentum, factors, ...).

    Parameters are not counted (``state_dict`` holds their indices, not the tensors).
    """
    total = 0
    stack: list[Any] = [optimizer.state_dict()["state"]]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total


def hyperparameter_sample(optimizer: str, *, n: int) -> list[dict[str, Any]]:
    """``n`` settings drawn uniformly from the optimizer's search space (defaults elsewhere).

    The draw is seeded from :data:`SEED` and the optimizer's name, so it is the same on every
    machine and commit, and adding an optimizer leaves the others' samples unchanged.
    """
    spec = get_optimizer(optimizer)
    rng = np.random.default_rng([SEED, zlib.crc32(spec.name.encode())])
    names = sorted(spec.search_space)
    draws = rng.random((n, len(names)))
    return [{name: spec.search_space[name].from_unit(float(u)) for name, u in zip(names, row,
                                                                                   strict=True)}
            for row in draws]


def training_budget(problem: ProblemSpec) -> Budget:
    """The problem's own budget, capped at ``$CURVEBENCH_SUITE_MAX_STEPS`` steps when it is set.

    Raises:
        ValueError: the variable is set but not a positive integer.
    """
    cap = os.environ.get(MAX_STEPS_VARIABLE, "").strip()
    if not cap:
        return problem.budget
    if not cap.isdigit() or int(cap) <= 0:
        raise ValueError(f"{MAX_STEPS_VARIABLE} must be a positive integer, got {cap!r}")
    steps = int(cap) if problem.budget.max_steps is None else min(int(cap),
                                                                   problem.budget.max_steps)
    return Budget(max_steps=steps, max_seconds=problem.budget.max_seconds)


@functools.cache
def warm_step_workload(problem: str, optimizer: str, *, warmup_steps: int) -> StepWorkload:
    """:func:`build_step_workload` after ``warmup_steps`` steps, built once per process.

    asv runs ``setup`` again before every timed sample; with this cache the model stays warm
    (state allocated, caches filled) and setup costs nothing after the first sample.
    """
    workload = build_step_workload(problem, optimizer)
    for _ in range(warmup_steps):
        workload.step()
    return workload


@functools.cache
def warm_model_batch(problem: str) -> ModelBatch:
    """:func:`build_model_batch` after one gradient, built once per process (see above)."""
    batch = build_model_batch(problem)
    batch.gradient()
    return batch


def prepare_benchmark_process() -> None:
    """Set :data:`THREADS` and load the data of every step-level problem, single-threaded.

    asv (``launch_method: forkserver``) imports the suite once and forks one process per
    benchmark; loading the data before the fork saves each of them seconds. No OpenMP thread
    pool may exist at the fork (a child forked from a process whose pool has started hangs in
    its first parallel operation), which one thread guarantees.
    """
    torch.set_num_threads(THREADS)
    for name in problem_names(STEP_TAGS):
        problem = get_problem(name)
        if problem.offline:  # file data sets load (or fail) in their own benchmark's setup
            device_data(problem, device=torch.device("cpu"), dtype=DTYPES["float32"])


def nan_if_none(value: float | None) -> float:
    """``value`` as a float, NaN when it does not exist (a target that was never reached)."""
    return math.nan if value is None else float(value)


if "asv_runner" in sys.modules:  # imported by asv's benchmark server, before the suite
    prepare_benchmark_process()
