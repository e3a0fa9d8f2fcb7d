"""Harness: steps-to-target, divergence, timing that excludes evaluation, records."""

from __future__ import annotations

import json
import math

import pytest
import torch

from curvebench.backends import torch as torch_backend
from curvebench.environment import DeviceError, device_description
from curvebench.harness import first_reaching, plan_run, run
from curvebench.optimizers import OPTIMIZERS, CurvatureOptimizer, OptimizerSpec
from curvebench.problems import Budget, Target, get_problem
from curvebench.problems.offline_problems import linreg_optimum
from curvebench.records import RunRecord


class ScriptedOptimizer(CurvatureOptimizer):
    """Jumps to the least-squares solution at ``jump_step``; writes NaN at ``nan_step``."""

    def __init__(self, model, *, loss, jump_step: int = 0, nan_step: int = 0):
        super().__init__(model, loss=loss, defaults={})
        self.jump_step, self.nan_step, self.calls = jump_step, nan_step, 0

    def curvature_step(self, *, inputs, targets):
        self.calls += 1
        value = self.loss(self.model(inputs), targets).detach()
        weight, bias = self.model.weight, self.model.bias
        with torch.no_grad():
            if self.calls == self.jump_step:
                data = get_problem("synthetic-linreg").dataset()
                x = torch.as_tensor(data.x_train).double()  # arrays or tensors
                x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
                y = torch.as_tensor(data.y_train).double()
                solution = torch.linalg.lstsq(x, y).solution
                weight.copy_(solution[:-1].T)
                bias.copy_(solution[-1])
            if self.calls == self.nan_step:
                weight.fill_(math.nan)
        self.counters["forward_passes"] += 1
        self.step_info = {"calls": float(self.calls)}
        return value


@pytest.fixture
def scripted():
    spec = OptimizerSpec(
        name="scripted-test", description="test double", reference="tests",
        factory=lambda *, model, loss, **hp: ScriptedOptimizer(model, loss=loss, **hp),
        defaults={"jump_step": 0, "nan_step": 0}, needs_curvature=True)
    OPTIMIZERS.register(spec)
    yield spec.name
    OPTIMIZERS.unregister(spec.name)


def test_first_reaching_on_constructed_trajectory():
    target = Target(metric="test_accuracy", value=0.9, direction="max", provenance="test")
    steps, seconds = [0, 10, 20, 30, 40], [0.0, 1.0, 2.0, 3.0, 4.0]
    assert first_reaching(steps=steps, seconds=seconds, values=[0.1, 0.5, 0.9, 0.95, 0.8],
                          target=target) == (20, 2.0)
    assert first_reaching(steps=steps, seconds=seconds, values=[0.1, math.nan, 0.89, 0.5, 0.2],
                          target=target) is None
    low = Target(metric="train_loss", value=1.0, direction="min", provenance="test")
    assert first_reaching(steps=steps, seconds=seconds, values=[3, 2, math.nan, 1.0, 0.5],
                          target=low) == (30, 3.0)


def test_steps_to_target_is_first_evaluation_after_reaching(scripted):
    assert get_problem("synthetic-linreg").target.value > linreg_optimum()
    record = run(problem="synthetic-linreg", optimizer=scripted, hyperparameters={"jump_step": 7},
                 eval_every=1, budget=Budget(max_steps=50), batch_size=1024)
    assert record.status == "reached"
    assert record.steps_to_target == 7 and record.steps_run == 7
    assert record.seconds_to_target == pytest.approx(record.history["seconds"][6])
    assert record.history["calls"] == [float(i) for i in range(1, 8)]
    assert record.counters["forward_passes"] == 7


def test_no_stop_at_target_keeps_training(scripted):
    record = run(problem="synthetic-linreg", optimizer=scripted, hyperparameters={"jump_step": 3},
                 eval_every=5, budget=Budget(max_steps=12), stop_at_target=False)
    assert record.status == "reached" and record.steps_to_target == 5
    assert record.steps_run == 12 and record.evaluations["step"] == [0, 5, 10, 12]


def test_nan_is_diverged_at_that_step(scripted):
    record = run(problem="synthetic-linreg", optimizer=scripted, hyperparameters={"nan_step": 5},
                 eval_every=100, budget=Budget(max_steps=50))
    assert record.status == "diverged"
    assert record.steps_run == 6  # the loss evaluated at the NaN parameters is step 6's
    assert math.isnan(record.history["loss"][-1])
    json.dumps(record.to_dict(), allow_nan=False)  # stored as strict JSON


def test_exploding_loss_is_diverged():
    record = run(problem="synthetic-linreg", optimizer="sgd", hyperparameters={"lr": 50.0},
                 budget=Budget(max_steps=200))
    assert record.status == "diverged" and record.steps_run < 200


def test_budget_status_when_target_missed():
    record = run(problem="digits-logreg", optimizer="sgd", hyperparameters={"lr": 1e-4},
                 budget=Budget(max_steps=5))
    assert record.status == "budget"
    assert record.steps_to_target is None and record.seconds_to_target is None


def test_slow_evaluation_does_not_inflate_measured_time(monkeypatch):
    """A fake clock: every reading advances it 1 ms, every evaluation advances it 100 s."""
    from types import SimpleNamespace

    from curvebench import timing

    clock = {"now": 0.0}

    def perf_counter() -> float:
        clock["now"] += 1e-3
        return clock["now"]

    real = torch_backend.evaluate

    def slow(*args, **kwargs):
        clock["now"] += 100.0
        return real(*args, **kwargs)

    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(torch_backend, "evaluate", slow)
    record = run(problem="digits-logreg", optimizer="sgd", eval_every=1,
                 budget=Budget(max_steps=20), stop_at_target=False)
    assert len(record.evaluations["step"]) == 21  # 2100 fake seconds of evaluation
    assert record.seconds < 1.0  # only the clock readings inside the steps count
    assert record.history["seconds"] == sorted(record.history["seconds"])
    assert record.evaluations["seconds"][-1] == pytest.approx(record.seconds)


def test_max_seconds_budget():
    record = run(problem="digits-logreg", optimizer="sgd", hyperparameters={"lr": 1e-4},
                 budget=Budget(max_seconds=0.05))
    assert record.status == "budget" and 0.05 <= record.seconds < 1.0


def test_record_round_trips_and_has_environment():
    record = run(problem="digits-mlp", optimizer="adam", budget=Budget(max_steps=5))
    again = RunRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again.config == record.config and again.history["loss"] == record.history["loss"]
    env = record.environment
    for key in ("python", "torch", "curvebench", "device", "device_name", "threads", "dtype",
                "tf32_matmul", "cpu_capability"):
        assert key in env
    assert env["tf32_matmul"] is False
    # the instruction set torch's CPU kernels use: ratios against an SGD step depend on it
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert device_description(torch.device("cpu")) == (f"{env['device_name']}, "
                                                      f"{env['cpu_capability']}")
    assert record.peak_memory_bytes > 0
    assert set(record.phase_seconds) == {"forward", "backward", "update"}
    assert record.counters == {"forward_passes": 5, "backward_passes": 5}


def test_float64_runs():
    record = run(problem="synthetic-linreg", optimizer="sgd", dtype="float64",
                 budget=Budget(max_steps=3))
    assert record.environment["dtype"] == "float64" and record.steps_run == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_unavailable_is_a_clear_error():
    with pytest.raises(DeviceError, match="CUDA was requested"):
        plan_run(problem="digits-mlp", optimizer="sgd", device="cuda")


def test_plan_run_validates():
    with pytest.raises(ValueError, match="batch size"):
        plan_run(problem="digits-mlp", optimizer="sgd", batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        plan_run(problem="digits-mlp", optimizer="sgd", dtype="float16")
    a = plan_run(problem="digits-mlp", optimizer="sgd", hyperparameters={"lr": 0.1})
    b = plan_run(problem="digits-mlp", optimizer="sgd")
    assert a.key() == b.key()  # explicit default == implicit default
    c = plan_run(problem="digits-mlp", optimizer="sgd", hyperparameters={"lr": "0.2"})
    assert c.key() != a.key() and c.hyperparameter_dict["lr"] == 0.2


def test_phase_timer_counts_nested_phases_once(monkeypatch):
    from types import SimpleNamespace

    from curvebench import timing

    ticks = iter(range(100))
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    timer = timing.PhaseTimer("cpu")
    with timer.phase("solve"):  # t=0
        with timer.phase("curvature"):  # t=1
            pass  # leaves at t=2
        with timer.phase("curvature"):  # t=3
            with timer.phase("curvature"):  # re-entrant, t=4
                pass  # t=5
            pass  # t=6
    # leaves solve at t=7
    assert timer.collect() == {"solve": 3, "curvature": 4}  # 7 ticks in all
    assert timer.collect() == {}


def test_phase_timer_laps(monkeypatch):
    from types import SimpleNamespace

    from curvebench import timing

    ticks = iter([0.0, 1.0, 3.0, 6.0])
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    timer = timing.PhaseTimer("cpu")
    timer.start_laps()
    for name in ("forward", "backward", "update"):
        timer.lap(name)
    assert timer.collect() == {"forward": 1.0, "backward": 2.0, "update": 3.0}


def test_backend_is_part_of_the_identity_and_legacy_keys_are_kept():
    import dataclasses

    config = plan_run(problem="digits-mlp", optimizer="adam")
    assert config.backend == "torch"
    jax_config = dataclasses.replace(config, backend="jax")
    legacy = dataclasses.replace(config, backend=None)
    assert len({config.key(), jax_config.key(), legacy.key()}) == 3
    from curvebench.records import RunConfig

    data = legacy.to_dict()
    del data["backend"]  # a record written before the field existed keeps its hash
    assert RunConfig.from_dict(data).key() == legacy.key()


@pytest.mark.parametrize(("argv", "message"), [
    (["--optimizer", "adam", "--backend", "nope"], "unknown backend 'nope'; known: jax, torch"),
    (["--optimizer", "kfac-jax"], "optimizer 'kfac-jax' does not run on the torch backend"),
])
def test_cli_unknown_or_unsupported_backend_is_one_line(tmp_path, capsys, argv, message):
    from curvebench.cli import main

    out = tmp_path / "results"
    assert main(["run", "--problem", "digits-mlp", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()  # nothing stored, nothing created


def test_run_loop_and_backend_registry_import_neither_torch_nor_jax():
    import subprocess
    import sys

    code = ("import sys; import curvebench.harness, curvebench.backends, curvebench.stepping; "
            "print(sorted(m for m in ('torch', 'jax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"
