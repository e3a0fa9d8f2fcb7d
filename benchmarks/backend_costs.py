"""JAX step ÷ torch step, per optimizer and model, in one process with interleaved repeats.

Pairs: ``sgd``, ``adam`` and ``sgn`` (``cg_iterations=3``, past its warm-up) in both backends,
and kfac-jax ÷ our torch ``kfac``; on ``digits-mlp`` and ``mnist1d-cnn`` (their data) and an
MLP 784-256-256-10 (random data), all at one batch size (default 512), float32. Each repeat
times ``--steps`` steps of the torch optimizer, then of the JAX one, in process CPU time
(``time.process_time``) with one thread each (torch ``set_num_threads(1)``; XLA's CPU client
with a one-thread pool (``NPROC=1``, see :mod:`curvebench.backends.jax`: without it XLA ran
independent operations of the step on the other core, and SGN's step on the MLP counted 1.7
cores' process time) and without its Eigen thread pool, and OpenBLAS/OpenMP/MKL limited to
one thread, all set below before anything is imported: under load, OpenBLAS's spinning
threads made kfac-jax's inverting steps on digits-mlp cost 8× more process time); medians
are printed, with the load average and each side's process time ÷ wall time (1.00: one core).
Compilation is timed apart (the JAX stepper's ``compile_seconds``, wall time) and excluded:
each JAX stepper is compiled before its first step, as the harness compiles it
(:meth:`compile`); kfac-jax compiles a step variant per state layout and damping update, and
with only the warm-up steps before timing, the first timed round compiled the damping-update
variant on XLA's compiler threads (1.2–1.7 cores' process time in that column, not the step's).
Both sides step through the one step protocol (:mod:`curvebench.stepping`); the JAX batches
are placed on the device once, as the JAX backend does.

A row whose JAX step costs more than twice torch's is followed by a measured "why" line: for
kfac-jax the median of its steps that recompute the factor inverses (every
``inverse_update_period`` steps) against the others (our torch ``kfac`` updates its factors
every 5 steps and inverts every 20, kfac-jax updates every step and inverts every 5), and on a
CNN the time of the library's own convolution input-factor statistics
(``kfac_jax.patches_moments``, called as its ``Conv2DTwoKroneckerFactored`` block calls it,
timed alone on the same input shapes): a ``while`` loop over kernel positions around a
convolution that XLA's CPU compiler leaves in a generic, uncanonicalised form.

    python benchmarks/backend_costs.py [--batch 512] [--repeats 5] [--steps 10]
                                       [--workloads NAME ...]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_multi_thread_eigen=false"
                           + " intra_op_parallelism_threads=1").strip()
os.environ["NPROC"] = "1"  # XLA's CPU thread pool, sized once when JAX starts
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    # JAX's CPU LAPACK calls (kfac-jax's factor inverses) go through SciPy's OpenBLAS, whose
    # own thread pool would otherwise count its spinning threads in the process time
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import functools  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import kfac_jax  # noqa: E402
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


PROBLEM_WORKLOADS = ("digits-mlp", "mnist1d-cnn")
MLP_WORKLOAD = "mlp-784-256-256-10"


def _workloads(batch: int, names: tuple[str, ...]):
    """(name, model factory, loss name, batches) for each workload in ``names``."""
    for name in PROBLEM_WORKLOADS:
        if name not in names:
            continue
        spec = get_problem(name)
        data = torch_dataset(spec.dataset())
        factory = functools.partial(build_torch_model, spec.architecture, seed=None)
        yield name, factory, spec.loss, ShuffledBatches(
            data.x_train, data.y_train, batch_size=batch, seed=0)
    if MLP_WORKLOAD not in names:
        return
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch * 4, 784, generator=generator)
    y = torch.randint(0, 10, (batch * 4,), generator=generator)
    mlp = models.mlp([784, 256, 256, 10])
    yield (MLP_WORKLOAD, lambda: build_torch_model(mlp, seed=None), "cross_entropy",
           ShuffledBatches(x, y, batch_size=batch, seed=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workloads", nargs="+", default=[*PROBLEM_WORKLOADS, MLP_WORKLOAD],
                        choices=[*PROBLEM_WORKLOADS, MLP_WORKLOAD], metavar="NAME",
                        help=f"a subset of {', '.join([*PROBLEM_WORKLOADS, MLP_WORKLOAD])}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"batch {args.batch}, {args.repeats} repeats × {args.steps} steps, one thread each; "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'workload':22} {'torch':6} {'jax':9} {'torch ms':>9} {'jax ms':>9} "
          f"{'jax/torch':>9} {'compile s':>9} {'cores':>11}")
    for workload, factory, loss_name, batches in _workloads(args.batch, tuple(args.workloads)):
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
            jax_optimizer.compile(inputs=on_jax[0][0], targets=on_jax[0][1])  # as the harness
            warm = 11 if torch_name == "sgn" else 2  # past SGN's 10 warm-up steps
            for (x, y), (jx, jy) in zip(fixed[:1] * warm, on_jax[:1] * warm, strict=True):
                torch_step(x, y)
                jax_optimizer.step(inputs=jx, targets=jy)
            times: dict[str, list[float]] = {"torch": [], "jax": []}
            walls = {"torch": 0.0, "jax": 0.0}  # wall seconds, for process time ÷ wall time
            jax_steps: list[tuple[int, float]] = []  # (step number, seconds) of every JAX step
            for _ in range(args.repeats):
                start, wall = time.process_time(), time.perf_counter()
                for x, y in fixed:
                    torch_step(x, y)
                times["torch"].append((time.process_time() - start) / len(fixed))
                walls["torch"] += time.perf_counter() - wall
                total = 0.0
                wall = time.perf_counter()
                for x, y in on_jax:
                    start = time.process_time()
                    jax_optimizer.step(inputs=x, targets=y)
                    seconds = time.process_time() - start
                    total += seconds
                    jax_steps.append((warm, seconds))  # kfac-jax's step counter starts at 0
                    warm += 1
                walls["jax"] += time.perf_counter() - wall
                times["jax"].append(total / len(fixed))
            t, j = statistics.median(times["torch"]), statistics.median(times["jax"])
            cores = " / ".join(f"{sum(times[side]) * len(fixed) / walls[side]:.2f}"
                               for side in ("torch", "jax"))
            print(f"{workload:22} {torch_name:6} {jax_name:9} {1e3 * t:9.2f} {1e3 * j:9.2f} "
                  f"{j / t:9.2f} {jax_optimizer.compile_seconds:9.2f} {cores:>11}", flush=True)
            if j > 2 * t and jax_name == "kfac-jax":
                print(_kfac_jax_why(jax_optimizer, jax_steps, j, t, args.repeats), flush=True)


def _kfac_jax_why(stepper, jax_steps: list[tuple[int, float]], median: float,
                  torch_median: float, repeats: int) -> str:
    """Where a kfac-jax step's time goes (see the module docstring), one line."""
    period = int(stepper.hyperparameters["inverse_update_period"])
    inverting = [s for number, s in jax_steps if number % period == 0]
    others = [s for number, s in jax_steps if number % period != 0]
    why = (f"  why: kfac-jax's steps that recompute its inverses (1 in {period}) take "
           f"{_ms(inverting)} ms, the others {_ms(others)} ms "
           f"({statistics.median(others) / torch_median:.1f}× our kfac's mean step; kfac-jax "
           f"updates its factors every step and adapts step size and momentum by extra "
           f"curvature products, ours updates factors every 5 steps, inverses every 20)")
    convolutions = [block for block in stepper._optimizer._estimator.blocks
                    if isinstance(block, kfac_jax.Conv2DTwoKroneckerFactored)]
    if convolutions:
        seconds = sum(_patches_moments_seconds(block, repeats) for block in convolutions)
        why += (f"; {1e3 * seconds:.1f} ms of its {1e3 * median:.1f} ms step is the library's "
                f"conv input-factor statistics (kfac_jax.patches_moments timed alone: a while "
                f"loop around a convolution XLA CPU runs in its generic loop), the library's cost")
    return why


def _ms(seconds: list[float]) -> str:
    return f"{1e3 * statistics.median(seconds):.1f}" if seconds else "-"


def _patches_moments_seconds(block, repeats: int) -> float:
    """Median process time of ``kfac_jax.patches_moments`` as ``block`` calls it (its
    ``compute_inputs_stats``), on random inputs of the layer's input shape, compiled."""
    params = block._layer_tag_eq.params  # the layer's convolution arguments, as kfac-jax reads
    moments = jax.jit(lambda inputs: kfac_jax.patches_moments(
        inputs, kernel_spatial_shape=block.weights_spatial_shape,
        strides=params["window_strides"], padding=params["padding"], data_format=None,
        dim_numbers=params["dimension_numbers"], precision=params.get("precision")))
    inputs = jax.random.normal(jax.random.PRNGKey(0), block.inputs_shapes[0], jnp.float32)
    jax.block_until_ready(moments(inputs))
    seconds = []
    for _ in range(repeats):
        start = time.process_time()
        jax.block_until_ready(moments(inputs))
        seconds.append(time.process_time() - start)
    return statistics.median(seconds)


if __name__ == "__main__":
    main()
