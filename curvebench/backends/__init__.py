"""Backends: what turns a neutral run configuration into tensors, steps and evaluations.

The run loop (:mod:`curvebench.harness`) is framework-neutral: budget, evaluation schedule,
target, divergence, per-step log and record. A backend does everything framework-specific
behind a :class:`Session`: placing the data, building the model from the seed, building the
optimizer as a :class:`~curvebench.stepping.Stepper`, stepping it with a synchronised clock,
evaluating, reading peak memory and describing the environment (versions).

Backends are looked up by name (:func:`get_backend`); their modules are imported on first use,
so importing this package imports neither torch nor jax.
"""

from __future__ import annotations

import importlib
import resource
import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from curvebench.records import RunConfig
    from curvebench.stepping import StepOutcome

__all__ = ["Backend", "Session", "BACKENDS", "DEFAULT_BACKEND", "UnknownBackendError",
           "UnsupportedBackendError", "get_backend", "check_backend", "backend_names",
           "process_peak_rss"]

#: Backend name → module defining ``BACKEND``.
BACKENDS: Mapping[str, str] = {
    "torch": "curvebench.backends.torch",
    "jax": "curvebench.backends.jax",
}
#: The backend of runs that do not name one.
DEFAULT_BACKEND = "torch"


class UnknownBackendError(ValueError):
    """A backend name that does not exist (one-line message listing the known ones)."""


class UnsupportedBackendError(ValueError):
    """An optimizer that has no implementation on the requested backend (one line)."""


class Session(Protocol):
    """One run's model, optimizer and data on a backend (see the module docstring).

    Attributes:
        environment: versions, device, threads, dtype (plain strings and numbers).
        compile_seconds: time spent compiling before training (0 where nothing compiles);
            never part of a step's time.
    """

    environment: dict[str, Any]
    compile_seconds: float

    def step(self) -> StepOutcome:
        """One timed optimizer step on the next mini-batch."""

    def evaluate(self) -> dict[str, float]:
        """``train_loss`` (on at most ``EVAL_TRAIN_EXAMPLES`` examples), ``test_loss``,
        ``test_accuracy`` (NaN for regression) of the current parameters."""

    def notes(self) -> dict[str, Any]:
        """What the optimizer declares about how it ran."""

    def peak_memory_bytes(self) -> int | None:
        """Peak device memory (or the process's high-water RSS on CPU)."""


class Backend(Protocol):
    """A framework the harness can run on."""

    name: str

    def resolve_device(self, device: str) -> str:
        """The canonical device string (``"cpu"``, ``"cuda:0"``), checking it exists.

        Raises:
            DeviceError: unknown or unavailable device (one line).
        """

    def check_buildable(self, config: RunConfig) -> None:
        """Build the run's optimizer on its problem's model once, without running it, so
        out-of-range values only the optimizer knows about are refused before anything runs.

        Raises:
            HyperparameterError: one line.
        """

    def session(self, config: RunConfig, *,
                data_dir: Path | str | None = None) -> AbstractContextManager[Session]:
        """Build the run's data, model and optimizer; settings (threads, precision) hold
        inside the ``with`` block and are restored after it.

        Raises:
            DatasetError, DeviceError, HyperparameterError: nothing can run.
        """


def backend_names() -> list[str]:
    """The known backend names, sorted."""
    return sorted(BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend called ``name``.

    Raises:
        UnknownBackendError: unknown name (the message lists the known ones).
    """
    module = BACKENDS.get(name)
    if module is None:
        raise UnknownBackendError(f"unknown backend {name!r}; known: "
                                  f"{', '.join(backend_names())}")
    return importlib.import_module(module).BACKEND


def check_backend(spec: Any, backend: str) -> None:
    """Refuse an optimizer that is not implemented on ``backend`` (by its ``backends`` flag).

    Raises:
        UnknownBackendError: unknown backend.
        UnsupportedBackendError: the optimizer does not run there.
    """
    if backend not in BACKENDS:
        get_backend(backend)
    supported = tuple(getattr(spec, "backends", (DEFAULT_BACKEND,)))
    if backend not in supported:
        raise UnsupportedBackendError(
            f"optimizer {spec.name!r} does not run on the {backend} backend "
            f"(it runs on: {', '.join(supported)})")


def process_peak_rss() -> int:
    """The process's high-water resident memory in bytes (the whole process, all backends)."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)

