"""The asv suite (``suite/``): every benchmark runs, parameters come from the registries.

Each benchmark is called once, as asv would (``setup_cache``, ``setup``, the benchmark), on the
smallest problem of its parameter list and every optimizer, with training budgets capped at a
few steps, so a broken benchmark fails here in seconds rather than in a 20-minute asv run.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # asv imports the suite from the repository root; so do we
    sys.path.insert(0, str(ROOT))

import suite  # noqa: E402
from curvebench.optimizers import OPTIMIZERS, get_optimizer  # noqa: E402
from curvebench.problems import PROBLEMS, get_problem  # noqa: E402
from suite import training, workloads  # noqa: E402

BENCHMARK_PREFIXES = ("time_", "track_", "peakmem_")


def _benchmark_classes() -> list[type]:
    classes = []
    for module_info in pkgutil.iter_modules(suite.__path__, prefix="suite."):
        module = importlib.import_module(module_info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and _benchmark_names(cls):
                classes.append(cls)
    return classes


def _benchmark_names(cls: type) -> list[str]:
    return [name for name in dir(cls) if name.startswith(BENCHMARK_PREFIXES)]


def _param_lists(cls: type) -> tuple[list[str], ...]:
    params = cls.params
    return tuple(params) if isinstance(params, tuple) else (params,)


def _parameter_count(problem: str) -> int:
    return sum(p.numel() for p in get_problem(problem).build_model(seed=0).parameters())


CLASSES = _benchmark_classes()


def test_suite_has_every_benchmark_family() -> None:
    names = {name for cls in CLASSES for name in _benchmark_names(cls)}
    expected = {"time_step", "time_gradient", "time_ggn_vector_product", "peakmem_step",
                "track_state_bytes", "track_steps_to_target", "track_seconds_to_target",
                "track_final_loss", "track_ggn_product_over_gradient",
                "track_fraction_reaching_target"}
    assert expected <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_parameters_come_from_the_registries(cls: type) -> None:
    lists = _param_lists(cls)
    assert cls.param_names[0] == "problem"
    problems = lists[0]
    assert problems, f"{cls.__name__} covers no problem"
    assert all(name in PROBLEMS for name in problems)
    assert all("suite" in get_problem(name).tags for name in problems)
    if "optimizer" in cls.param_names:
        assert lists[cls.param_names.index("optimizer")] == OPTIMIZERS.names()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_benchmark_runs_once_on_the_smallest_problem(
    cls: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(workloads.MAX_STEPS_VARIABLE, "2")
    lists = _param_lists(cls)
    smallest = min(lists[0], key=_parameter_count)
    instance = cls()
    instance.params = ([smallest], *lists[1:]) if len(lists) > 1 else [smallest]
    combinations = [(smallest, *rest) for rest in _product(lists[1:])]
    cache = (instance.setup_cache(),) if hasattr(instance, "setup_cache") else ()
    ran = 0
    for combination in combinations:
        try:
            instance.setup(*cache, *combination)
        except NotImplementedError:
            continue
        for name in _benchmark_names(cls):
            result = getattr(instance, name)(*cache, *combination)
            if name.startswith("track_"):
                assert isinstance(result, int | float), (name, combination, result)
                assert math.isnan(result) or result >= 0, (name, combination, result)
            else:
                assert result is None
        ran += 1
    assert ran, f"every combination of {cls.__name__} was n/a on {smallest}"


def _product(lists: tuple[list[str], ...]) -> list[tuple[str, ...]]:
    combinations: list[tuple[str, ...]] = [()]
    for values in lists:
        combinations = [c + (v,) for c in combinations for v in values]
    return combinations


def test_a_target_never_reached_is_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(workloads.MAX_STEPS_VARIABLE, "1")
    summary = training.train_once("synthetic-linreg", "sgd")
    assert summary is not None and summary["status"] == "budget"
    assert math.isnan(summary["steps_to_target"])
    assert math.isnan(summary["seconds_to_target"])
    assert math.isfinite(summary["final_train_loss"])


def test_reached_target_gives_steps_and_seconds() -> None:
    summary = training.train_once("synthetic-linreg", "sgd")
    assert summary is not None and summary["status"] == "reached"
    assert summary["steps_to_target"] > 0 and summary["seconds_to_target"] > 0
    assert summary["final_train_loss"] <= get_problem("synthetic-linreg").target.value


def test_capability_flags_rule_out_combinations() -> None:
    cnn = next(p for p in PROBLEMS if "cnn" in p.tags and "suite" in p.tags)
    no_conv = dataclasses.replace(get_optimizer("sgd"), supports_conv=False)
    assert workloads.unsupported_reason(cnn, no_conv) is not None
    assert workloads.unsupported_reason(cnn, get_optimizer("sgd")) is None


def test_hyperparameter_sample_is_seeded_and_in_range() -> None:
    for spec in OPTIMIZERS:
        first = workloads.hyperparameter_sample(spec.name, n=workloads.ROBUSTNESS_SAMPLES)
        assert first == workloads.hyperparameter_sample(spec.name, n=workloads.ROBUSTNESS_SAMPLES)
        assert len(first) == workloads.ROBUSTNESS_SAMPLES
        for setting in first:
            spec.resolve(setting)  # every sampled value is a valid hyperparameter
            assert set(setting) == set(spec.search_space)


def test_state_bytes_counts_momentum_buffers() -> None:
    workload = workloads.build_step_workload("synthetic-linreg", "sgd")
    assert workloads.state_bytes(workload.optimizer) == 0  # no momentum before the first step
    workload.step()
    parameters = sum(p.numel() * p.element_size() for p in workload.batch.model.parameters())
    assert workloads.state_bytes(workload.optimizer) == parameters


def test_training_budget_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = get_problem("synthetic-linreg")
    monkeypatch.delenv(workloads.MAX_STEPS_VARIABLE, raising=False)
    assert workloads.training_budget(problem) == problem.budget
    monkeypatch.setenv(workloads.MAX_STEPS_VARIABLE, "5")
    assert workloads.training_budget(problem).max_steps == 5
    monkeypatch.setenv(workloads.MAX_STEPS_VARIABLE, "five")
    with pytest.raises(ValueError, match=workloads.MAX_STEPS_VARIABLE):
        workloads.training_budget(problem)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("asv") is None and importlib.util.find_spec("asv") is None,
                    reason="asv is not installed")
def test_asv_check_finds_no_problem() -> None:
    """asv's own discovery and signature check (what it runs before benchmarking)."""
    result = subprocess.run([sys.executable, "-m", "asv", "check", "--python=same"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No problems found" in result.stdout
