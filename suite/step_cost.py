"""Cost of one optimizer step: wall time, peak memory and optimizer-state size.

Parametrised over every problem tagged :data:`~suite.workloads.STEP_TAGS` (the CNNs
``digits-cnn`` and ``mnist1d-cnn`` among them) × every registered optimizer; combinations ruled
out by capability flags are n/a. :class:`UpdateCycle` times whole update cycles of optimizers
whose curvature is refreshed periodically (the K-FAC family).
"""

from __future__ import annotations

import math

from suite.workloads import (
    STEP_TAGS,
    build_step_workload,
    optimizer_names,
    problem_names,
    state_bytes,
    warm_step_workload,
)

#: Steps taken before measuring, so lazily allocated state (momentum, Kronecker factors,
#: inverses) exists and the first step's one-off costs stay out of the timings.
WARMUP_STEPS = 1


class OptimizerStep:
    """One step of each optimizer on each suite problem, built as the harness builds a run."""

    params = (problem_names(STEP_TAGS), optimizer_names())
    param_names = ("problem", "optimizer")
    # asv times one call per sample when there is a setup. A step is 0.1 ms to a second:
    # up to 20 samples or 4 s per round; warm-up is whole steps (in setup), not asv's clock.
    warmup_time = 0.0
    repeat = (5, 20, 4.0)
    rounds = 2
    timeout = 180

    def setup(self, problem: str, optimizer: str) -> None:
        self.workload = warm_step_workload(problem, optimizer, warmup_steps=WARMUP_STEPS)

    def time_step(self, problem: str, optimizer: str) -> None:
        """Seconds of one step: forward, backward, curvature, solve and update."""
        self.workload.step()

    def peakmem_step(self, problem: str, optimizer: str) -> None:
        """Peak resident memory of the process while it builds the run and takes steps."""
        self.workload.step()

    peakmem_step.rounds = 1  # deterministic enough; one process per combination


class OptimizerState:
    """Bytes of optimizer state after the warm-up steps (momentum buffers, curvature factors)."""

    params = (problem_names(STEP_TAGS), optimizer_names())
    param_names = ("problem", "optimizer")
    timeout = 180

    def setup_cache(self) -> dict[str, dict[str, int | None]]:
        """State size of every combination, measured in one process (None: cannot exist)."""
        sizes: dict[str, dict[str, int | None]] = {}
        for problem in self.params[0]:
            sizes[problem] = {}
            for optimizer in self.params[1]:
                try:
                    workload = build_step_workload(problem, optimizer)
                except NotImplementedError:
                    sizes[problem][optimizer] = None
                    continue
                for _ in range(WARMUP_STEPS):
                    workload.step()
                sizes[problem][optimizer] = state_bytes(workload.optimizer)
        return sizes

    setup_cache.timeout = 600

    def setup(self, sizes, problem: str, optimizer: str) -> None:
        if sizes[problem][optimizer] is None:
            raise NotImplementedError(f"{optimizer} cannot run on {problem}")

    def track_state_bytes(self, sizes, problem: str, optimizer: str) -> int:
        """Bytes held in ``optimizer.state_dict()`` (parameters themselves excluded)."""
        return sizes[problem][optimizer]

    track_state_bytes.unit = "bytes"


def update_cycle(optimizer: object) -> int:
    """Steps after which a periodic optimizer has done each kind of its work once:
    ``lcm(T_cov, T_inv)`` for Kronecker-factored methods, 1 for every other optimizer."""
    periods = [int(getattr(optimizer, name, 1))
               for name in ("cov_update_period", "inv_update_period")]
    return math.lcm(*periods)


class UpdateCycle:
    """One whole update cycle of each optimizer on each suite problem (K-FAC on a CNN included).

    A step of a method that refreshes its curvature periodically (factors every ``T_cov``
    steps, decompositions every ``T_inv``) costs very different amounts from step to step;
    :class:`OptimizerStep`'s samples are single steps, so their statistics miss the expensive
    ones. This times ``lcm(T_cov, T_inv)`` consecutive steps (one step for other optimizers);
    divide by :func:`update_cycle` for the amortised step.
    """

    params = (problem_names(STEP_TAGS), optimizer_names())
    param_names = ("problem", "optimizer")
    warmup_time = 0.0
    repeat = (2, 5, 20.0)
    rounds = 1
    timeout = 300

    def setup(self, problem: str, optimizer: str) -> None:
        self.workload = warm_step_workload(problem, optimizer, warmup_steps=WARMUP_STEPS)
        self.steps = update_cycle(self.workload.optimizer)

    def time_update_cycle(self, problem: str, optimizer: str) -> None:
        """Seconds of :func:`update_cycle` consecutive steps."""
        for _ in range(self.steps):
            self.workload.step()
