"""The JAX backend through the harness, the CLI and studies: identity, parity, compile time."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curvebench import stepping
from curvebench.cli import main
from curvebench.harness import run
from curvebench.problems import Budget, get_problem
from curvebench.records import RunRecord
from curvebench.store import RunStore
from curvebench.study import parse_study


def _relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def test_jax_and_torch_runs_are_two_records(tmp_path):
    """adam on digits-mlp on both backends: two keys, both stored, float32 losses agree."""
    kwargs = dict(problem="digits-mlp", optimizer="adam", budget=Budget(max_steps=20),
                  eval_every=10, stop_at_target=False)
    records = {backend: run(**kwargs, backend=backend) for backend in ("torch", "jax")}
    torch_record, jax_record = records["torch"], records["jax"]
    assert jax_record.status == "budget", jax_record.error
    assert torch_record.config.key() != jax_record.config.key()
    assert (torch_record.config.backend, jax_record.config.backend) == ("torch", "jax")
    store = RunStore(tmp_path)
    for record in records.values():
        store.write(record)
    stored = {r.config.backend: r for r in store.scan()[0]}
    assert set(stored) == {"torch", "jax"}
    env = stored["jax"].environment
    assert env["backend"] == "jax" and env["jax"] and env["jaxlib"] and env["optax"]
    assert env["kfac_jax"]  # the library versions a JAX record names
    assert stored["torch"].environment["backend"] == "torch"
    # same weights and batches: float32 trajectories and evaluations agree closely
    assert _relative(jax_record.history["loss"], torch_record.history["loss"]) < 1e-4
    assert _relative(jax_record.evaluations["train_loss"],
                     torch_record.evaluations["train_loss"]) < 1e-4
    assert jax_record.counters == torch_record.counters


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.05), ("adam", 0.01)])
def test_float64_trajectories_agree_through_the_harness(optimizer, lr):
    """100 steps in float64 from the same weights and batches: every loss to 1e-10."""
    kwargs = dict(problem="digits-mlp", optimizer=optimizer, dtype="float64",
                  hyperparameters={"lr": lr}, budget=Budget(max_steps=100), eval_every=50,
                  stop_at_target=False)
    torch_record = run(**kwargs, backend="torch")
    jax_record = run(**kwargs, backend="jax")
    assert jax_record.steps_run == torch_record.steps_run == 100
    losses = torch_record.history["loss"]
    assert losses[-1] < 0.5 * losses[0]  # it trained, so the comparison means something
    assert _relative(jax_record.history["loss"], losses) < 1e-10
    assert _relative(jax_record.evaluations["test_loss"],
                     torch_record.evaluations["test_loss"]) < 1e-10
    assert jax_record.environment["x64"] is True


def _offline_problems() -> list[str]:
    from curvebench.problems import PROBLEMS

    return [name for name in PROBLEMS.names() if PROBLEMS.get(name).offline]


@pytest.mark.parametrize("problem", _offline_problems())
def test_every_offline_problem_runs_sgn_alike_on_both_backends(problem):
    """Every offline problem on both backends through the harness: three float64 SGN steps
    (forward, GGN products, CG, line search on each architecture) and the evaluations agree."""
    kwargs = dict(problem=problem, optimizer="sgn", dtype="float64", batch_size=32,
                  hyperparameters={"cg_iterations": 2}, budget=Budget(max_steps=3),
                  eval_every=3, stop_at_target=False)
    torch_record = run(**kwargs, backend="torch")
    jax_record = run(**kwargs, backend="jax")
    assert torch_record.status == jax_record.status == "budget", jax_record.error
    assert _relative(jax_record.history["loss"], torch_record.history["loss"]) < 1e-8
    assert _relative(jax_record.evaluations["train_loss"],
                     torch_record.evaluations["train_loss"]) < 1e-8


def test_compile_happens_before_the_first_timed_step(monkeypatch):
    """Structural: compilation runs before training, no step compiles, and its seconds are
    stored apart (``phase_seconds["compile"]``) and never in the steps' seconds."""
    from curvebench.jax_backend.training import JaxStepper

    events: list[tuple[str, float]] = []
    real_compile, real_take_step = JaxStepper.compile, stepping.take_step

    def compile_spy(self, **batch):
        seconds = real_compile(self, **batch)
        events.append(("compile", self.compile_seconds))
        return seconds

    def step_spy(stepper, batches, *, clock):
        before = stepper.compile_seconds
        outcome = real_take_step(stepper, batches, clock=clock)
        events.append(("step", stepper.compile_seconds - before))
        return outcome

    monkeypatch.setattr(JaxStepper, "compile", compile_spy)
    monkeypatch.setattr(stepping, "take_step", step_spy)
    record = run(problem="digits-logreg", optimizer="sgd", backend="jax",
                 budget=Budget(max_steps=6), eval_every=3, stop_at_target=False)
    assert record.status == "budget", record.error
    assert [kind for kind, _ in events] == ["compile"] + ["step"] * 6
    compiled = events[0][1]
    assert compiled > 0 and record.phase_seconds["compile"] == compiled
    assert all(seconds == 0.0 for kind, seconds in events[1:])  # no step compiled anything
    assert record.seconds == pytest.approx(record.history["seconds"][-1])
    json.dumps(record.to_dict(), allow_nan=False)
    assert RunRecord.from_dict(record.to_dict()).config.backend == "jax"


def test_kfac_jax_reaches_the_digits_mlp_target_through_the_harness():
    record = run(problem="digits-mlp", optimizer="kfac-jax", backend="jax", eval_every=10)
    assert record.status == "reached", (record.status, record.error, record.final)
    assert record.environment["kfac_jax"]  # the library version
    assert record.notes["library"] == f"kfac-jax {record.environment['kfac_jax']}"
    assert record.phase_seconds["compile"] > 0


def test_cli_run_backend_jax_end_to_end(tmp_path, capsys):
    argv = ["run", "--problem", "digits-logreg", "--optimizer", "adam", "--backend", "jax",
            "--steps", "5", "--eval-every", "5", "--out", str(tmp_path)]
    assert main(argv) == 0
    records = RunStore(tmp_path).scan()[0]
    assert len(records) == 1 and records[0].config.backend == "jax"
    assert records[0].steps_run == 5 and records[0].environment["backend"] == "jax"
    assert "1 run(s) stored" in capsys.readouterr().out
    assert main(argv) == 0  # the same configuration again: skipped, still one record
    assert len(RunStore(tmp_path).scan()[0]) == 1


def test_cli_bad_jax_hyperparameter_is_one_line(tmp_path, capsys):
    code = main(["run", "--problem", "digits-mlp", "--optimizer", "kfac-jax", "--backend",
                 "jax", "--hp", "initial_damping=-1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "initial_damping" in err
    assert not (tmp_path / "r").exists()


def test_study_backends_key_expands_and_skips_with_reasons():
    study = parse_study({
        "problems": ["digits-mlp"], "seeds": [0], "backends": ["torch", "jax"],
        "budget": {"max_steps": 5},
        "optimizers": {"adam": {}, "kfac-jax": {}, "kflr": {}},
    })
    configs = study.run_configs()
    pairs = sorted((c.optimizer, c.backend) for c in configs)
    assert pairs == [("adam", "jax"), ("adam", "torch"), ("kfac-jax", "jax"), ("kflr", "torch")]
    skipped = {(o, next(b for b in ("torch", "jax") if f"the {b} backend" in r))
               for _, o, r in study.incompatible()}
    assert skipped == {("kfac-jax", "torch"), ("kflr", "jax")}
    study.check_buildable()
    assert get_problem("digits-mlp").name == configs[0].problem


def test_sweep_of_a_two_backend_study_stores_both_and_tables_them_apart(tmp_path, capsys):
    study = tmp_path / "two.toml"
    text = ('problems = ["digits-logreg"]\nseeds = [0]\nbackends = ["torch", "jax"]\n'
            'eval_every = 3\n[budget]\nmax_steps = 3\n[optimizers.adam]\n')
    study.write_text(text + "[optimizers.kfac-jax]\n")
    out = tmp_path / "results"
    assert main(["sweep", str(study), "--out", str(out), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "skipping kfac-jax on digits-logreg" in captured.err
    assert "the torch backend" in captured.err
    assert "adam [jax]" in captured.out and "kfac-jax [jax]" in captured.out
    assert main(["sweep", str(study), "--out", str(out), "--backend", "nope"]) == 2
    assert "unknown backend 'nope'" in capsys.readouterr().err
    study.write_text(text)
    assert main(["sweep", str(study), "--out", str(out)]) == 0
    assert sorted(r.config.backend for r in RunStore(out).scan()[0]) == ["jax", "torch"]
    table = capsys.readouterr().out
    assert "adam [jax]" in table and "adam [torch]" in table  # never pooled into one row


def test_a_jax_runs_threads_size_xlas_cpu_pool_in_a_new_process(tmp_path):
    """``--threads 2`` in a fresh process: XLA's CPU pool starts with two threads and the record
    says so; in a process whose JAX computes on one, a two-thread JAX run is refused before
    it runs (one line), and a one-thread run is accepted."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NPROC"}
    done = subprocess.run([sys.executable, "-m", "curvebench", "run", "--problem",
                           "synthetic-linreg", "--optimizer", "sgd", "--backend", "jax",
                           "--threads", "2", "--steps", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    [record] = RunStore(tmp_path).scan()[0]
    assert record.config.threads == 2
    assert record.environment["xla_cpu_threads"] == 2 and record.environment["threads"] == 2

    import jax

    from curvebench.backends.jax import xla_cpu_threads
    from curvebench.harness import plan_run

    jax.numpy.zeros(1).block_until_ready()  # JAX has started in this process (NPROC=1)
    assert xla_cpu_threads() == 1
    plan_run(problem="synthetic-linreg", optimizer="sgd", backend="jax", threads=1)
    with pytest.raises(ValueError, match=r"on 1 CPU threads .* threads=2 needs a new process"):
        plan_run(problem="synthetic-linreg", optimizer="sgd", backend="jax", threads=2)
    code = main(["run", "--problem", "synthetic-linreg", "--optimizer", "sgd", "--backend",
                 "jax", "--threads", "2", "--steps", "2", "--out", str(tmp_path / "other")])
    assert code == 2 and not (tmp_path / "other").exists()
