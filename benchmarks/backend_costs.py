"""JAX step ÷ torch step, per optimizer and model, in one process with interleaved repeats.

Pairs: ``sgd``, ``adam`` and ``sgn`` (``cg_iterations=3``, past its warm-up) in both backends,
and kfac-jax ÷ our torch ``kfac``; on ``digits-mlp`` and ``mnist1d-cnn`` (their data) and an
MLP 784-256-256-10 (random data), all at one batch size (default 512), float32. Each repeat
times ``--steps`` steps of the torch optimizer, then of the JAX one, in process CPU time
(``time.process_time``) with one thread each (torch ``set_num_threads(1)``; XLA's CPU client
without its Eigen thread pool, set below before jax is imported); medians are printed.
Compilation is timed apart (the JAX stepper's ``compile_seconds``, wall time) and excluded.
Both sides step through the one step protocol (:mod:`curvebench.stepping`); the JAX batches
are placed on the device once, as the JAX backend does.

    python benchmarks/backend_costs.py [--batch 512] [--repeats 5] [--steps 10]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_multi_thread_eigen=false"
                           + " intra_op_parallelism_threads=1").strip()

import argparse  # noqa: E402
import functools  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from curvebench import stepping  # noqa: E402
from curvebench.batches import ShuffledBatches  # noqa: E402
from curvebench.jax_backend.models import from_torch  # noqa: E402
from curvebench.jax_backend.optimizers import build_jax_optimizer  # noqa: E402
from curvebench.jax_backend.training import as_array  # noqa: E402
from curvebench.losses import loss_by_name  # noqa: E402
from curvebench.optimizers import get_optimizer  # noqa: E402
from curvebench.problems import get_problem, models  # noqa: E402
from curvebench.problems.torch_models import build_torch_model, torch_dataset  # noqa: E402

PAIRS = (("sgd", "sgd", {}), ("adam", "adam", {}), ("sgn", "sgn", {"cg_iterations": 3}),
         ("kfac", "kfac-jax", {}))


def _workloads(batch: int):
    """(name, model factory, loss name, batches) for each workload."""
    for name in ("digits-mlp", "mnist1d-cnn"):
        spec = get_problem(name)
        data = torch_dataset(spec.dataset())
        factory = functools.partial(build_torch_model, spec.architecture, seed=None)
        yield name, factory, spec.loss, ShuffledBatches(
            data.x_train, data.y_train, batch_size=batch, seed=0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch * 4, 784, generator=generator)
    y = torch.randint(0, 10, (batch * 4,), generator=generator)
    mlp = models.mlp([784, 256, 256, 10])
    yield ("mlp-784-256-256-10", lambda: build_torch_model(mlp, seed=None), "cross_entropy",
           ShuffledBatches(x, y, batch_size=batch, seed=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"batch {args.batch}, {args.repeats} repeats × {args.steps} steps, one thread each; "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'workload':22} {'torch':6} {'jax':9} {'torch ms':>9} {'jax ms':>9} "
          f"{'jax/torch':>9} {'compile s':>9}")
    for workload, factory, loss_name, batches in _workloads(args.batch):
        fixed = [next(batches) for _ in range(args.steps)]
        on_jax = [(as_array(x), as_array(y)) for x, y in fixed]  # placed once, as the backend does
        for torch_name, jax_name, hyperparameters in PAIRS:
            torch.manual_seed(0)
            model = factory()
            loss = loss_by_name(loss_name)
            architecture, params = from_torch(model)
            stepper = stepping.build_stepper(get_optimizer(torch_name), model=model, loss=loss,
                                             hyperparameters=hyperparameters)

            def torch_step(x, y, stepper=stepper):
                return stepper.step(inputs=x, targets=y)

            jax_optimizer = build_jax_optimizer(jax_name, architecture=architecture,
                                                params=params, loss=loss_name,
                                                hyperparameters=hyperparameters)
            warm = 11 if torch_name == "sgn" else 2  # past SGN's 10 warm-up steps
            for (x, y), (jx, jy) in zip(fixed[:1] * warm, on_jax[:1] * warm, strict=True):
                torch_step(x, y)
                jax_optimizer.step(inputs=jx, targets=jy)
            times: dict[str, list[float]] = {"torch": [], "jax": []}
            for _ in range(args.repeats):
                start = time.process_time()
                for x, y in fixed:
                    torch_step(x, y)
                times["torch"].append((time.process_time() - start) / len(fixed))
                start = time.process_time()
                for x, y in on_jax:
                    jax_optimizer.step(inputs=x, targets=y)
                times["jax"].append((time.process_time() - start) / len(fixed))
            t, j = statistics.median(times["torch"]), statistics.median(times["jax"])
            print(f"{workload:22} {torch_name:6} {jax_name:9} {1e3 * t:9.2f} {1e3 * j:9.2f} "
                  f"{j / t:9.2f} {jax_optimizer.compile_seconds:9.2f}", flush=True)


if __name__ == "__main__":
    main()
