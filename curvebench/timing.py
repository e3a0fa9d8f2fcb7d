"""Device-synchronised clocks and a light per-phase timer that optimizers can use.

The harness owns a :class:`PhaseTimer` and hands it to curvature optimizers
(``optimizer.phase_timer``). Inside ``step`` they wrap work in ``with timer.phase("solve"):``.
On CPU a phase is timed with ``time.perf_counter``; on CUDA with CUDA events, which cost no
synchronisation until the harness reads them once at the end of the step.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import time
from collections import defaultdict
from contextlib import AbstractContextManager

import torch

from curvebench.records import PHASES

__all__ = ["ALLOCATOR_POLICIES", "PHASES", "PhaseTimer", "NullPhaseTimer",
           "add_allocator_option", "apply_allocator_policy", "retain_freed_memory",
           "synchronize", "synchronized_clock"]

#: The benchmarks' ``--allocator`` choices: keep freed memory (:func:`retain_freed_memory`),
#: or the C library's default.
ALLOCATOR_POLICIES = ("retain", "system")

#: ``mallopt`` parameters of glibc (``malloc.h``) and what :func:`retain_freed_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_NEVER_TRIM = 2**31 - 1
_MMAP_THRESHOLD = 32 * 2**20  # glibc's largest


def retain_freed_memory() -> str:
    """Make this process keep the memory it frees for reuse (glibc), and say what was done.

    PyTorch's CPU tensors are allocated and freed with ``malloc``. By default glibc hands
    large freed blocks back to the operating system (its ``mmap`` threshold and heap trimming),
    so the next tensor of that size is fresh memory, and the first write to each 4 KiB page
    of it costs a page fault and the kernel's zeroing. That cost falls on whichever step
    allocates after a large free, varies with the heap's history, and hits methods with large
    temporaries (second-order steps) more than an SGD step. Measured (one thread, the CNN of
    ``benchmarks/kfac_peers.py``): an SGN step (the ``sgn`` preset) took 32–36 thousand page
    faults per step by default and none with this, at the same peak memory (487 MB), and
    227 against 287 ms; ``benchmarks/sgn_costs.py`` in three processes each: SGN(k=1) ÷ SGD
    2.12–2.73 with the SGD step at 61–75 ms by default, 2.33–2.38 and 62–63 ms with this.
    PyTorch's CUDA allocator keeps freed blocks in the same way. Here: heap trimming off, and
    blocks up to 32 MiB (glibc's largest threshold) served from the heap.

    Returns:
        A one-line description for a benchmark's header: what was set, or why nothing was
        (not glibc, or ``mallopt`` refused).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return "system allocator (no glibc mallopt here)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not (mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) and mallopt(_M_MMAP_THRESHOLD,
                                                                _MMAP_THRESHOLD)):
        return "system allocator (glibc mallopt refused)"
    return "freed memory kept (glibc: no heap trimming, mmap threshold 32 MiB)"


def add_allocator_option(parser: argparse.ArgumentParser) -> None:
    """A benchmark's ``--allocator`` option (:data:`ALLOCATOR_POLICIES`, default ``retain``)."""
    parser.add_argument("--allocator", choices=ALLOCATOR_POLICIES, default="retain",
                        help="retain (default): the process keeps the memory it frees, so "
                             "timings carry no page faults from the heap's history; system: "
                             "the C library's default")


def apply_allocator_policy(policy: str) -> str:
    """Apply one of :data:`ALLOCATOR_POLICIES` to this process (before any timing) and
    describe it in one line for a benchmark's header."""
    if policy not in ALLOCATOR_POLICIES:
        raise ValueError(f"allocator policy must be one of {ALLOCATOR_POLICIES}, got {policy!r}")
    return retain_freed_memory() if policy == "retain" else "system allocator"

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
