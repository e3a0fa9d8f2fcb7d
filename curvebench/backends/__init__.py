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

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import resource
import sys
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from curvebench.records import RunConfig
    from curvebench.stepping import StepOutcome

__all__ = ["Backend", "Session", "BACKENDS", "DEFAULT_BACKEND", "UnknownBackendError",
           "UnsupportedBackendError", "get_backend", "check_backend", "backend_names",
           "process_peak_rss", "source_fingerprint", "fingerprint_sources", "run_code",
           "check_run_code", "CodeMismatchError"]

#: Backend name → module defining ``BACKEND``.
BACKENDS: Mapping[str, str] = {
    "torch": "curvebench.backends.torch",
    "jax": "curvebench.backends.jax",
}
#: The backend of runs that do not name one.
DEFAULT_BACKEND = "torch"


class UnknownBackendError(ValueError):
    """A backend name that does not exist (one-line message listing the known ones)."""


class CodeMismatchError(ValueError):
    """A run planned by other code than this process runs (one-line message)."""


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
    #: The installed distributions its runs compute with; their versions are part of a run's
    #: identity (:func:`run_code`).
    distributions: tuple[str, ...]

    def resolve_device(self, device: str) -> str:
        """The canonical device string (``"cpu"``, ``"cuda:0"``), checking it exists.

        Raises:
            DeviceError: unknown or unavailable device (one line).
        """

    def use_threads(self, threads: int | None) -> None:
        """Give this process's runs ``threads`` CPU threads (``None``: leave them as they
        are), before the framework starts thread pools it sizes only once.

        Raises:
            ValueError: the framework already computes with another count (one line).
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


#: The packages whose source shapes a run, and inside them the one that only reads records
#: (the report builders), left out.
_RUN_SHAPING_PACKAGES = ("curvebench", "curvebench.problems", "curvebench.optimizers")
_READ_ONLY_PACKAGES = ("curvebench.reports",)


def _package_directory(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, name
    return Path(next(iter(spec.submodule_search_locations))).resolve()


@functools.cache
def source_fingerprint() -> str:
    """16 hex digits of SHA-256 over the Python source that shapes a run: every module of
    :data:`_RUN_SHAPING_PACKAGES` but the report builders (:func:`fingerprint_sources`). Read
    once per process."""
    return fingerprint_sources({name: _package_directory(name) for name in _RUN_SHAPING_PACKAGES},
                               skipped=[_package_directory(name) for name in _READ_ONLY_PACKAGES])


def fingerprint_sources(packages: Mapping[str, Path], *, skipped: Iterable[Path] = ()) -> str:
    """16 hex digits of SHA-256 over the ``*.py`` files under the directories of ``packages``
    (dotted package name → directory), each named by its dotted module name, so that an
    editable install (packages side by side) and a wheel (subpackages nested) of the same
    source agree; files under a ``skipped`` directory are left out."""
    skipped = {Path(path).resolve() for path in skipped}
    modules: dict[str, Path] = {}
    for package, directory in packages.items():
        root = Path(directory).resolve()
        for path in root.rglob("*.py"):
            if not skipped.intersection(path.resolve().parents):
                modules[".".join((package, *path.relative_to(root).with_suffix("").parts))] = path
    digest = hashlib.sha256()
    for module in sorted(modules):
        source = modules[module].read_bytes()
        digest.update(f"{module}\0{len(source)}\0".encode())
        digest.update(source)
    return digest.hexdigest()[:16]


@functools.cache
def _versions(backend: str) -> tuple[tuple[str, str], ...]:
    versions = []
    for distribution in get_backend(backend).distributions:
        try:
            versions.append((distribution, importlib.metadata.version(distribution)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((distribution, "not installed"))
    return tuple(versions)


def run_code(backend: str) -> dict[str, str]:
    """The code a run on ``backend`` runs here: ``{"curvebench": source_fingerprint(),
    <distribution>: <version>, ...}`` for the backend's :attr:`Backend.distributions`.

    Part of a run's identity (``RunConfig.code``): a stored run is reused only by the same
    source and the same framework versions, so a faster or fixed method is measured again
    instead of being reported from its old record.

    Raises:
        UnknownBackendError: unknown backend.
    """
    return {"curvebench": source_fingerprint(), **dict(_versions(backend))}


def check_run_code(config: RunConfig) -> None:
    """Refuse to run ``config`` with other code than it was planned with (a legacy record,
    which does not say, is not checked): its record would be stored under the other code.

    Raises:
        CodeMismatchError: one line naming what differs.
    """
    if config.code is None:
        return
    here = run_code(config.backend or DEFAULT_BACKEND)
    planned = config.code_dict or {}
    differences = [f"{name} {planned.get(name, 'none')} there, {here.get(name, 'none')} here"
                   for name in sorted(set(planned) | set(here))
                   if planned.get(name) != here.get(name)]
    if differences:
        raise CodeMismatchError("this run was planned with other code ("
                                + "; ".join(differences) + "); plan it again here")
