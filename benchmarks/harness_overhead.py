"""Harness overhead: a hand-written training loop against the harness, same work.

Runs ``digits-mlp`` with ``sgd`` for the same number of steps, on the same batches, in one
process, interleaving repeats, and prints per-step wall-clock ratios (median of repeats):

* ``measured``: the harness's own clock (sum of synchronised step durations) ÷ hand loop;
* ``wall``: the harness's whole training loop (bookkeeping included, the two evaluations at
  step 0 and at the end excluded) ÷ hand loop.

    python benchmarks/harness_overhead.py [--steps 2000] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from curvebench import harness
from curvebench.backends import torch as torch_backend
from curvebench.batches import ShuffledBatches
from curvebench.problems import Budget, get_problem


def hand_loop(steps: int) -> float:
    problem = get_problem("digits-mlp")
    data = torch_backend.device_data(problem, device=torch.device("cpu"), dtype=torch.float32)
    torch.manual_seed(0)
    model = problem.build_model(seed=0)
    loss_fn = problem.make_loss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = ShuffledBatches(data.x_train, data.y_train, batch_size=problem.batch_size, seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        inputs, targets = next(batches)
        loss = loss_fn(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        float(loss.detach())
    return time.perf_counter() - start


def harness_loop(steps: int) -> tuple[float, float]:
    evaluation_time = 0.0
    real = torch_backend.evaluate

    def timed(*args, **kwargs):
        nonlocal evaluation_time
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            evaluation_time += time.perf_counter() - start

    torch_backend.evaluate = timed
    try:
        config = harness.plan_run(problem="digits-mlp", optimizer="sgd", seed=0,
                                  budget=Budget(max_steps=steps), eval_every=10 * steps,
                                  stop_at_target=False)
        start = time.perf_counter()
        record = harness.execute(config)
        wall = time.perf_counter() - start
    finally:
        torch_backend.evaluate = real
    # execute() also builds the model and optimizer; that setup is timed separately here.
    return record.seconds, wall - evaluation_time


def setup_time() -> float:
    problem = get_problem("digits-mlp")
    start = time.perf_counter()
    torch.manual_seed(0)
    model = problem.build_model(seed=0)
    torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hand_loop(100), harness_loop(100)  # warm-up
    measured, wall = [], []
    for _ in range(args.repeats):
        hand = hand_loop(args.steps)
        clock, total = harness_loop(args.steps)
        measured.append(clock / hand)
        wall.append((total - setup_time()) / hand)
    print(f"digits-mlp sgd, {args.steps} steps, {args.threads} thread(s), "
          f"{args.repeats} interleaved repeats")
    print(f"harness measured seconds / hand loop: median {statistics.median(measured):.3f} "
          f"(all: {', '.join(f'{r:.3f}' for r in measured)})")
    print(f"harness loop wall (no eval) / hand loop: median {statistics.median(wall):.3f} "
          f"(all: {', '.join(f'{r:.3f}' for r in wall)})")


if __name__ == "__main__":
    main()
