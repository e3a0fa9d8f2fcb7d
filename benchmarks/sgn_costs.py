"""Costs of SGN's pieces as ratios, measured in one process with interleaved repeats.

For ``digits-mlp``, ``mnist1d-cnn`` (registered problems, their data) and an MLP
784-256-256-10 (random data) at one batch size, prints medians over repeats of:

* ``ggn/grad``: one GGN-vector product on a cached linearisation ÷ one gradient
  (forward + backward), for each J v method (``layers``, ``double_vjp``) and for a naive
  ``torch.func.jvp`` + ``torch.func.vjp`` product that re-runs the forward pass;
* ``curvlinops/ours``: the same product through ``curvlinops.GGNLinearOperator`` ÷ ours
  (if curvlinops is installed);
* ``sgn(k)/sgd``: a whole SGN step with ``k`` CG iterations (line search and adaptive damping
  on, the defaults) ÷ a ``torch.optim.SGD`` step, for each ``k``.

Ratios are printed for wall-clock time and for process CPU time (``time.process_time``); on a
shared machine the CPU-time ratios are the robust ones, because preemption by other processes
hits long operations (an SGN step) more often than short ones (an SGD step). Use one thread
(the default) so that CPU time equals work done.

    python benchmarks/sgn_costs.py [--batch 512] [--repeats 15] [--threads 1] [--k 1 3 10]

With ``--time-to-target`` it instead runs, through :func:`curvebench.harness.run` at a large
batch, ``sgn`` with its defaults against ``sgd`` over a small learning-rate grid on
``digits-mlp`` and ``mnist1d-mlp``, and prints steps- and seconds-to-target (the problems'
registered targets) and how many grid points reach the target::

    python benchmarks/sgn_costs.py --time-to-target [--batch 1000] [--eval-every 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from curvebench.curvature import Linearization, flatten, unflatten
from curvebench.losses import CrossEntropyLoss, CurvatureLoss
from curvebench.optimizers.sgn import GaussNewtonCG
from curvebench.problems import get_problem, models
from curvebench.problems.torch_models import build_torch_model, torch_dataset


def _cases(batch: int) -> dict[str, tuple[nn.Module, CurvatureLoss, torch.Tensor, torch.Tensor]]:
    cases = {}
    for name in ("digits-mlp", "mnist1d-cnn"):
        problem = get_problem(name)
        data = torch_dataset(problem.dataset())
        generator = torch.Generator().manual_seed(0)
        index = torch.randint(0, len(data.x_train), (batch,), generator=generator)
        cases[name] = (problem.build_model(seed=0), problem.make_loss(),
                       data.x_train[index].float(), data.y_train[index].long())
    torch.manual_seed(0)
    cases["mlp-784-256-256-10"] = (build_torch_model(models.mlp([784, 256, 256, 10]), seed=None),
                                   CrossEntropyLoss(), torch.randn(batch, 784),
                                   torch.randint(0, 10, (batch,)))
    return cases


def _naive_product(model, loss, inputs, vector) -> Callable[[], torch.Tensor]:
    """J v by torch.func.jvp (re-running the forward pass), then Jᵀ H J v by torch.func.vjp."""
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    primals = {n: p.detach() for n, p in model.named_parameters()}

    def output(p):
        return functional_call(model, p, (inputs,))

    def product() -> torch.Tensor:
        tangents = dict(zip(names, unflatten(vector, params), strict=True))
        out, jv = jvp(output, (primals,), (tangents,))
        _, pullback = vjp(output, primals)
        (grads,) = pullback(loss.hessian_vector_product(out, jv))
        return flatten([grads[n] for n in names], params)

    return product


def _curvlinops_product(model, loss, inputs, targets, vector) -> Callable[[], torch.Tensor] | None:
    try:
        import curvlinops
    except ImportError:
        return None
    torch_loss = {"mse": nn.MSELoss(), "cross_entropy": nn.CrossEntropyLoss(),
                  "bce_logits": nn.BCEWithLogitsLoss()}[loss.name]
    operator = curvlinops.GGNLinearOperator(model, torch_loss, list(model.parameters()),
                                            [(inputs, targets)], check_deterministic=False)
    return lambda: operator @ vector


def measure(*, batch: int, repeats: int, ks: list[int]) -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {batch}, "
          f"median of {repeats} interleaved repeats")
    for name, (model, loss, inputs, targets) in _cases(batch).items():
        _measure_case(name, model, loss, inputs, targets, repeats=repeats, ks=ks)


def _measure_case(name: str, model: nn.Module, loss: CurvatureLoss, inputs: torch.Tensor,
                  targets: torch.Tensor, *, repeats: int, ks: list[int]) -> None:
    params = list(model.parameters())

    def gradient() -> None:
        torch.autograd.grad(loss(model(inputs), targets), params)

    linearizations = {method: Linearization(model, loss=loss, inputs=inputs,
                                            targets=targets, jvp_method=method)
                      for method in ("layers", "double_vjp")}
    vector = torch.randn(linearizations["layers"].num_parameters)
    work: dict[str, Callable[[], object]] = {"grad": gradient}
    for method, lin in linearizations.items():
        work[f"ggn[{method}]"] = lambda lin=lin: lin.ggn_vector_product(vector)
    work["ggn[naive]"] = _naive_product(model, loss, inputs, vector)
    theirs = _curvlinops_product(model, loss, inputs, targets, vector)
    if theirs is not None:
        work["curvlinops"] = theirs

    sgd_model = _copy(model)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=1e-3)

    def sgd_step() -> None:
        sgd.zero_grad(set_to_none=True)
        loss(sgd_model(inputs), targets).backward()
        sgd.step()

    work["sgd_step"] = sgd_step
    setups: dict[str, Callable[[], None]] = {}
    for k in ks:
        sgn_model = _copy(model)
        initial = {key: value.clone() for key, value in sgn_model.state_dict().items()}
        optimizer = GaussNewtonCG(sgn_model, loss=loss, cg_iterations=k, cg_tolerance=0.0,
                                  warmup_steps=0, damping=1e-2, damping_min=1e-2)
        work[f"sgn_step[k={k}]"] = (
            lambda optimizer=optimizer: optimizer.step(inputs=inputs, targets=targets))
        # Every timed step starts from the same parameters: repeated steps on one batch would
        # drive gradients into subnormal floats, whose arithmetic is much slower on CPUs.
        setups[f"sgn_step[k={k}]"] = (
            lambda sgn_model=sgn_model, initial=initial: sgn_model.load_state_dict(initial))

    wall: dict[str, list[float]] = {key: [] for key in work}
    cpu: dict[str, list[float]] = {key: [] for key in work}
    for key, fn in work.items():  # warm-up
        setups.get(key, _nothing)()
        fn()
    for _ in range(repeats):
        for key, fn in work.items():
            setups.get(key, _nothing)()
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[key].append(time.process_time() - start_cpu)
            wall[key].append(time.perf_counter() - start_wall)
    for clock, times in (("wall", wall), ("cpu", cpu)):
        median = {key: statistics.median(values) for key, values in times.items()}
        grad, ours = median["grad"], median["ggn[layers]"]
        print(f"\n{name} [{clock} clock]: gradient {grad * 1e3:.2f} ms, "
              f"SGD step {median['sgd_step'] * 1e3:.2f} ms")
        for method in ("layers", "double_vjp", "naive"):
            print(f"  ggn[{method}]/grad".ljust(28) + f"{median[f'ggn[{method}]'] / grad:6.2f}")
        if "curvlinops" in median:
            print("  curvlinops/ours".ljust(28) + f"{median['curvlinops'] / ours:6.2f}")
        for k in ks:
            ratio = median[f"sgn_step[k={k}]"] / median["sgd_step"]
            print(f"  sgn_step(k={k})/sgd_step".ljust(28)
                  + f"{ratio:6.2f}   (goal ≤ {1.2 + 1.1 * k:.1f})")


SGD_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def time_to_target(*, batch: int, problems: tuple[str, ...] = ("digits-mlp", "mnist1d-mlp"),
                   sgd_steps: int = 3000, sgn_steps: int = 500, eval_every: int = 5) -> None:
    from curvebench.harness import run
    from curvebench.problems import Budget

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {batch}, "
          f"evaluated every {eval_every} steps")
    for name in problems:
        target = get_problem(name).target
        print(f"\n{name}: target {target.metric} {'≤' if target.direction == 'min' else '≥'} "
              f"{target.value}")
        rows = [("sgn (defaults)", run(problem=name, optimizer="sgn", batch_size=batch,
                                       budget=Budget(max_steps=sgn_steps),
                                       eval_every=eval_every))]
        for lr in SGD_GRID:
            rows.append((f"sgd lr={lr:g}", run(problem=name, optimizer="sgd",
                                               hyperparameters={"lr": lr}, batch_size=batch,
                                               budget=Budget(max_steps=sgd_steps),
                                               eval_every=eval_every)))
        for label, record in rows:
            seconds = record.seconds_to_target
            print(f"  {label:16} {record.status:9} steps-to-target {record.steps_to_target!s:>5} "
                  f"seconds-to-target {'-' if seconds is None else f'{seconds:.2f}':>6} "
                  f"(ran {record.steps_run} steps, {record.seconds:.2f} s)")
        reached = sum(r.steps_to_target is not None for label, r in rows if label.startswith("sgd"))
        print(f"  SGD grid points reaching the target: {reached}/{len(SGD_GRID)}")


def _nothing() -> None:
    pass


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--time-to-target", action="store_true")
    parser.add_argument("--eval-every", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.time_to_target:
        time_to_target(batch=args.batch, eval_every=args.eval_every)
    else:
        measure(batch=args.batch, repeats=args.repeats, ks=args.k)


if __name__ == "__main__":
    main()
