"""Device-synchronised clocks and a light per-phase timer that optimizers can use.

The harness owns a :class:`PhaseTimer` and hands it to curvature optimizers
(``optimizer.phase_timer``). Inside ``step`` they wrap work in ``with timer.phase("solve"):``.
On CPU a phase is timed with ``time.perf_counter``; on CUDA with CUDA events, which cost no
synchronisation until the harness reads them once at the end of the step.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import AbstractContextManager

import torch

__all__ = ["PHASES", "PhaseTimer", "NullPhaseTimer", "synchronize", "synchronized_clock"]

#: Phase names the reports know; optimizers may use others, which are kept as they are.
PHASES = ("forward", "backward", "curvature", "solve", "update", "line_search")


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synchronized_clock(device: torch.device) -> float:
    """Synchronise ``device``, then read ``time.perf_counter``."""
    synchronize(device)
    return time.perf_counter()


class _CpuPhase:
    """Context manager adding the elapsed ``perf_counter`` time to one phase's total."""

    __slots__ = ("_totals", "_name", "_start")

    def __init__(self, totals: dict[str, float], name: str) -> None:
        self._totals, self._name, self._start = totals, name, 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._totals[self._name] += time.perf_counter() - self._start


class _CudaPhase:
    """Context manager recording a pair of CUDA events around one phase."""

    __slots__ = ("_events", "_name", "_start")

    def __init__(self, events: list, name: str) -> None:
        self._events, self._name = events, name
        self._start: torch.cuda.Event | None = None

    def __enter__(self) -> None:
        self._start = torch.cuda.Event(enable_timing=True)
        self._start.record()

    def __exit__(self, *exc: object) -> None:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._events.append((self._name, self._start, end))


class _NoPhase:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_PHASE = _NoPhase()


class PhaseTimer:
    """Accumulates seconds per named phase within one optimizer step.

    Nested phases are not subtracted from their parent: time each piece of work once. The
    context managers are plain objects (no generator), so a phase costs well under a
    microsecond on CPU.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._cpu: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    def phase(self, name: str) -> AbstractContextManager[None]:
        """Time the ``with`` block under ``name``."""
        if self.device.type == "cuda":
            return _CudaPhase(self._events, name)
        return _CpuPhase(self._cpu, name)

    def collect(self) -> dict[str, float]:
        """Return and reset the seconds per phase since the last call (synchronises CUDA)."""
        totals = dict(self._cpu)
        if self._events:
            synchronize(self.device)
            for name, start, end in self._events:
                totals[name] = totals.get(name, 0.0) + start.elapsed_time(end) / 1000.0
            self._events = []
        if self._cpu:
            self._cpu = defaultdict(float)
        return totals


class NullPhaseTimer(PhaseTimer):
    """A timer that records nothing (the default outside the harness)."""

    def phase(self, name: str) -> AbstractContextManager[None]:
        return _NO_PHASE

    def collect(self) -> dict[str, float]:
        return {}
