"""Run one problem × optimizer × hyperparameters × seed and return a :class:`RunRecord`.

The clock: each step (fetching the batch from device memory, forward, backward, curvature work,
update) is timed from a device synchronisation before it to one after it and the durations are
summed, so evaluation, logging and storing never enter the measured time.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import resource
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from curvebench.batches import ShuffledBatches
from curvebench.environment import environment_info, resolve_device
from curvebench.losses import CurvatureLoss
from curvebench.optimizers import CurvatureOptimizer, OptimizerSpec, get_optimizer
from curvebench.problems import Budget, ProblemSpec, Target, get_problem
from curvebench.records import DEFAULT_THREADS, RunConfig, RunRecord, Status
from curvebench.timing import PhaseTimer, synchronized_clock

__all__ = [
    "plan_run",
    "execute",
    "run",
    "evaluate",
    "first_reaching",
    "DeviceData",
    "device_data",
    "DTYPES",
    "EVAL_TRAIN_EXAMPLES",
    "DIVERGENCE_FACTOR",
    "DEFAULT_THREADS",
]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
#: The train loss used for targets is evaluated on at most this many (fixed) training examples.
EVAL_TRAIN_EXAMPLES = 10_000
#: A run has diverged when its batch loss exceeds this multiple of the first batch loss.
DIVERGENCE_FACTOR = 100.0
_EVAL_CHUNK = 2048
#: Work of one first-order step, for the per-step counters.
_FIRST_ORDER_COUNTS = {"forward_passes": 1, "backward_passes": 1}

#: Called after each step with ``(step, loss)``; the harness's progress bars use it.
ProgressCallback = Callable[[int, float], None]


#: Largest run seed: torch's and numpy's generators take it, and seed arithmetic stays in range.
MAX_SEED = 2**32 - 1


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
) -> RunConfig:
    """Validate the inputs of a run and return its :class:`RunConfig` (nothing is run).

    ``threads`` is the torch thread count :func:`execute` sets for the run (default
    :data:`DEFAULT_THREADS`); ``workers_per_machine`` the number of runs executed at once on the
    machine (1 for a lone run; sweeps stamp their executor's). Both are part of the identity.

    Raises:
        UnknownNameError: unknown problem or optimizer.
        HyperparameterError: unknown or ill-typed hyperparameter.
        ValueError: non-positive batch size or eval period, unknown dtype, a seed outside
            ``[0, MAX_SEED]``.
    """
    problem_spec = problem if isinstance(problem, ProblemSpec) else get_problem(problem)
    optimizer_spec = optimizer if isinstance(optimizer, OptimizerSpec) else get_optimizer(optimizer)
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
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be positive, got {threads}")
    return RunConfig.create(
        problem=problem_spec.name,
        optimizer=optimizer_spec.name,
        hyperparameters=resolved,
        settings=optimizer_spec.settings,
        seed=seed,
        batch_size=batch_size,
        max_steps=budget.max_steps,
        max_seconds=budget.max_seconds,
        device=str(resolve_device(device)),
        dtype=dtype,
        eval_every=eval_every,
        stop_at_target=stop_at_target,
        threads=threads,
        workers_per_machine=workers_per_machine,
    )


@dataclass(frozen=True)
class DeviceData:
    """A problem's data on the run's device and dtype."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classification: bool


@functools.lru_cache(maxsize=16)
def _cpu_dataset(problem: str, data_dir: str | None):
    return get_problem(problem).dataset(data_dir=data_dir)


def device_data(problem: ProblemSpec, *, device: torch.device, dtype: torch.dtype,
                data_dir: Path | str | None = None) -> DeviceData:
    """Load the problem's data once per process and move it to ``device`` in ``dtype``.

    Raises:
        DatasetError: data missing and not downloadable.
    """
    key = str(data_dir) if data_dir is not None else None
    if problem.name in _registered_names():
        data = _cpu_dataset(problem.name, key)
    else:  # an unregistered spec (tests, plugins under construction)
        data = problem.dataset(data_dir=data_dir)
    classification = problem.make_loss().classification

    def move(array, *, labels: bool) -> torch.Tensor:
        return torch.as_tensor(array, device=device,
                               dtype=torch.long if labels and classification else dtype)

    return DeviceData(
        x_train=move(data.x_train, labels=False),
        y_train=move(data.y_train, labels=True),
        x_test=move(data.x_test, labels=False),
        y_test=move(data.y_test, labels=True),
        classification=classification,
    )


def check_batch_size(config: RunConfig, *, training_examples: int) -> None:
    """Refuse a batch size larger than the training set (it would silently run full-batch).

    Raises:
        ValueError: one line naming the problem and both sizes.
    """
    if config.batch_size > training_examples:
        raise ValueError(f"batch size {config.batch_size} is larger than the training set of "
                         f"{config.problem!r} ({training_examples} examples)")


def _registered_names() -> list[str]:
    from curvebench.problems import PROBLEMS

    return PROBLEMS.names()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loss: CurvatureLoss, data: DeviceData) -> dict[str, float]:
    """Train loss (on up to :data:`EVAL_TRAIN_EXAMPLES` examples), test loss and accuracy.

    The model is put in eval mode for the evaluation and restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        train_loss, _ = _mean_loss(model, loss, data.x_train[:EVAL_TRAIN_EXAMPLES],
                                   data.y_train[:EVAL_TRAIN_EXAMPLES], accuracy=False)
        test_loss, test_accuracy = _mean_loss(model, loss, data.x_test, data.y_test,
                                              accuracy=data.classification)
    finally:
        model.train(was_training)
    return {"train_loss": train_loss, "test_loss": test_loss, "test_accuracy": test_accuracy}


def _mean_loss(model, loss, inputs, targets, *, accuracy: bool) -> tuple[float, float]:
    total = torch.zeros((), dtype=torch.float64, device=inputs.device)
    correct = torch.zeros((), dtype=torch.float64, device=inputs.device)
    count = len(inputs)
    for start in range(0, count, _EVAL_CHUNK):
        x, y = inputs[start : start + _EVAL_CHUNK], targets[start : start + _EVAL_CHUNK]
        output = model(x)
        total += loss(output, y).double() * len(x)
        if accuracy:
            correct += (output.argmax(dim=1) == y).sum()
    mean = (total / max(count, 1)).item()
    return mean, (correct / max(count, 1)).item() if accuracy else math.nan


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
    """Run ``config`` and return its record; failures inside training become ``status="error"``.

    Raises:
        DatasetError: the problem's data is unavailable (nothing is run).
        DeviceError: the device does not exist.
        HyperparameterError: the optimizer rejects its hyperparameters.
    """
    problem = get_problem(config.problem)
    optimizer_spec = get_optimizer(config.optimizer)
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    data = device_data(problem, device=device, dtype=dtype, data_dir=data_dir)
    check_batch_size(config, training_examples=len(data.x_train))
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    previous_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    previous_threads = torch.get_num_threads()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        if config.threads is not None:  # the record's thread count is the one that ran
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        model = problem.build_model(seed=config.seed, device=device, dtype=dtype)
        model.train()
        loss_fn = problem.make_loss()
        optimizer = optimizer_spec.build(model=model, loss=loss_fn,
                                         hyperparameters=config.hyperparameter_dict)
        environment = environment_info(device, dtype)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        return _train(config, problem, optimizer_spec, model, loss_fn, optimizer, data, device,
                      environment, started_at, progress)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous_tf32
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)


def _train(config, problem, optimizer_spec, model, loss_fn, optimizer, data, device,
           environment, started_at, progress) -> RunRecord:
    curvature = isinstance(optimizer, CurvatureOptimizer)
    if optimizer_spec.needs_curvature and not curvature:
        raise TypeError(f"optimizer {optimizer_spec.name!r} needs curvature but its factory "
                        "did not return a CurvatureOptimizer")
    timer = PhaseTimer(device)
    if curvature:
        optimizer.phase_timer = timer
    batches = ShuffledBatches(data.x_train, data.y_train, batch_size=config.batch_size,
                              seed=config.seed)
    target = problem.target
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
        metrics = evaluate(model, loss_fn, data)
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
            start = synchronized_clock(device)
            inputs, targets = next(batches)
            if curvature:
                loss = optimizer.step(inputs=inputs, targets=targets)
            else:
                timer.start_laps()
                loss = loss_fn(model(inputs), targets)
                timer.lap("forward")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                timer.lap("backward")
                optimizer.step()
                timer.lap("update")
            seconds += synchronized_clock(device) - start
            step += 1
            loss_value = float(loss.detach())
            for phase, value in timer.collect().items():
                phase_totals[phase] = phase_totals.get(phase, 0.0) + value
            if curvature:
                step_counters = dict(optimizer.counters)
                optimizer.counters.clear()
                info = dict(optimizer.step_info)
            else:
                step_counters = _FIRST_ORDER_COUNTS
                info = {}
            row = {"step": step, "seconds": seconds, "loss": loss_value, **info}
            for name, value in step_counters.items():
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
        peak_memory_bytes=_peak_memory(device),
        environment=environment,
        started_at=started_at,
        error=error,
        notes=dict(getattr(optimizer, "run_notes", {}) or {}),
        optimizer_info=optimizer_spec.describe(),
        problem_info=problem.describe(),
    )


def _peak_memory(device: torch.device) -> int:
    """CUDA max allocated bytes, or the process's high-water RSS on CPU (whole process)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)


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
    data_dir: Path | str | None = None,
    progress: ProgressCallback | None = None,
) -> RunRecord:
    """Plan and execute one run (see :func:`plan_run` and :func:`execute`)."""
    config = plan_run(problem=problem, optimizer=optimizer, hyperparameters=hyperparameters,
                      seed=seed, device=device, budget=budget, batch_size=batch_size,
                      dtype=dtype, eval_every=eval_every, stop_at_target=stop_at_target,
                      threads=threads)
    return execute(config, data_dir=data_dir, progress=progress)
