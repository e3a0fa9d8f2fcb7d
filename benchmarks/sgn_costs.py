"""Costs of SGN's pieces as ratios, measured in one process with interleaved repeats.

Workloads (``--workloads``): the MLP 784-256-256-10 at batch 512 and the CNN
conv32-pool-conv64-pool-fc on 1×28×28 at batch 128 of ``benchmarks/kfac_peers.py`` (random
data, ten classes; issue 10's workloads, the default), and the registered ``digits-mlp`` and
``mnist1d-cnn`` problems (their data) at ``--batch``. For each it prints medians over
interleaved repeats of:

* ``ggn/grad``: one GGN-vector product on a cached linearisation ÷ one gradient
  (forward + backward), for each J v method (``layers``, ``double_vjp``) and for a naive
  ``torch.func.jvp`` + ``torch.func.vjp`` product that re-runs the forward pass;
* ``curvlinops/ours``: the same product through ``curvlinops.GGNLinearOperator`` ÷ ours
  (if curvlinops is installed);
* ``sgn(k) ÷ SGD``: a whole SGN step with ``k`` CG iterations (CG tolerance 0, so exactly
  ``k`` iterations; line search and adaptive damping on, the defaults) ÷ a ``torch.optim.SGD``
  step (the median over repeats of the ratio within each repeat), against issue 10's goal
  ``1.2 + 1.1 k`` with a pass/miss column. The ratio is a run's mean step: the last CG
  iteration takes only ``J s`` (``sᵀGs = ‖H^½ J s‖²``) except on the one step in
  ``RESIDUAL_EVERY`` (the registered ``residual_every``) that records CG's final residual with
  a whole product; both steps are timed from the same state and printed after the verdict;
  then the phases of a step without the residual in SGD steps: building the linearisation
  (forward, and the backward that also gives the gradient), the ``k − 1`` GGN products and the
  last ``J s`` (``curvature``; ÷ ``k`` per iteration), CG's own vector work (``solve``), the
  reduction-ratio/Armijo function evaluations (``line_search``) and the rest (``update``);
  and, for each row that misses, a line splitting the excess into the fixed part (goal 1.2)
  and the part per iteration (goal 1.1); and the arithmetic (``flops``,
  :mod:`curvebench.arithmetic`: flops of matrix products) of each SGN step (a run's mean), of
  a product, of the last iteration's ``J s`` and of the rest of a step, ÷ an SGD step's:
  what the goals demand of the arithmetic alone, which one CPU thread's time follows on the
  MLP; ``ops`` is the same for operators that are not
  views, each a kernel launch on a GPU, which bound these small workloads there.

Ratios are printed for wall-clock time and for process CPU time (``time.process_time``); on a
shared machine the CPU-time ratios are the robust ones, because preemption by other processes
hits long operations (an SGN step) more often than short ones (an SGD step). Use one thread
(the default) so that CPU time equals work done. Every timed call follows an untimed call of
the same work, as a step follows a step in training; otherwise whatever runs first after other
work pays page faults on the memory that work freed. The phases come from that untimed call,
timed with the process CPU clock (CUDA events on a GPU); the timed call runs without a phase
timer, as in a plain training loop.

    python benchmarks/sgn_costs.py [--workloads mlp cnn] [--repeats 15] [--threads 1]
                                   [--k 1 2 3 5 10] [--batch 512] [--device cpu|cuda]
                                   [--allocator retain|system] [--processes 1]
                                   [--save rows.json]

With ``--processes N`` it measures in N fresh processes, one after another, and prints one
table: each SGN row's ratio as the median over the processes with its range, and its goal as
passed only where every process passes it ("pass in 2 of 3" otherwise; "MISS by" the median's
excess where none does). A process's heap and thread pools move the ratios by a few percent,
and the MLP's k = 10 sits that close to its goal. ``--save`` writes a process's rows as JSON.

``--allocator retain`` (the default) makes the process keep the memory it frees
(:func:`curvebench.timing.retain_freed_memory`): by default glibc gives it back, and an SGN
step on the CNN paid 32–36 thousand page faults, which made SGN(k=1) ÷ SGD range 2.12–2.73
over three processes (2.33–2.38 with it).

With ``--device cuda`` everything lives on the GPU and there is one clock, CUDA events around
each timed call (launch gaps and host synchronisations included), for the ratios and the
phases alike.

With ``--count-operators`` it instead counts, on the CPU (:class:`~curvebench.operator_counts.
OperatorCounter`), the ATen operators each call dispatches (views included: they launch no
kernel but cost the host a dispatch) and its host reads of tensor values, which on a GPU are
synchronisations; on small workloads a GPU step is bound by exactly these. Measured (torch
2.13), per SGN step with ``k`` CG iterations (tolerance 0, one line-search evaluation), before
and after CG kept its scalars on the device, the step read ``f(θ)`` with its first evaluation
and the linearisation took ∂L/∂f and the gradient from one backward pass:

=======================  ===============  ===============  ===============  ===============
per step                 MLP k=1          MLP k=10         CNN k=1          CNN k=10
=======================  ===============  ===============  ===============  ===============
host reads               7 → 2            25 → 2           7 → 2            25 → 2
operators                199 → 163        845 → 792        193 → 152        805 → 746
operators, not views     83 → 75          406 → 398        85 → 77          409 → 401
=======================  ===============  ===============  ===============  ===============

Operators that are not views per call, MLP / CNN: an SGD step 30 / 31, a gradient 20 / 21,
the linearisation 21 / 22 (all operators 71 → 52 / 69 → 44: it no longer makes a detached
copy of every captured tensor), a GGN product 27 / 28, a function evaluation 7 / 9. Besides
its product, a CG iteration dispatches 9 operators that are not views, as before, but two of
them are now divisions on the device where two were host reads. The rest of a step is about
20 (MLP) operators that are not views beyond its linearisation, products and evaluations;
most of a step's operators are the products', as many as an SGD step's each.

    python benchmarks/sgn_costs.py --count-operators [--workloads mlp cnn] [--k 1 10]

Measured (torch 2.13 CPU, one thread, 9 interleaved repeats, process CPU time, load average
5–7 on two cores; two runs each of this script against the library before and after issue
10's work, alternated), SGN step ÷ SGD step:

====================  ==========  ==========  ==========  ==========  ===========
workload / k          1           2           3           5           10
====================  ==========  ==========  ==========  ==========  ===========
goal 1.2 + 1.1 k      2.3         3.4         4.5         6.7         12.2
MLP before            3.11–3.15   4.30–4.38   5.68–5.72   7.96–8.21   14.24–14.56
MLP after             2.52–2.65   3.68–3.82   5.02–5.15   7.40–7.45   13.32–13.63
CNN before            2.12–2.33   2.97–3.05   3.84–4.32   5.51–5.59   8.88–10.33
CNN after             2.23–2.47   2.79–3.09   3.53–3.86   5.05–6.38   8.61–10.98
====================  ==========  ==========  ==========  ==========  ===========

The MLP's fixed part fell from 1.65–1.9 to 1.3–1.4 SGD steps (the function evaluation from
0.50 to 0.23–0.27: its 784-wide input layer's output at ``θ + αd`` comes from the tangent
carried through CG; CG's set-up from 0.2–0.45 to 0.11–0.14) and CG's vector work per
iteration from 0.16–0.19 to 0.07–0.09. It still misses by 0.2–1.4: a GGN product there costs
1.05–1.13 SGD steps, as its multiply-adds say (1.11: ``J v`` and ``Jᵀu`` each need the
784 × 256 input layer's product with the batch, as an SGD step's forward and backward do),
which with CG's 12 passes over the 269k-parameter vectors per iteration leaves 1.12–1.22 per
product against 1.1; and the linearisation is a gradient (0.95–1.0), the function evaluation
0.23–0.27 and CG's set-up 0.11–0.14 against 1.2. The CNN's rows did not change beyond the
noise (its 50k parameters make CG's vector work negligible); its SGD step itself took 67–73 ms
in some processes and 82–84 ms in others, which moves every ratio by a fifth. Its k = 1 row
misses by 0.17 in the first kind of process and passes in the second: the linearisation is a
gradient (0.9–1.0) and the function evaluation a forward pass, 0.5–0.6 SGD steps, of which
the first 2×2 max pooling (channels-first on CPU) is 18 ms. Its products cost 0.6–0.9 SGD
steps, up to 0.15 more inside CG than alone: glibc returns the freed 6–13 MB activation-sized
blocks to the system between the step's phases, so a product inside the step page-faults on
fresh memory; with ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_`` raised, products
right after a linearisation took 48 ms, as alone.

Later (load 0.6–0.7, 15 repeats, after ``J v`` through an activation followed by max pooling
pooled the tangent first: the CNN's ``J v`` 20.7 → 18.2 ms): CNN k = 1 2.62, k = 2 3.44. Its
arithmetic is 1.34 + 1.32k SGD steps' flops, above the goal; the function evaluation is 0.63
SGD steps, three quarters of it PyTorch's channels-first max-pool kernel. Pooling by maxima
of strided views gives the same values 8–12 times faster and took k = 1 to 1.9–2.1 in a
trial, but SGN keeps PyTorch's kernel: an SGD step's forward pass would gain as much, so using
it in SGN's evaluations alone would skew the ratio this script measures.

Since the script keeps freed memory (``--allocator retain``, the default; 9 repeats, load
0.5–1.0): the CNN's SGD step 62–64 ms in every process, CNN k = 1 2.35–2.39 in four runs
(2.33–2.38 in three more with the same settings made by glibc's environment variables),
k = 2 3.01–3.12, k = 10 9.41; the MLP k = 1 2.61, k = 10 13.20 (its fixed part 1.37–1.41 and
1.17–1.21 per product, as before). With ``--allocator system`` in the same hour the CNN's k = 1
was 2.12–2.73 over four processes, the SGD step 61–75 ms.

Since a product's ``Jᵀu`` runs through the layers' reverse rules
(:meth:`curvebench.curvature.Linearization.vector_jacobian_product`; ``--k 1 2 10 --repeats
9``, two runs, load 0.8–0.9): the MLP k = 1 2.49–2.54, k = 2 3.62–3.67, k = 10 12.57–12.66 (a
product alone 1.03–1.04 SGD steps, was 1.10; per product in CG 1.11–1.19, of it CG's vector
work 0.07–0.08; the fixed part 1.31–1.38); the CNN k = 1 2.33–2.37, k = 2 2.94–2.99, k = 10
8.56–8.58.

Since the linearisation's gradient also runs through those rules, CG starts its residual and
direction as the gradient itself and writes its first residual into the first product, and the
trial points are written as steps from the present parameters (``--k 1 2 10 --repeats 9``;
the code before and after alternated, three processes each, MLP, load 0.5–0.7): the MLP k = 1
2.57–2.61 → 2.43–2.48, k = 2 3.70–3.75 → 3.62–3.70, k = 10 12.84–13.04 → 12.76–13.20 (within
the noise there); CG's set-up and the update 0.15–0.16 → 0.05–0.07 SGD steps. Two more runs
after (load 0.7–0.9): the MLP k = 1 2.42–2.45, k = 2 3.52–3.64, k = 10 12.53–12.59 (fixed part
1.23–1.31, per product 1.12–1.19); the CNN k = 1 2.24–2.32, k = 2 2.95–2.97, k = 10 8.61–8.85.

Since CG's last iteration takes only ``J s`` on the steps that do not record the final residual
(``--k 1 2 10 --repeats 9``; the code before and after alternated, two processes each, load
0.8–1.0; before → a run's mean step, and the step without / with the residual): the MLP
k = 1 2.43–2.45 → 1.90–1.93 (1.85–1.88 / 2.36–2.39), k = 2 3.59–3.62 → 3.08 (3.02–3.04 /
3.44–3.56), k = 10 12.63–12.72 → 11.93–12.21 (11.87–12.15 / 12.50–12.53); the CNN k = 1
2.29–2.36 → 1.98–2.04, k = 2 2.91–3.11 → 2.65–2.69, k = 10 8.44–8.69 → 8.31–8.36. A step
that records the residual costs what every step did before. The MLP's k = 10 sits on its
goal, 12.2: nine products at 1.11 SGD steps' arithmetic each, the last iteration's ``J s``
at 0.56 and the fixed part at 1.11 leave no room for CG's vector work (0.07–0.09 per
iteration).

With ``--time-to-target`` it instead runs, through :func:`curvebench.harness.run` at a large
batch, ``sgn`` with its defaults against ``sgd`` over a small learning-rate grid on
``digits-mlp`` and ``mnist1d-mlp``, and prints steps- and seconds-to-target (the problems'
registered targets) and how many grid points reach the target::

    python benchmarks/sgn_costs.py --time-to-target [--batch 1000] [--eval-every 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kfac_peers import (  # noqa: E402
    _passes,
    arithmetic_per_step,
    check_workloads,
    merge_processes,
    parse_device,
    per_process,
    run_processes,
    with_range,
    workloads,
)

from curvebench.curvature import Linearization, flatten, unflatten  # noqa: E402
from curvebench.environment import device_description  # noqa: E402
from curvebench.losses import CurvatureLoss  # noqa: E402
from curvebench.operator_counts import OperatorCounter  # noqa: E402
from curvebench.optimizers import get_optimizer  # noqa: E402
from curvebench.optimizers.sgn import GaussNewtonCG  # noqa: E402
from curvebench.problems import get_problem  # noqa: E402
from curvebench.problems.torch_models import torch_dataset  # noqa: E402
from curvebench.timing import (  # noqa: E402
    NullPhaseTimer,
    PhaseTimer,
    add_allocator_option,
    apply_allocator_policy,
)

#: The phases of an SGN step, in the order printed (names of :mod:`curvebench.timing`).
PHASES = ("forward", "backward", "curvature", "solve", "line_search", "update")


def goal(k: int) -> float:
    """Issue 10's budget for an SGN step with ``k`` CG products, in SGD steps."""
    return 1.2 + 1.1 * k


class CPUPhaseTimer(PhaseTimer):
    """A :class:`~curvebench.timing.PhaseTimer` on the process CPU clock (CPU only)."""

    def _now(self) -> float:
        return time.process_time()


Case = tuple[nn.Module, CurvatureLoss, torch.Tensor, torch.Tensor]


def _cases(names: list[str], batch: int, device: torch.device) -> dict[str, Case]:
    return {name: (model.to(device), loss, inputs.to(device), targets.to(device))
            for name, (model, loss, inputs, targets) in _cpu_cases(names, batch).items()}


def _cpu_cases(names: list[str], batch: int) -> dict[str, Case]:
    cases = {}
    for name in names:
        if name in ("mlp", "cnn"):
            (workload,) = workloads([name])
            cases[workload.name] = (workload.model, workload.loss, workload.inputs,
                                    workload.targets)
            continue
        problem = get_problem(name)
        data = torch_dataset(problem.dataset())
        generator = torch.Generator().manual_seed(0)
        index = torch.randint(0, len(data.x_train), (batch,), generator=generator)
        cases[f"{name} b{batch}"] = (problem.build_model(seed=0), problem.make_loss(),
                                     torch.as_tensor(data.x_train[index]).float(),
                                     torch.as_tensor(data.y_train[index]).long())
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


def measure(*, names: list[str], batch: int, repeats: int, ks: list[int],
            device: torch.device | None = None,
            allocator: str = "system allocator") -> list[dict]:
    """Print every workload's costs (the module's docstring) and return its SGN rows
    (:func:`_measure_case`)."""
    device = torch.device("cpu") if device is None else device
    where = "CUDA events" if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__} on {device_description(device)}, threads "
          f"{torch.get_num_threads()}, {where}, "
          f"median of {repeats} interleaved repeats, load average {_load()}, {allocator}")
    rows = []
    for name, (model, loss, inputs, targets) in _cases(names, batch, device).items():
        rows += _measure_case(name, model, loss, inputs, targets, repeats=repeats, ks=ks)
    print(f"\nload average at the end {_load()}")
    return rows


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _measure_case(name: str, model: nn.Module, loss: CurvatureLoss, inputs: torch.Tensor,
                  targets: torch.Tensor, *, repeats: int, ks: list[int]) -> list[dict]:
    """Time one workload, print its costs, and return a row per clock and ``k``: SGN step ÷
    SGD step as a run's mean (``ratio``), without and with the final residual (``plain``,
    ``recording``), the goal, and the arithmetic and operators ÷ an SGD step's."""
    params = list(model.parameters())

    def gradient() -> None:
        torch.autograd.grad(loss(model(inputs), targets), params)

    linearizations = {method: Linearization(model, loss=loss, inputs=inputs,
                                            targets=targets, jvp_method=method)
                      for method in ("layers", "double_vjp")}
    vector = torch.randn(linearizations["layers"].num_parameters, device=inputs.device)
    cuda = inputs.device.type == "cuda"
    work: dict[str, Callable[[], object]] = {"grad": gradient}
    for method, lin in linearizations.items():
        work[f"ggn[{method}]"] = lambda lin=lin: lin.ggn_vector_product(vector)
    work["ggn[naive]"] = _naive_product(model, loss, inputs, vector)
    theirs = _curvlinops_product(model, loss, inputs, targets, vector)
    if theirs is not None:
        work["curvlinops"] = theirs

    lin = linearizations["layers"]
    work["ggn_quadratic_form"] = lambda: lin.ggn_quadratic_form(vector)
    work["sgd_step"] = _sgd_step(model, loss, inputs, targets)
    setups: dict[str, Callable[[], None]] = {}
    optimizers: dict[str, GaussNewtonCG] = {}
    for k in ks:
        for key, every in ((f"sgn_step[k={k}]", RESIDUAL_EVERY),
                           (f"sgn_step[k={k}]+residual", 1)):
            sgn_model = copy.deepcopy(model)
            optimizer = _sgn(sgn_model, loss, k, residual_every=every)
            # Step 1 records the residual: count one step done, from the same parameters and
            # damping (the count only schedules the residual here: no warm-up, no momentum).
            optimizer.state["gauss_newton"]["step"] = 1
            optimizers[key] = optimizer
            work[key] = lambda optimizer=optimizer: optimizer.step(inputs=inputs, targets=targets)
            setups[key] = _restart(sgn_model, optimizer)

    wall: dict[str, list[float]] = {key: [] for key in work}
    cpu: dict[str, list[float]] = {key: [] for key in work}
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    phases: dict[int, dict[str, list[float]]] = {k: {p: [] for p in PHASES} for k in ks}
    evaluations: dict[int, list[float]] = {k: [] for k in ks}
    for key, fn in work.items():  # warm-up
        setups.get(key, _nothing)()
        fn()
    for optimizer in optimizers.values():
        optimizer.counters.clear()
    by_key = {f"sgn_step[k={k}]": (k, optimizers[f"sgn_step[k={k}]"]) for k in ks}
    for _ in range(repeats):
        for key, fn in work.items():
            # An untimed run of the same work first, as in training, where a step follows a
            # step: else the first item after others pays page faults on the memory they freed
            # (measured: the CNN's first SGN step in a round +0.1 SGD steps of forward pass).
            # Phases come from this untimed run, with a phase timer on; the timed run has none,
            # as in a plain training loop (on a GPU each phase boundary records an event).
            setups.get(key, _nothing)()
            if key in by_key:
                k, optimizer = by_key[key]
                optimizer.phase_timer = PhaseTimer(inputs.device) if cuda else CPUPhaseTimer()
            fn()
            if key in by_key:
                seconds = optimizer.phase_timer.collect()
                for phase in PHASES:
                    phases[k][phase].append(seconds.get(phase, 0.0))
                evaluations[k].append(optimizer.counters["function_evaluations"])
                optimizer.counters.clear()
                optimizer.phase_timer = NullPhaseTimer()
            setups.get(key, _nothing)()
            if cuda:  # the GPU's clock: events around the call, idle launch gaps included
                torch.cuda.synchronize()
                start.record()
                fn()
                end.record()
                end.synchronize()
                wall[key].append(start.elapsed_time(end) / 1e3)
                continue
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[key].append(time.process_time() - start_cpu)
            wall[key].append(time.perf_counter() - start_wall)
        for optimizer in optimizers.values():
            optimizer.counters.clear()
    sgd = arithmetic_per_step(work["sgd_step"], 1)
    arithmetic = {key: arithmetic_per_step(work[call], 1)["flops"] / sgd["flops"]
                  for key, call in (("product", "ggn[layers]"), ("form", "ggn_quadratic_form"))}
    operators = {}
    for k in ks:  # from the state the timed steps started from, amortised as in a run
        counted = {}
        for residual in ("", "+residual"):
            setups[f"sgn_step[k={k}]{residual}"]()
            counted[residual] = arithmetic_per_step(work[f"sgn_step[k={k}]{residual}"], 1)
        arithmetic[k] = counted[""]["flops"] / sgd["flops"]  # a step without the residual
        arithmetic[f"{k} amortised"], operators[k] = (
            _amortised(counted[""][what], counted["+residual"][what]) / sgd[what]
            for what in ("flops", "operators"))
    clocks = (("cuda", wall),) if cuda else (("wall", wall), ("cpu", cpu))
    rows = []
    for clock, times in clocks:
        median = {key: statistics.median(values) for key, values in times.items()}
        grad, ours, sgd_time = median["grad"], median["ggn[layers]"], median["sgd_step"]
        print(f"\n{name} [{clock} clock]: gradient {grad * 1e3:.2f} ms, "
              f"SGD step {sgd_time * 1e3:.2f} ms")
        for method in ("layers", "double_vjp", "naive"):
            print(f"  ggn[{method}]/grad".ljust(28) + f"{median[f'ggn[{method}]'] / grad:6.2f}")
        if "curvlinops" in median:
            print("  curvlinops/ours".ljust(28) + f"{median['curvlinops'] / ours:6.2f}")
        # Median over repeats of (SGN step ÷ the SGD step of the same repeat): load from other
        # processes drifts, and hits both sides of a ratio alike only within one repeat.
        # "ratio" is a run's mean step: RESIDUAL_EVERY − 1 steps without the final residual
        # and one with it (the two columns after the verdict).
        ratios, plain, recording = ({k: statistics.median(
            value(step, with_residual) / sgd for step, with_residual, sgd in zip(
                times[f"sgn_step[k={k}]"], times[f"sgn_step[k={k}]+residual"],
                times["sgd_step"], strict=True)) for k in ks}
            for value in (_amortised, lambda step, _: step, lambda _, step: step))
        print(f"  sgn(k) ÷ SGD step          ratio   goal  flops    ops  verdict       "
              f"step without / with the residual (1 in {RESIDUAL_EVERY})")
        for k in ks:
            row = {"workload": name, "clock": clock, "k": k, "ratio": ratios[k],
                   "plain": plain[k], "recording": recording[k], "goal": goal(k),
                   "flops": arithmetic[f"{k} amortised"], "ops": operators[k],
                   "sgd ms": sgd_time * 1e3}
            rows.append(row)
            print(f"  sgn(k={k})".ljust(28) + f"{row['ratio']:6.2f} {row['goal']:6.1f} "
                  f"{row['flops']:6.2f} {row['ops']:6.2f}  {verdict(row):12}  "
                  f"{plain[k]:6.2f} / {recording[k]:.2f}")
        if clock in ("cpu", "cuda"):
            _print_phases(phases, evaluations, ratios=ratios, sgd_time=sgd_time, grad=grad,
                          ggn=ours, arithmetic=arithmetic)
    return rows


def _sgd_step(model: nn.Module, loss: CurvatureLoss, inputs: torch.Tensor,
              targets: torch.Tensor) -> Callable[[], None]:
    """A ``torch.optim.SGD`` step on a copy of ``model``, the unit of the ratios."""
    sgd_model = copy.deepcopy(model)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=1e-3)

    def sgd_step() -> None:
        sgd.zero_grad(set_to_none=True)
        loss(sgd_model(inputs), targets).backward()
        sgd.step()

    return sgd_step


#: How often registered SGN records CG's final residual (its last iteration then takes a whole
#: product, else the forward half of one).
RESIDUAL_EVERY: int = get_optimizer("sgn").settings["residual_every"]


def _amortised(plain: float, with_residual: float) -> float:
    """The mean step of a run: ``RESIDUAL_EVERY − 1`` steps without the residual, one with."""
    return ((RESIDUAL_EVERY - 1) * plain + with_residual) / RESIDUAL_EVERY


def _sgn(model: nn.Module, loss: CurvatureLoss, k: int, *, residual_every: int) -> GaussNewtonCG:
    """The SGN step measured: exactly ``k`` CG iterations (tolerance 0), line search and
    adaptive damping on, no warm-up."""
    return GaussNewtonCG(model, loss=loss, cg_iterations=k, cg_tolerance=0.0, warmup_steps=0,
                         damping=1e-2, damping_min=1e-2, residual_every=residual_every)


def count_operators(*, names: list[str], batch: int, ks: list[int], steps: int = 20) -> None:
    """Operators dispatched and host reads (GPU synchronisations) per call, on the CPU."""
    print(f"torch {torch.__version__}: operators (views included) and host reads per call, "
          f"{steps} calls each")
    for name, (model, loss, inputs, targets) in _cpu_cases(names, batch).items():
        print(f"\n{name}")
        _count_case(model, loss, inputs, targets, ks=ks, steps=steps)


def _count_case(model: nn.Module, loss: CurvatureLoss, inputs: torch.Tensor,
                targets: torch.Tensor, *, ks: list[int], steps: int) -> None:
    params = list(model.parameters())
    linearization = Linearization(model, loss=loss, inputs=inputs, targets=targets)
    vector = torch.randn(linearization.num_parameters)
    work: dict[str, Callable[[], object]] = {
        "SGD step": _sgd_step(model, loss, inputs, targets),
        "gradient": lambda: torch.autograd.grad(loss(model(inputs), targets), params),
        "linearisation": lambda: Linearization(model, loss=loss, inputs=inputs,
                                               targets=targets),
        "GGN product": lambda: linearization.ggn_vector_product(vector),
        "function evaluation": linearization.evaluate_loss,
    }
    optimizers = {}
    for k in ks:
        optimizers[k] = _sgn(copy.deepcopy(model), loss, k, residual_every=RESIDUAL_EVERY)
        work[f"sgn(k={k}) step"] = (
            lambda optimizer=optimizers[k]: optimizer.step(inputs=inputs, targets=targets))
    print("  " + "call".ljust(22) + "operators".rjust(10) + "of them views".rjust(15)
          + "host reads".rjust(12) + "evaluations".rjust(13))
    for key, fn in work.items():
        fn()  # warm-up
        for optimizer in optimizers.values():
            optimizer.counters.clear()
        with OperatorCounter() as counts:
            for _ in range(steps):
                fn()
        evaluations = sum(o.counters["function_evaluations"] for o in optimizers.values())
        row = (f"  {key.ljust(22)}{counts.total / steps:10.1f}{counts.views / steps:15.1f}"
               f"{counts.host_reads / steps:12.1f}")
        print(row + (f"{evaluations / steps:13.2f}" if key.startswith("sgn") else ""))


def _restart(model: nn.Module, optimizer: GaussNewtonCG) -> Callable[[], None]:
    """Puts ``model`` and ``optimizer`` back to their present state.

    Every timed step starts from the same parameters and damping: repeated steps on one batch
    would drive gradients into subnormal floats, whose arithmetic is much slower on CPUs, and
    change the number of backtracks.
    """
    parameters = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(optimizer.state_dict())

    def restart() -> None:
        model.load_state_dict(parameters)
        optimizer.load_state_dict(copy.deepcopy(state))  # load_state_dict keeps the dicts

    return restart


def _print_phases(phases: dict[int, dict[str, list[float]]], evaluations: dict[int, list[float]],
                  *, ratios: dict[int, float], sgd_time: float, grad: float, ggn: float,
                  arithmetic: dict) -> None:
    """The phases of an SGN step without the final residual in SGD steps (medians over
    repeats, process CPU clock), and for every row that misses its goal, where the excess is."""
    print("  phases of a step without the residual, in SGD steps: forward+backward = "
          "linearisation and gradient, iteration = curvature ÷ k (k − 1 products and the last "
          "iteration's J v)")
    print("  " + "k".ljust(6) + "".join(p.rjust(12) for p in (*PHASES, "iteration", "evals")))
    split = {k: {p: statistics.median(values) / sgd_time for p, values in by_phase.items()}
             for k, by_phase in phases.items()}
    for k, median in split.items():
        row = "".join(f"{median[p]:12.2f}" for p in PHASES)
        print("  " + str(k).ljust(6) + row + f"{median['curvature'] / k:12.2f}"
              + f"{statistics.median(evaluations[k]):12.0f}")
    print(f"  for comparison: one gradient {grad / sgd_time:.2f}, one product alone "
          f"{ggn / sgd_time:.2f} SGD steps")
    ks = sorted(split)
    product_flops, form_flops = arithmetic["product"], arithmetic["form"]
    fixed_flops = {k: arithmetic[k] - (k - 1) * product_flops - form_flops for k in ks}
    print(f"  arithmetic (flops of products and decompositions ÷ an SGD step's): one GGN "
          f"product (J v, then Jᵀu) {product_flops:.2f} (goal 1.1), the last iteration's "
          f"vᵀGv (J v alone) {form_flops:.2f}; the rest of an SGN step "
          f"{min(fixed_flops.values()):.2f}–{max(fixed_flops.values()):.2f} "
          f"(goal 1.2): the linearisation's gradient, the line search's function evaluations")
    # CG's own vector work per iteration: the slope of the solve phase over k.
    work = ((split[ks[-1]]["solve"] - split[ks[0]]["solve"]) / (ks[-1] - ks[0])
            if len(ks) > 1 else 0.0)
    for k in ks:
        if ratios[k] <= goal(k):
            continue
        median = split[k]
        linearisation = median["forward"] + median["backward"]
        rest = median["update"] + max(median["solve"] - k * work, 0.0)
        fixed = linearisation + median["line_search"] + rest
        product = median["curvature"] / k
        evals = round(statistics.median(evaluations[k])) - 1
        print(f"  k={k} misses by {ratios[k] - goal(k):.2f}: fixed part {fixed:.2f} (goal 1.2) = "
              f"linearisation {linearisation:.2f} (a gradient: {grad / sgd_time:.2f}) + "
              f"{evals} function evaluation(s) {median['line_search']:.2f} + CG set-up and "
              f"update {rest:.2f}; per iteration {product + work:.2f} (goal 1.1) = products "
              f"and the last J v {product:.2f} (a product alone: {ggn / sgd_time:.2f}) + CG's "
              f"vector work {work:.2f}")


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


#: The fields of a row that differ between processes: medians with ranges over ``--processes``.
TIMED_FIELDS = ("ratio", "plain", "recording", "sgd ms")


def across_processes(runs: list[list[dict]]) -> list[dict]:
    """One row per workload, clock and ``k`` from several processes' rows (each run the same
    rows): the timed fields (:data:`TIMED_FIELDS`) as medians, each process's value kept."""
    return merge_processes(runs, key=lambda r: (r["workload"], r["clock"], r["k"]),
                           fields=TIMED_FIELDS)


def verdict(row: dict) -> str:
    """``"pass"`` where the ratio meets the goal in every process, ``"pass in 2 of 3"``
    where in some, else ``"MISS by 0.12"`` (the median's excess)."""
    return (_passes(per_process(row, "ratio"), row["goal"])
            or f"MISS by {row['ratio'] - row['goal']:.2f}")


def summary(rows: list[dict], *, clock: str) -> str:
    """The ``clock``'s rows of several processes as a table: a run's mean SGN step ÷ SGD
    step with its range, the goal and the verdict, the steps without and with the residual,
    and the arithmetic and operators ÷ an SGD step's (the same in every process)."""
    from tabulate import tabulate

    return tabulate([{
        "workload": r["workload"], "k": r["k"], "sgn/sgd": with_range(r, "ratio"),
        "goal": r["goal"], "verdict": verdict(r), "without / with residual":
            f"{r['plain']:.2f} / {r['recording']:.2f}",
        "flops/sgd": r["flops"], "ops/sgd": r["ops"], "sgd ms": with_range(r, "sgd ms"),
    } for r in rows if r["clock"] == clock], headers="keys", floatfmt=".2f")


def child_arguments(args: argparse.Namespace, *, save: str) -> list[str]:
    """The arguments of one of ``--processes``' measuring processes: the same settings, one
    process, its rows written to ``save``."""
    return ["--workloads", *args.workloads, "--batch", str(args.batch),
            "--repeats", str(args.repeats), "--threads", str(args.threads),
            "--k", *map(str, args.k), "--device", args.device, "--allocator", args.allocator,
            "--processes", "1", "--save", save]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["mlp", "cnn"],
                        help="mlp, cnn (issue 10's) or registered problem names")
    parser.add_argument("--batch", type=int, default=512,
                        help="batch of registered problems (mlp and cnn have their own)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    parser.add_argument("--time-to-target", action="store_true")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (CUDA-event timing)")
    parser.add_argument("--count-operators", action="store_true",
                        help="count operators and host reads per call instead of timing")
    parser.add_argument("--processes", type=int, default=1,
                        help="measure in this many fresh processes, one after another, and "
                        "print medians, ranges and passes per process")
    parser.add_argument("--save", help="also write the SGN rows as JSON to this file")
    add_allocator_option(parser)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    device = parse_device(parser, args.device)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    check_workloads(parser, args.workloads)
    if (args.processes > 1 or args.save) and (args.time_to_target or args.count_operators):
        parser.error("--processes and --save time SGN's steps: not with --time-to-target "
                     "or --count-operators")
    if args.time_to_target and device.type != "cpu":
        parser.error("--time-to-target runs on the CPU only")
    clock = "cuda" if device.type == "cuda" else "cpu"
    if args.processes > 1:
        saved = run_processes(__file__, count=args.processes,
                              arguments=lambda save: child_arguments(args, save=save))
        rows = across_processes([s["rows"] for s in saved])
        loads = ", ".join(f"{s['load']:.1f}" for s in saved)
        print(f"torch {torch.__version__} on {device_description(device)}, threads "
              f"{args.threads}, {'CUDA events' if clock == 'cuda' else 'process CPU time'}, "
              f"median of {args.repeats} interleaved repeats in each of {args.processes} "
              f"processes; medians over the processes (ranges in brackets), their load "
              f"averages at the end {loads}; "
              f"{saved[0]['allocator']}")
        print(summary(rows, clock=clock))
        return
    allocator = apply_allocator_policy(args.allocator)
    torch.set_num_threads(args.threads)
    if args.time_to_target:
        time_to_target(batch=args.batch, eval_every=args.eval_every)
    elif args.count_operators:
        count_operators(names=args.workloads, batch=args.batch, ks=args.k)
    else:
        rows = measure(names=args.workloads, batch=args.batch, repeats=args.repeats,
                       ks=args.k, device=device, allocator=allocator)
        if args.save:
            with open(args.save, "w") as handle:
                json.dump({"load": os.getloadavg()[0] if hasattr(os, "getloadavg")
                           else float("nan"), "device description": device_description(device),
                           "threads": args.threads, "repeats": args.repeats,
                           "allocator": allocator, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
