"""The torch backend: data on the run's device, the seeded model, a stepper, evaluation.

A step is timed by :func:`curvebench.stepping.take_step` between two readings of
:func:`~curvebench.timing.synchronized_clock` (CUDA synchronised), with phases charged to a
:class:`~curvebench.timing.PhaseTimer`. TF32 is switched off and the run's torch thread count
set for the session, both restored after it.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from curvebench import stepping
from curvebench.backends import process_peak_rss
from curvebench.batches import ShuffledBatches
from curvebench.environment import environment_info, resolve_device
from curvebench.losses import CurvatureLoss
from curvebench.records import RunConfig
from curvebench.timing import PhaseTimer, synchronized_clock

__all__ = ["BACKEND", "TorchBackend", "TorchSession", "DTYPES", "DeviceData", "device_data",
           "evaluate", "peak_memory"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
_EVAL_CHUNK = 2048


@dataclass(frozen=True)
class DeviceData:
    """A problem's data on the run's device and dtype."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classification: bool


def device_data(problem: Any, *, device: torch.device, dtype: torch.dtype,
                data_dir: Path | str | None = None) -> DeviceData:
    """Load the problem's data once per process and move it to ``device`` in ``dtype``.

    The data set may hold numpy arrays or tensors (``torch.as_tensor`` takes both).

    Raises:
        DatasetError: data missing and not downloadable.
    """
    from curvebench.harness import problem_data

    data = problem_data(problem, data_dir=data_dir)
    classification = problem.make_loss().classification

    def move(values: Any, *, labels: bool) -> torch.Tensor:
        tensor = torch.as_tensor(values)
        if labels and classification:
            return tensor.to(device=device, dtype=torch.long)
        return tensor.to(device=device, dtype=dtype)

    return DeviceData(
        x_train=move(data.x_train, labels=False),
        y_train=move(data.y_train, labels=True),
        x_test=move(data.x_test, labels=False),
        y_test=move(data.y_test, labels=True),
        classification=classification,
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, loss: CurvatureLoss, data: DeviceData) -> dict[str, float]:
    """Train loss (on up to ``EVAL_TRAIN_EXAMPLES`` examples), test loss and accuracy.

    The model is put in eval mode for the evaluation and restored afterwards.
    """
    from curvebench.harness import EVAL_TRAIN_EXAMPLES

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


def peak_memory(device: torch.device) -> int:
    """CUDA max allocated bytes, or the process's high-water RSS on CPU (whole process)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return process_peak_rss()


class TorchSession:
    """A run's torch model, stepper and batches (built by :meth:`TorchBackend.session`)."""

    compile_seconds = 0.0

    def __init__(self, config: RunConfig, *, data_dir: Path | str | None) -> None:
        from curvebench.harness import check_batch_size
        from curvebench.optimizers import get_optimizer
        from curvebench.problems import get_problem

        problem = get_problem(config.problem)
        self.device = resolve_device(config.device)
        dtype = DTYPES[config.dtype]
        self.data = device_data(problem, device=self.device, dtype=dtype, data_dir=data_dir)
        check_batch_size(config, training_examples=len(self.data.x_train))
        torch.manual_seed(config.seed)
        self.model = problem.build_model(seed=config.seed, device=self.device, dtype=dtype)
        self.model.train()
        self.loss = problem.make_loss()
        self.stepper = stepping.build_stepper(get_optimizer(config.optimizer), model=self.model,
                                              loss=self.loss,
                                              hyperparameters=config.hyperparameter_dict,
                                              settings=config.settings_dict)
        self.stepper.phase_timer = PhaseTimer(self.device)
        self.batches = ShuffledBatches(self.data.x_train, self.data.y_train,
                                       batch_size=config.batch_size, seed=config.seed)
        self.clock = functools.partial(synchronized_clock, self.device)
        self.environment = {"backend": "torch", **environment_info(self.device, dtype)}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def step(self) -> stepping.StepOutcome:
        return stepping.take_step(self.stepper, self.batches, clock=self.clock)

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.model, self.loss, self.data)

    def notes(self) -> dict[str, Any]:
        return dict(self.stepper.notes)

    def peak_memory_bytes(self) -> int:
        return peak_memory(self.device)


class TorchBackend:
    """PyTorch (CPU or CUDA)."""

    name = "torch"
    distributions = ("torch", "numpy")

    def resolve_device(self, device: str) -> str:
        return str(resolve_device(device))

    def use_threads(self, threads: int | None) -> None:
        """Nothing to do ahead: torch's threads change at any time, and each session sets its
        run's (:func:`torch_run_settings`)."""

    def check_buildable(self, config: RunConfig) -> None:
        from curvebench.optimizers import get_optimizer
        from curvebench.problems import get_problem

        problem = get_problem(config.problem)
        get_optimizer(config.optimizer).build(model=problem.build_model(seed=0),
                                              loss=problem.make_loss(),
                                              hyperparameters=config.hyperparameter_dict,
                                              settings=config.settings_dict)

    @contextlib.contextmanager
    def session(self, config: RunConfig, *,
                data_dir: Path | str | None = None) -> Iterator[TorchSession]:
        with torch_run_settings(config.threads):
            yield TorchSession(config, data_dir=data_dir)


@contextlib.contextmanager
def torch_run_settings(threads: int | None) -> Iterator[None]:
    """TF32 off and ``threads`` torch threads inside the block; both restored after it."""
    previous_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    previous_threads = torch.get_num_threads()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        if threads is not None:  # the record's thread count is the one that ran
            torch.set_num_threads(threads)
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous_tf32
        if torch.get_num_threads() != previous_threads:
            torch.set_num_threads(previous_threads)


BACKEND = TorchBackend()
