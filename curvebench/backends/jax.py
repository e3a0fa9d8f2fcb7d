"""The JAX backend: the problem's data as JAX arrays, the compiled model, a JAX stepper.

Built from :mod:`curvebench.jax_backend`: the model is the problem's neutral declaration
compiled to a pure ``apply``, with the initial weights of the seed
(:func:`~curvebench.jax_backend.models.initial_params`, the torch backend loads the same ones);
the optimizer comes from
:func:`~curvebench.jax_backend.optimizers.build_jax_optimizer`. The mini-batches are the torch
backend's: the same seeded permutation (:class:`~curvebench.batches.ShuffledBatches` over the
example indices) gathers the same examples from the device arrays.

Timing: the step is compiled ahead of time on the first batch's shape before training, and
that time is the record's ``compile_seconds`` (``phase_seconds["compile"]``), never part of a
step's time. The clock waits on the parameters (``block_until_ready``) before reading the time.
Evaluation is a jit-compiled apply with the loss and accuracy, on the same examples as the
torch backend's. ``float64`` runs enable JAX's 64-bit mode for the session only.

Threads: a run's ``threads`` sizes XLA's CPU thread pool (:meth:`JaxBackend.use_threads`), as
it sets torch's threads on the torch backend. XLA sizes that pool once, when JAX starts its
CPU client, from the environment variable ``NPROC`` (else from the cores the process may run
on), so a process computes with one count: a run asking for another one after JAX started is
refused with a one-line error. ``XLA_FLAGS``' ``--xla_cpu_multi_thread_eigen=false`` does not
do it: XLA still runs independent operations on other threads of that pool. Measured (2
cores, the MLP 784-256-256-10 at batch 512, SGN with 3 CG iterations): with that flag alone
a step kept 1.7 cores busy (34 ms of process time in 20 ms); with one thread, 26.5 ms in
26.4 ms, against torch's one-thread 22.5 ms.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from curvebench import stepping
from curvebench.records import RunConfig

__all__ = ["BACKEND", "JaxBackend", "JaxSession", "jax_versions", "xla_cpu_threads"]

_EVAL_CHUNK = 2048
_DTYPES = {"float32": np.float32, "float64": np.float64}


def jax_versions() -> dict[str, str | None]:
    """Installed versions of jax, jaxlib, optax and kfac-jax (``None``: not installed)."""
    versions: dict[str, str | None] = {}
    for name in ("jax", "jaxlib", "optax", "kfac-jax"):
        try:
            versions[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name.replace("-", "_")] = None
    return versions


#: XLA's CPU thread count once JAX has started its CPU client (``"cpu"``), as
#: :func:`xla_cpu_threads` found it.
_STARTED: dict[str, int] = {}


def xla_cpu_threads() -> int | None:
    """The threads of XLA's CPU pool in this process, or ``None`` before JAX starts it.

    XLA reads ``NPROC`` once, when the CPU client starts (a non-negative integer; otherwise it
    takes the cores the process may run on): the count is that value, read the first time
    this finds the client started.
    """
    if "cpu" not in _STARTED:
        try:  # JAX has no public "has the client started?"; jax is pinned where it has this
            from jax._src.xla_bridge import backends_are_initialized
        except ImportError:
            return None  # unknown: NPROC is still set first, as before a start
        if not backends_are_initialized():
            return None
        value = os.environ.get("NPROC", "").strip()
        _STARTED["cpu"] = (max(0, int(value)) if value.lstrip("-").isdigit()
                           else len(os.sched_getaffinity(0)))
    return _STARTED["cpu"]


def _device(name: str) -> Any:
    from curvebench.environment import DeviceError

    kind, _, index = name.partition(":")
    platform = {"cpu": "cpu", "cuda": "gpu"}.get(kind)
    if platform is None or (index and not index.isdigit()):
        raise DeviceError(f"unknown device {name!r}; use 'cpu' or 'cuda[:index]'")
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        raise DeviceError(f"{kind} was requested but JAX sees no {platform} device here "
                          f"(jax {jax.__version__})") from None
    position = int(index or 0)
    if position >= len(devices):
        raise DeviceError(f"no {kind} device {position}; {len(devices)} visible to JAX")
    return devices[position]


@jax.jit
def _take(x: jax.Array, y: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array]:
    return x[index], y[index]


class _Batches:
    """The torch backend's mini-batches (same seeded permutation), gathered on the device."""

    def __init__(self, x: jax.Array, y: jax.Array, *, batch_size: int, seed: int) -> None:
        import torch

        from curvebench.batches import ShuffledBatches

        index = torch.arange(x.shape[0])
        self._indices = ShuffledBatches(index, index, batch_size=batch_size, seed=seed)
        self.x, self.y = x, y
        if not self._indices.full_batch:  # compile the gather now, not in the first step
            warm = self._gather(torch.zeros(self._indices.batch_size, dtype=torch.long))
            jax.block_until_ready(warm)

    def _gather(self, index: Any) -> tuple[jax.Array, jax.Array]:
        return _take(self.x, self.y, jnp.asarray(index.numpy()))

    def __iter__(self) -> Iterator[tuple[jax.Array, jax.Array]]:
        return self

    def __next__(self) -> tuple[jax.Array, jax.Array]:
        if self._indices.full_batch:
            return self.x, self.y
        index, _ = next(self._indices)
        return self._gather(index)


class JaxSession:
    """A run's compiled model, JAX stepper and batches (built by :meth:`JaxBackend.session`)."""

    def __init__(self, config: RunConfig, *, data_dir: Path | str | None) -> None:
        import torch

        from curvebench.harness import check_batch_size, problem_data
        from curvebench.jax_backend.losses import jax_loss_by_name
        from curvebench.jax_backend.models import compile_architecture, initial_params
        from curvebench.jax_backend.optimizers import build_jax_optimizer
        from curvebench.problems import get_problem

        problem = get_problem(config.problem)
        self.device = _device(config.device)
        dtype = _DTYPES[config.dtype]
        data = problem_data(problem, data_dir=data_dir)
        classification = problem.make_loss().classification
        self.classification = classification

        def place(values: Any, *, labels: bool) -> jax.Array:
            array = np.asarray(values.numpy() if hasattr(values, "numpy") else values)
            integer = np.int64 if jax.config.jax_enable_x64 else np.int32
            array = array.astype(integer if labels and classification else dtype)
            return jax.device_put(jnp.asarray(array), self.device)

        x_train = place(data.x_train, labels=False)
        y_train = place(data.y_train, labels=True)
        check_batch_size(config, training_examples=int(x_train.shape[0]))
        from curvebench.harness import EVAL_TRAIN_EXAMPLES

        self.eval_sets = (
            (x_train[:EVAL_TRAIN_EXAMPLES], y_train[:EVAL_TRAIN_EXAMPLES], False),
            (place(data.x_test, labels=False), place(data.y_test, labels=True), classification),
        )
        torch.manual_seed(config.seed)  # as the torch backend: stochastic optimizers' draws
        architecture = problem.architecture
        params = jax.device_put(initial_params(architecture, seed=config.seed, dtype=dtype),
                                self.device)
        self.apply = compile_architecture(architecture)
        self.loss = jax_loss_by_name(problem.loss)
        self.stepper = build_jax_optimizer(config.optimizer, architecture=architecture,
                                           params=params, loss=problem.loss,
                                           hyperparameters=config.hyperparameter_dict,
                                           seed=config.seed)
        self.batches = _Batches(x_train, y_train, batch_size=config.batch_size,
                                seed=config.seed)
        size = min(config.batch_size, int(x_train.shape[0]))
        self.stepper.compile(inputs=x_train[:size], targets=y_train[:size])  # before training
        self._evaluate = jax.jit(self._chunk_metrics)
        self.environment = self._environment(config)

    @property
    def compile_seconds(self) -> float:
        return float(self.stepper.compile_seconds)

    def _environment(self, config: RunConfig) -> dict[str, Any]:
        import platform
        import sys

        import torch

        from curvebench import __version__
        from curvebench.environment import git_sha

        return {
            "backend": "jax",
            **jax_versions(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "torch": torch.__version__,  # builds the initial weights
            "curvebench": __version__,
            "git_sha": git_sha(),
            "platform": platform.platform(),
            "device": config.device,
            "device_name": str(getattr(self.device, "device_kind", self.device)),
            "threads": torch.get_num_threads(),
            "xla_cpu_threads": xla_cpu_threads(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "dtype": config.dtype,
            "x64": bool(jax.config.jax_enable_x64),
        }

    def _clock(self) -> float:
        jax.block_until_ready(self.stepper.params)
        return time.perf_counter()

    def step(self) -> stepping.StepOutcome:
        return stepping.take_step(self.stepper, self.batches, clock=self._clock)

    def _chunk_metrics(self, params: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
        output = self.apply(params, x)
        correct = (jnp.argmax(output, axis=1) == y).sum() if self.classification else 0
        return self.loss.value(output, y), correct

    def evaluate(self) -> dict[str, float]:
        results = []
        for x, y, accuracy in self.eval_sets:
            total = correct = 0.0
            count = int(x.shape[0])
            for start in range(0, count, _EVAL_CHUNK):
                chunk_x, chunk_y = x[start : start + _EVAL_CHUNK], y[start : start + _EVAL_CHUNK]
                value, hits = self._evaluate(self.stepper.params, chunk_x, chunk_y)
                total += float(value) * int(chunk_x.shape[0])
                correct += float(hits)
            results.append((total / max(count, 1),
                            correct / max(count, 1) if accuracy else float("nan")))
        (train_loss, _), (test_loss, test_accuracy) = results
        return {"train_loss": train_loss, "test_loss": test_loss, "test_accuracy": test_accuracy}

    def notes(self) -> dict[str, Any]:
        return dict(self.stepper.notes)

    def peak_memory_bytes(self) -> int | None:
        if self.device.platform == "cpu":
            from curvebench.backends import process_peak_rss

            return process_peak_rss()
        stats = self.device.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return None if peak is None else int(peak)


class JaxBackend:
    """JAX (CPU or GPU) with optax, kfac-jax and our JAX SGN."""

    name = "jax"
    # torch: the data pipeline and the thread settings are torch's
    distributions = ("jax", "jaxlib", "optax", "kfac-jax", "numpy", "torch")

    def resolve_device(self, device: str) -> str:
        _device(device)
        return device if ":" in device or device == "cpu" else f"{device}:0"

    def use_threads(self, threads: int | None) -> None:
        """``NPROC = threads`` for XLA's CPU pool before JAX starts it (see the module
        docstring); afterwards only the count it started with is accepted.

        Raises:
            ValueError: JAX already computes on another number of CPU threads (one line).
        """
        if threads is None:
            return
        started = xla_cpu_threads()
        if started is None:
            os.environ["NPROC"] = str(threads)
        elif started != threads:
            raise ValueError(f"JAX already computes on {started} CPU threads in this process "
                             f"(XLA sizes its pool once); a JAX run with threads={threads} "
                             f"needs a new process, or NPROC={threads} set before JAX starts")

    def check_buildable(self, config: RunConfig) -> None:
        from curvebench.jax_backend.models import initial_params
        from curvebench.jax_backend.optimizers import build_jax_optimizer
        from curvebench.problems import get_problem

        problem = get_problem(config.problem)
        architecture = problem.architecture
        params = initial_params(architecture, seed=0)
        build_jax_optimizer(config.optimizer, architecture=architecture, params=params,
                            loss=problem.loss, hyperparameters=config.hyperparameter_dict)

    @contextlib.contextmanager
    def session(self, config: RunConfig, *,
                data_dir: Path | str | None = None) -> Iterator[JaxSession]:
        from curvebench.backends.torch import torch_run_settings

        self.use_threads(config.threads)
        previous = bool(jax.config.jax_enable_x64)
        jax.config.update("jax_enable_x64", config.dtype == "float64")
        try:
            with torch_run_settings(config.threads), jax.default_device(_device(config.device)):
                yield JaxSession(config, data_dir=data_dir)
        finally:
            jax.config.update("jax_enable_x64", previous)


BACKEND = JaxBackend()
