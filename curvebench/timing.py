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

from curvebench.records import PHASES

__all__ = ["PHASES", "PhaseTimer", "NullPhaseTimer", "synchronize", "synchronized_clock"]

def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synchronized_clock(device: torch.device) -> float:
    """Synchronise ``device``, then read ``time.perf_counter``."""
    synchronize(device)
    return time.perf_counter()


class _Phase:
    """Context manager entering and leaving one named phase of a :class:`PhaseTimer`."""

    __slots__ = ("_timer", "_name")

    def __init__(self, timer: PhaseTimer, name: str) -> None:
        self._timer, self._name = timer, name

    def __enter__(self) -> None:
        self._timer._enter(self._name)

    def __exit__(self, *exc: object) -> None:
        self._timer._leave()


class _NoPhase:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_PHASE = _NoPhase()


class PhaseTimer:
    """Accumulates *exclusive* seconds per named phase within one optimizer step.

    Phases may nest: time inside an inner phase counts for the inner phase only, so the
    phases of a step add up to at most the step's time (a stacked cost breakdown is honest).
    On CPU every transition reads ``perf_counter``; on CUDA it records an event, and the
    intervals are resolved once, in :meth:`collect`, which hands the events back for reuse
    (creating an event per transition costs a driver call each step).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._cpu: dict[str, float] = defaultdict(float)
        self._intervals: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._free_events: list[torch.cuda.Event] = []
        self._stack: list[str] = []
        self._last: float | torch.cuda.Event = 0.0
        self._phases: dict[str, _Phase] = {}

    def phase(self, name: str) -> AbstractContextManager[None]:
        """Time the ``with`` block under ``name`` (minus any phases nested inside it)."""
        manager = self._phases.get(name)
        if manager is None:
            manager = self._phases[name] = _Phase(self, name)
        return manager

    def _now(self) -> float | torch.cuda.Event:
        if self._cuda:
            event = (self._free_events.pop() if self._free_events
                     else torch.cuda.Event(enable_timing=True))
            event.record()
            return event
        return time.perf_counter()

    def _charge(self, name: str, now: float | torch.cuda.Event) -> None:
        if self._cuda:
            self._intervals.append((name, self._last, now))  # type: ignore[arg-type]
        else:
            self._cpu[name] += now - self._last  # type: ignore[operator]

    def _enter(self, name: str) -> None:
        now = self._now()
        if self._stack:
            self._charge(self._stack[-1], now)
        self._stack.append(name)
        self._last = now

    def _leave(self) -> None:
        now = self._now()
        self._charge(self._stack.pop(), now)
        self._last = now

    def start_laps(self) -> None:
        """Start a sequence of back-to-back phases timed with :meth:`lap`."""
        self._last = self._now()

    def lap(self, name: str) -> None:
        """Charge the time since the previous lap (or :meth:`start_laps`) to ``name``.

        One clock reading per phase boundary, for the harness's own first-order steps; not for
        use inside a ``with phase(...)`` block.
        """
        now = self._now()
        self._charge(name, now)
        self._last = now

    def collect(self) -> dict[str, float]:
        """Return and reset the seconds per phase since the last call (synchronises CUDA)."""
        totals = {name: seconds for name, seconds in self._cpu.items() if seconds}
        if self._intervals:
            synchronize(self.device)
            read = {}
            for name, start, end in self._intervals:
                totals[name] = totals.get(name, 0.0) + start.elapsed_time(end) / 1000.0
                read.update({id(start): start, id(end): end})
            read.pop(id(self._last), None)  # may still open the next interval
            self._free_events.extend(read.values())
            self._intervals = []
        for name in self._cpu:
            self._cpu[name] = 0.0
        return totals


class NullPhaseTimer(PhaseTimer):
    """A timer that records nothing (the default outside the harness)."""

    def phase(self, name: str) -> AbstractContextManager[None]:
        return _NO_PHASE

    def collect(self) -> dict[str, float]:
        return {}
