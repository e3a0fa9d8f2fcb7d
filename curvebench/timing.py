"""Device-synchronised clocks and a light per-phase timer that optimizers can use.

The harness owns a :class:`PhaseTimer` and hands it to curvature optimizers
(``optimizer.phase_timer``). Inside ``step`` they wrap work in ``with timer.phase("solve"):``.
On CPU a phase is timed with ``time.perf_counter``; on CUDA with CUDA events, which cost no
synchronisation until the harness reads them once at the end of the step.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

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


class PhaseTimer:
    """Accumulates seconds per named phase within one optimizer step.

    Nested phases are not subtracted from their parent: time each piece of work once.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._cpu: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block under ``name``."""
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((name, start, end))
        else:
            start_time = time.perf_counter()
            try:
                yield
            finally:
                self._cpu[name] += time.perf_counter() - start_time

    def collect(self) -> dict[str, float]:
        """Return and reset the seconds per phase since the last call (synchronises CUDA)."""
        totals = dict(self._cpu)
        if self._events:
            synchronize(self.device)
            for name, start, end in self._events:
                totals[name] = totals.get(name, 0.0) + start.elapsed_time(end) / 1000.0
        self._cpu = defaultdict(float)
        self._events = []
        return totals


class NullPhaseTimer(PhaseTimer):
    """A timer that records nothing (the default outside the harness)."""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield

    def collect(self) -> dict[str, float]:
        return {}
