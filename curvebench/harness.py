"""Run one problem × optimizer × hyperparameters × seed and return a :class:`RunRecord`.

The run loop here is framework-neutral: budget, evaluation schedule, target, divergence,
per-step log and record. Everything framework-specific — data placement, the model built from
the seed, the optimizer's step, evaluation, the synchronised clock, peak memory, the
environment — is the backend's (:mod:`curvebench.backends`; ``torch`` by default, ``jax``).
This module imports neither torch nor jax.

The clock: each step (fetching the batch from device memory, forward, backward, curvature work,
update) is timed from a device synchronisation before it to one after it and the durations are
summed, so evaluation, logging, storing and compilation never enter the measured time.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curvebench.backends import (
    DEFAULT_BACKEND,
    Session,
    check_backend,
    check_run_code,
    get_backend,
    run_code,
)
from curvebench.records import DEFAULT_THREADS, RunConfig, RunRecord, Status

if TYPE_CHECKING:
    from curvebench.optimizers import OptimizerSpec
    from curvebench.problems import Budget, ProblemSpec, Target

__all__ = [
    "plan_run",
    "execute",
    "run",
    "run_loop",
    "first_reaching",
    "check_batch_size",
    "problem_data",
    "DTYPE_NAMES",
    "EVAL_TRAIN_EXAMPLES",
    "DIVERGENCE_FACTOR",
    "DEFAULT_THREADS",
    "MAX_SEED",
]

#: Floating-point precisions a run may use.
DTYPE_NAMES = ("float32", "float64")
#: The train loss used for targets is evaluated on at most this many (fixed) training examples.
EVAL_TRAIN_EXAMPLES = 10_000
#: A run has diverged when its batch loss exceeds this multiple of the first batch loss.
DIVERGENCE_FACTOR = 100.0

#: Called after each step with ``(step, loss)``; the harness's progress bars use it.
ProgressCallback = Callable[[int, float], None]

#: Largest run seed: torch's and numpy's generators take it, and seed arithmetic stays in range.
MAX_SEED = 2**32 - 1

#: Torch-backend names kept importable from here (``from curvebench.harness import DTYPES``).
_TORCH_NAMES = ("DTYPES", "DeviceData", "device_data", "evaluate")


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from curvebench.backends import torch as torch_backend

        return getattr(torch_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plan_run(
    *,
    problem: str | ProblemSpec,
    optimizer: str | OptimizerSpec,
    hyperparameters: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
    budget: Budget | None = None,
    batch_size: int | None = None,
    dtype: str = "float32",
    eval_every: int | None = None,
    stop_at_target: bool = True,
    threads: int | None = DEFAULT_THREADS,
    workers_per_machine: int | None = 1,
    backend: str = DEFAULT_BACKEND,
) -> RunConfig:
    """Validate the inputs of a run and return its :class:`RunConfig` (nothing is run).

    ``threads`` is the torch thread count :func:`execute` sets for the run (default
    :data:`DEFAULT_THREADS`); ``workers_per_machine`` the number of runs executed at once on the
    machine (1 for a lone run; sweeps stamp their executor's); ``backend`` the framework it
    runs on (:mod:`curvebench.backends`). All three are part of the identity, and so is the
    code that runs it (:func:`~curvebench.backends.run_code`), stamped here.

    Raises:
        UnknownNameError: unknown problem or optimizer.
        UnknownBackendError: unknown backend.
        UnsupportedBackendError: the optimizer does not run on the backend.
        HyperparameterError: unknown or ill-typed hyperparameter.
        ValueError: non-positive batch size or eval period, unknown dtype, a seed outside
            ``[0, MAX_SEED]``.
    """
    from curvebench.optimizers import OptimizerSpec, get_optimizer
    from curvebench.problems import ProblemSpec, get_problem

    problem_spec = problem if isinstance(problem, ProblemSpec) else get_problem(problem)
    optimizer_spec = optimizer if isinstance(optimizer, OptimizerSpec) else get_optimizer(optimizer)
    check_backend(optimizer_spec, backend)
    resolved = optimizer_spec.resolve(hyperparameters)
    budget = budget or problem_spec.budget
    batch_size = problem_spec.batch_size if batch_size is None else batch_size
    eval_every = problem_spec.eval_every if eval_every is None else eval_every
    if batch_size <= 0:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if eval_every <= 0:
        raise ValueError(f"eval_every must be positive, got {eval_every}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be positive, got {threads}")
    framework = get_backend(backend)
    framework.use_threads(threads)  # before the device check, which may start the framework
    return RunConfig.create(
        problem=problem_spec.name,
        optimizer=optimizer_spec.name,
        hyperparameters=resolved,
        settings=optimizer_spec.settings,
        seed=seed,
        batch_size=batch_size,
        max_steps=budget.max_steps,
        max_seconds=budget.max_seconds,
        device=framework.resolve_device(device),
        dtype=dtype,
        eval_every=eval_every,
        stop_at_target=stop_at_target,
        threads=threads,
        workers_per_machine=workers_per_machine,
        backend=backend,
        code=run_code(backend),
    )


@functools.lru_cache(maxsize=16)
def _registered_dataset(problem: str, data_dir: str | None) -> Any:
    from curvebench.problems import get_problem

    return get_problem(problem).dataset(data_dir=data_dir)


def problem_data(problem: ProblemSpec, *, data_dir: Path | str | None = None) -> Any:
    """The problem's data set as its spec returns it (arrays), loaded once per process for
    registered problems.

    Raises:
        DatasetError: data missing and not downloadable.
    """
    from curvebench.problems import PROBLEMS

    if problem.name in PROBLEMS.names():
        return _registered_dataset(problem.name, str(data_dir) if data_dir is not None else None)
    return problem.dataset(data_dir=data_dir)  # an unregistered spec (tests, plugins)


def check_batch_size(config: RunConfig, *, training_examples: int) -> None:
    """Refuse a batch size larger than the training set (it would silently run full-batch).

    Raises:
        ValueError: one line naming the problem and both sizes.
    """
    if config.batch_size > training_examples:
        raise ValueError(f"batch size {config.batch_size} is larger than the training set of "
                         f"{config.problem!r} ({training_examples} examples)")


def first_reaching(*, steps: Sequence[int], seconds: Sequence[float], values: Sequence[float],
                   target: Target) -> tuple[int, float] | None:
    """The ``(step, seconds)`` of the first evaluation whose value meets ``target``, or None.

    This is the definition of steps- and seconds-to-target: targets are checked only at
    evaluations, so the answer is the first evaluation step at which the held-out (or full
    training-set) metric meets the threshold; NaN never meets it.
    """
    for step, second, value in zip(steps, seconds, values, strict=True):
        if target.is_met(float(value)):
            return int(step), float(second)
    return None


class _Columns:
    """Per-step columns that may gain new keys at any step (earlier rows filled with NaN)."""

    def __init__(self, *names: str) -> None:
        self.rows = 0
        self.data: dict[str, list[float]] = {name: [] for name in names}

    def append(self, values: Mapping[str, float]) -> None:
        data = self.data
        if len(values) == len(data) and all(key in data for key in values):  # common case
            for key, value in values.items():
                data[key].append(float(value))
            self.rows += 1
            return
        for key, value in values.items():
            data.setdefault(key, [math.nan] * self.rows).append(float(value))
        self.rows += 1
        for column in data.values():
            if len(column) < self.rows:
                column.append(math.nan)


def execute(
    config: RunConfig,
    *,
    data_dir: Path | str | None = None,
    progress: ProgressCallback | None = None,
) -> RunRecord:
    """Run ``config`` on its backend and return its record; failures inside training become
    ``status="error"``.

    Raises:
        DatasetError: the problem's data is unavailable (nothing is run).
        DeviceError: the device does not exist.
        HyperparameterError: the optimizer rejects its hyperparameters.
        UnknownBackendError, UnsupportedBackendError: the backend cannot run the optimizer.
        CodeMismatchError: ``config`` was planned with other code (source or libraries).
    """
    from curvebench.optimizers import get_optimizer
    from curvebench.problems import get_problem

    backend = get_backend(config.backend or DEFAULT_BACKEND)
    check_run_code(config)
    optimizer_spec = get_optimizer(config.optimizer)
    check_backend(optimizer_spec, backend.name)
    problem = get_problem(config.problem)
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with backend.session(config, data_dir=data_dir) as session:
        return run_loop(config=config, session=session, target=problem.target,
                        started_at=started_at, progress=progress,
                        optimizer_info=optimizer_spec.describe(),
                        problem_info=problem.describe())


def run_loop(*, config: RunConfig, session: Session, target: Target, started_at: str,
             progress: ProgressCallback | None = None,
             optimizer_info: Mapping[str, Any] | None = None,
             problem_info: Mapping[str, Any] | None = None) -> RunRecord:
    """Train ``session`` under ``config``'s budget and evaluation schedule; return the record.

    Evaluates before the first step, every ``eval_every`` steps and at the end; stops at the
    target (unless ``stop_at_target`` is off), at the budget, or when the loss diverges (a
    non-finite loss, or a batch loss :data:`DIVERGENCE_FACTOR` times the first one). An
    exception inside a step is a result (``status="error"``), not a crash.
    """
    history = _Columns("step", "seconds", "loss")
    evaluations = _Columns("step", "seconds", "train_loss", "test_loss", "test_accuracy")
    phase_totals: dict[str, float] = {}
    counters: dict[str, float] = {}
    status: Status = "budget"
    error: str | None = None
    steps_to_target: int | None = None
    seconds_to_target: float | None = None
    seconds = 0.0
    step = 0
    initial_loss: float | None = None
    max_steps = config.max_steps or sys.maxsize

    def record_evaluation() -> bool:
        nonlocal steps_to_target, seconds_to_target
        metrics = session.evaluate()
        evaluations.append({"step": step, "seconds": seconds, **metrics})
        if steps_to_target is None:
            reached = first_reaching(steps=[step], seconds=[seconds],
                                     values=[metrics[target.metric]], target=target)
            if reached is not None:
                steps_to_target, seconds_to_target = reached
        return all(math.isfinite(v) for k, v in metrics.items() if k.endswith("loss"))

    record_evaluation()
    try:
        while step < max_steps:
            outcome = session.step()
            seconds += outcome.seconds
            step += 1
            loss_value = outcome.loss
            for phase, value in outcome.phases.items():
                phase_totals[phase] = phase_totals.get(phase, 0.0) + value
            row = {"step": step, "seconds": seconds, "loss": loss_value, **outcome.info}
            for name, value in outcome.counters.items():
                counters[name] = counters.get(name, 0.0) + value
                row[f"count_{name}"] = value
            history.append(row)
            if progress is not None:
                progress(step, loss_value)
            if initial_loss is None:
                initial_loss = loss_value
            if not math.isfinite(loss_value) or (
                loss_value > DIVERGENCE_FACTOR * max(abs(initial_loss), 1e-12)
            ):
                status = "diverged"
                break
            last = step >= max_steps or (
                config.max_seconds is not None and seconds >= config.max_seconds
            )
            if step % config.eval_every == 0 or last:
                if not record_evaluation():
                    status = "diverged"
                    break
                if steps_to_target is not None and config.stop_at_target:
                    break
            if last:
                break
    except Exception as exc:  # noqa: BLE001 — a failing optimizer is a result, not a crash
        status = "error"
        error = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
    if status == "budget" and steps_to_target is not None:
        status = "reached"
    last_eval = {k: v[-1] for k, v in evaluations.data.items() if k not in ("step", "seconds")}
    evaluated = evaluations.data.get("step") or [math.nan]
    if evaluated[-1] != step:  # diverged or failed between evaluations: the final values are
        last_eval = dict.fromkeys(last_eval, math.nan)  # unknown, not the last evaluation's
    final = {**last_eval, "minibatch_loss": history.data["loss"][-1] if step else math.nan}
    if session.compile_seconds:  # measured before training, never part of a step's time
        phase_totals["compile"] = session.compile_seconds
    return RunRecord(
        config=config,
        status=status,
        steps_run=step,
        seconds=seconds,
        steps_to_target=steps_to_target,
        seconds_to_target=seconds_to_target,
        target={"metric": target.metric, "value": target.value, "direction": target.direction},
        final=final,
        history=history.data,
        evaluations=evaluations.data,
        counters=counters,
        phase_seconds=phase_totals,
        peak_memory_bytes=session.peak_memory_bytes(),
        environment=session.environment,
        started_at=started_at,
        error=error,
        notes=session.notes(),
        optimizer_info=dict(optimizer_info or {}),
        problem_info=dict(problem_info or {}),
    )


def run(
    *,
    problem: str | ProblemSpec,
    optimizer: str | OptimizerSpec,
    hyperparameters: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
    budget: Budget | None = None,
    batch_size: int | None = None,
    dtype: str = "float32",
    eval_every: int | None = None,
    stop_at_target: bool = True,
    threads: int | None = DEFAULT_THREADS,
    backend: str = DEFAULT_BACKEND,
    data_dir: Path | str | None = None,
    progress: ProgressCallback | None = None,
) -> RunRecord:
    """Plan and execute one run (see :func:`plan_run` and :func:`execute`)."""
    config = plan_run(problem=problem, optimizer=optimizer, hyperparameters=hyperparameters,
                      seed=seed, device=device, budget=budget, batch_size=batch_size,
                      dtype=dtype, eval_every=eval_every, stop_at_target=stop_at_target,
                      threads=threads, backend=backend)
    return execute(config, data_dir=data_dir, progress=progress)
