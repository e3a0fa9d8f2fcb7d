"""The torch backend on a CUDA device: the curvature core, every registered optimizer, the
harness's clock and records, and (where JAX sees a GPU) the JAX backend.

Skipped where torch sees no CUDA device (CI has none). On a GPU machine:
``pytest tests/test_cuda.py``. Everything runs in float64 and is compared with the same
computation on the CPU (itself checked against dense references in the CPU tests), so a device
code path that differs in more than rounding fails here.
"""

from __future__ import annotations

import math

import pytest
import torch

from curvebench.curvature import Linearization
from curvebench.harness import run
from curvebench.losses import CrossEntropyLoss
from curvebench.optimizers import OPTIMIZERS
from curvebench.problems import Budget, get_problem
from tests.dense_reference import dense_ggn
from tests.test_curvature import MODELS, _dense_from_products, _problem, _relative_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
#: Float64 on the GPU against float64 on the CPU: only the order of summation differs.
TOLERANCE = 1e-9
NAMES = [name for name in OPTIMIZERS.names() if "torch" in OPTIMIZERS.get(name).backends]


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_ggn_products_on_cuda_match_the_dense_ggn(model_name):
    model, loss, inputs, targets = _problem(model_name, "cross_entropy")
    reference = dense_ggn(model, loss, inputs, targets)
    for jvp_method in ("layers", "double_vjp"):
        lin = Linearization(model.to(CUDA), loss=loss, inputs=inputs.to(CUDA),
                            targets=targets.to(CUDA), jvp_method=jvp_method)
        ours = _dense_from_products(
            lambda v, lin=lin: lin.ggn_vector_product(v.to(CUDA)).cpu(), lin.num_parameters)
        assert _relative_error(ours, reference) <= TOLERANCE, jvp_method
        model.cpu()


def test_in_place_activations_and_a_reused_module_on_cuda():
    """The model patterns users write, on the GPU: in-place activations after Conv and Linear
    layers, one activation module used twice, and a non-Sequential forward."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 3, 3)
            self.act = torch.nn.ReLU(inplace=True)
            self.fc1 = torch.nn.Linear(12, 5)
            self.fc2 = torch.nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.act(self.fc1(self.act(self.conv(x)).flatten(1))))

    torch.manual_seed(3)
    model = Net().double()
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(6, 1, 4, 4, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 3, (6,), generator=generator)
    loss = CrossEntropyLoss()
    reference = dense_ggn(model, loss, inputs, targets)
    lin = Linearization(model.to(CUDA), loss=loss, inputs=inputs.to(CUDA),
                        targets=targets.to(CUDA))
    ours = _dense_from_products(lambda v: lin.ggn_vector_product(v.to(CUDA)).cpu(),
                                lin.num_parameters)
    assert _relative_error(ours, reference) <= TOLERANCE


def _problem_for(name: str) -> str:
    """The CNN problem where the optimizer supports convolutions and accepts its size, else
    the linear one."""
    spec = OPTIMIZERS.get(name)
    cnn = get_problem("digits-cnn")
    reason = spec.unsupported_reason(tags=cnn.tags, num_parameters=cnn.num_parameters)
    return "digits-cnn" if reason is None else "digits-logreg"


def _draws_random_numbers(name: str, problem: str) -> bool:
    """Whether the optimizer has its own generator (probes, Monte-Carlo labels): CUDA's
    random streams differ from the CPU's, so only its behaviour, not its trajectory, can
    match."""
    spec = OPTIMIZERS.get(name)
    p = get_problem(problem)
    optimizer = spec.build(model=p.build_model(seed=0), loss=p.make_loss())
    return getattr(optimizer, "generator", None) is not None


@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_runs_on_cuda_as_on_the_cpu(name):
    problem = _problem_for(name)
    kwargs = dict(problem=problem, optimizer=name, seed=0, dtype="float64",
                  budget=Budget(max_steps=6), stop_at_target=False, eval_every=3)
    on_gpu = run(device="cuda", **kwargs)
    assert on_gpu.status == "budget", on_gpu.error
    assert on_gpu.environment["device"].startswith("cuda")
    assert on_gpu.environment.get("device_name")
    assert on_gpu.peak_memory_bytes and on_gpu.peak_memory_bytes > 0
    assert all(math.isfinite(x) for x in on_gpu.history["loss"])
    # Phases are CUDA-event intervals inside the synchronised step: non-negative, and they
    # add up to no more than the steps' time.
    assert all(seconds >= 0 for seconds in on_gpu.phase_seconds.values())
    assert sum(on_gpu.phase_seconds.values()) <= on_gpu.seconds * 1.05 + 1e-3
    on_cpu = run(device="cpu", **kwargs)
    if _draws_random_numbers(name, problem):
        assert on_gpu.evaluations["train_loss"][-1] < on_gpu.evaluations["train_loss"][0]
        return
    # How far the summation order alone moves this method's trajectory: the same run on the
    # CPU with two threads (long CG solves, e.g. HF's, amplify rounding by orders of magnitude).
    reordered = run(device="cpu", threads=2, **kwargs)
    for key in ("history", "evaluations"):
        field = "loss" if key == "history" else "train_loss"
        _assert_same(getattr(on_gpu, key)[field], getattr(on_cpu, key)[field],
                     spread=getattr(reordered, key)[field])


def _assert_same(ours: list[float], expected: list[float],
                 spread: list[float] | None = None) -> None:
    """Float64 values (recorded as Python floats) equal up to summation order: within 1e-7
    relative, or 100 times the difference ``spread`` (the same computation summed in another
    order) shows."""
    ours_t, expected_t = (torch.tensor(v, dtype=torch.float64) for v in (ours, expected))
    tolerance = 1e-7 * expected_t.abs() + 1e-10
    if spread is not None:
        moved = (torch.tensor(spread, dtype=torch.float64) - expected_t).abs()
        tolerance = torch.maximum(tolerance, 100 * moved)
    assert ((ours_t - expected_t).abs() <= tolerance).all(), (ours, expected, spread)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "sgn"])
def test_jax_on_a_gpu_matches_torch_on_cuda(optimizer):
    jax = pytest.importorskip("jax")
    try:
        jax.devices("gpu")
    except RuntimeError:
        pytest.skip("JAX sees no GPU here")
    kwargs = dict(problem="digits-mlp", optimizer=optimizer, seed=0, dtype="float64",
                  device="cuda", budget=Budget(max_steps=20), stop_at_target=False,
                  eval_every=10)
    torch_record = run(backend="torch", **kwargs)
    jax_record = run(backend="jax", **kwargs)
    assert jax_record.status == "budget", jax_record.error
    assert jax_record.environment["device"].startswith("cuda")
    _assert_same(jax_record.history["loss"], torch_record.history["loss"])


def test_phase_timer_reuses_its_events_and_times_nested_phases():
    """CUDA-event phases, exclusive of nested ones, over several collects (events reused):
    together they cover the bracketed work once (no interval counted twice)."""
    from curvebench.timing import PhaseTimer

    timer = PhaseTimer(CUDA)
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with timer.phase("outer"):
            torch.cuda._sleep(1_000_000)
            with timer.phase("inner"):
                torch.cuda._sleep(4_000_000)
        end.record()
        seconds = timer.collect()
        total = start.elapsed_time(end) / 1e3
        assert set(seconds) == {"outer", "inner"}
        assert min(seconds.values()) > 0
        assert 0.9 * total <= sum(seconds.values()) <= total + 1e-5
    assert timer._free_events  # handed back for the next step


def test_sgn_with_its_default_tolerance_reads_the_gpu_once_for_cg():
    """On a GPU a positive CG tolerance (``sgn``'s default) keeps CG's scalars on the device:
    a step's host reads do not grow with the CG iterations, and the float64 trajectory is the
    CPU's (which tests after every product)."""
    from curvebench.operator_counts import OperatorCounter
    from curvebench.optimizers.sgn import GaussNewtonCG

    torch.manual_seed(0)
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 3, (32,))
    reads, parameters = {}, {}
    for device, k in ((CUDA, 2), (CUDA, 6), (torch.device("cpu"), 6)):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                                    torch.nn.Linear(8, 3)).double().to(device)
        optimizer = GaussNewtonCG(model, loss=CrossEntropyLoss(), cg_iterations=k,
                                  cg_tolerance=1e-6, warmup_steps=0)
        with OperatorCounter() as counts:
            for _ in range(3):
                optimizer.step(inputs=x.to(device), targets=y.to(device))
        reads[device.type, k] = counts.host_reads - optimizer.counters["function_evaluations"]
        parameters[device.type, k] = torch.cat([p.detach().cpu().flatten()
                                                for p in model.parameters()])
    # one read for CG per step, one per line-search evaluation; function_evaluations counts
    # those and the linearising forward pass, one per step
    assert reads["cuda", 2] == reads["cuda", 6] == 0
    assert reads["cpu", 6] > reads["cuda", 6]
    torch.testing.assert_close(parameters["cuda", 6], parameters["cpu", 6], rtol=1e-9, atol=1e-12)


def test_kflr_with_the_bias_apart_from_a_runs_on_cuda_as_on_the_cpu():
    """``bias_factor="separate"`` (its own bias block, a matrix-vector product or two
    triangular solves) on a CNN: the float64 trajectory on the GPU is the CPU's."""
    kwargs = dict(problem="digits-cnn", optimizer="kflr", seed=0, dtype="float64",
                  budget=Budget(max_steps=6), stop_at_target=False, eval_every=3,
                  hyperparameters={"bias_factor": "separate"})
    on_gpu, on_cpu = run(device="cuda", **kwargs), run(device="cpu", **kwargs)
    assert on_gpu.status == on_cpu.status == "budget", on_gpu.error
    reordered = run(device="cpu", threads=2, **kwargs)
    _assert_same(on_gpu.history["loss"], on_cpu.history["loss"],
                 spread=reordered.history["loss"])
