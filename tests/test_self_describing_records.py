"""Run records describe themselves: fixed settings in the hash, optimizer and problem
descriptions stored, and reports of old runs that do not change when the code does."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest

from curvebench import metrics
from curvebench.harness import plan_run, run
from curvebench.optimizers import OPTIMIZERS, LogUniform, get_optimizer
from curvebench.problems import PROBLEMS, Budget, Target, get_problem
from curvebench.records import RecordedOptimizer, RunConfig, RunRecord, recorded_optimizers
from curvebench.reports import tables
from curvebench.reports.study import Study
from curvebench.spaces import Choice, IntLogUniform, IntUniform, Uniform, space_from_dict
from curvebench.store import RunStore
from tests.report_fixtures import synthetic_records


def _replace(monkeypatch, registry, name: str, **changes) -> None:
    """Swap a registered spec for a changed copy for the rest of the test."""
    registry._ensure_loaded()
    monkeypatch.setitem(registry._items, name, dataclasses.replace(registry.get(name), **changes))


def test_a_changed_setting_changes_the_key_and_is_what_runs(monkeypatch):
    spec = get_optimizer("sgn")
    assert spec.settings["armijo_c"] == 1e-4 and spec.settings["backtrack_factor"] == 0.5
    before = plan_run(problem="synthetic-linreg", optimizer="sgn")
    assert before.settings_dict == dict(spec.settings)
    _replace(monkeypatch, OPTIMIZERS, "sgn", settings={**spec.settings, "armijo_c": 1e-3})
    after = plan_run(problem="synthetic-linreg", optimizer="sgn")
    assert after.settings_dict["armijo_c"] == 1e-3
    assert after.key() != before.key()
    problem = get_problem("synthetic-linreg")
    built = get_optimizer("sgn").build(model=problem.build_model(seed=0), loss=problem.make_loss())
    assert built.param_groups[0]["armijo_c"] == 1e-3
    recorded = get_optimizer("sgn").build(model=problem.build_model(seed=0),
                                          loss=problem.make_loss(), settings=before.settings_dict)
    assert recorded.param_groups[0]["armijo_c"] == 1e-4  # a record's own settings


def test_fixed_knobs_of_the_optimizers_are_declared():
    assert get_optimizer("hf").settings["backtrack_factor"] == 0.8
    assert get_optimizer("sophia-h").settings == {"estimator": "hutchinson"}
    assert get_optimizer("kflr").settings == {"curvature": "kflr"}
    assert get_optimizer("ngd-exact").settings == {"curvature": "empirical_fisher"}
    assert get_optimizer("adam").settings == {"amsgrad": False, "maximize": False,
                                              "decoupled_weight_decay": False}
    assert get_optimizer("sgd").settings == {"maximize": False}
    for spec in OPTIMIZERS:  # a setting is never also a hyperparameter
        assert not set(spec.settings) & set(spec.defaults), spec.name


#: Constructor arguments that cannot change a run: torch's implementation switches, and the
#: Monte-Carlo sample count of the K-FAC variants whose output factor is not sampled.
_NOT_RESULT_SHAPING = {"foreach", "differentiable", "fused", "capturable"}
_UNUSED_BY = {"kflr": {"mc_samples"}, "kfra": {"mc_samples"}, "kfac-empirical": {"mc_samples"}}


def test_every_constructor_argument_is_a_hyperparameter_or_a_setting():
    """A knob left at its class default is still part of a run's identity: a new constructor
    argument must be declared (hyperparameter or setting), or changing its default in code
    would silently reuse stale runs."""
    import inspect

    checked = 0
    for spec in OPTIMIZERS:
        cls = getattr(spec.factory, "optimizer_class", None)
        if cls is None:  # a factory of its own (exact methods, kfac-jax): declared by hand
            continue
        parameters = inspect.signature(cls.__init__).parameters
        knobs = {name for name, p in parameters.items()
                 if p.default is not inspect.Parameter.empty and name != "params"}
        packed = {"betas"} if {"beta1", "beta2"} <= set(spec.defaults) else set()
        undeclared = (knobs - set(spec.defaults) - set(spec.settings) - packed
                      - _NOT_RESULT_SHAPING - _UNUSED_BY.get(spec.name, set()))
        assert not undeclared, f"{spec.name}: {sorted(undeclared)} undeclared"
        checked += 1
    assert checked >= 20


def test_legacy_configs_keep_their_hash():
    config = RunConfig.create(problem="p", optimizer="o", hyperparameters={"lr": 0.1}, seed=0,
                              batch_size=8, max_steps=10, max_seconds=None, device="cpu")
    legacy = {k: v for k, v in config.to_dict().items()
              if k not in ("threads", "workers_per_machine", "backend", "settings")}
    assert RunConfig.from_dict(legacy) == config
    assert config.key() == "0c25111f2df2cc19"  # the key these fields had before backends
    stamped = dataclasses.replace(config, backend="torch", settings=())
    assert stamped.key() != config.key()
    assert RunConfig.from_dict(json.loads(json.dumps(stamped.to_dict()))) == stamped


def test_records_store_the_optimizer_and_problem_descriptions(tmp_path):
    record = run(problem="synthetic-linreg", optimizer="sgn", budget=Budget(max_steps=2),
                 eval_every=1)
    info, problem = record.optimizer_info, record.problem_info
    assert info["settings"] == dict(get_optimizer("sgn").settings)
    assert info["defaults"] == dict(get_optimizer("sgn").defaults)
    assert info["search_space"]["damping_min"] == {"kind": "LogUniform", "low": 0.01,
                                                   "high": 1.0}
    assert problem["target"]["direction"] in ("min", "max")
    assert problem["num_parameters"] == get_problem("synthetic-linreg").num_parameters
    assert problem["budget"]["max_steps"] == get_problem("synthetic-linreg").budget.max_steps
    store = RunStore(tmp_path)
    store.write(record)
    (loaded,), unreadable = store.scan()
    assert not unreadable
    assert (loaded.optimizer_info, loaded.problem_info) == (info, problem)
    assert loaded.config.settings_dict == info["settings"]


@pytest.mark.parametrize("space", [LogUniform(1e-3, 1.0), IntLogUniform(1, 100),
                                   Uniform(0.0, 0.9), IntUniform(1, 8),
                                   Choice((1, 2.5, True, "a"))])
def test_spaces_round_trip_through_json(space):
    assert space_from_dict(json.loads(json.dumps(space.to_dict()))) == space


def _described(records: list[RunRecord]) -> list[RunRecord]:
    """The fixture's records as today's code writes them: with the optimizer described."""
    infos = {
        "sgd-synth": {"defaults": {"lr": 0.05, "momentum": 0.9},
                      "search_space": {"lr": LogUniform(1e-3, 1.0).to_dict()}, "settings": {}},
        "sgn-synth": {"defaults": {"lr": 0.3, "damping": 1e-4, "cg_iterations": 3},
                      "search_space": {"lr": LogUniform(1e-2, 10.0).to_dict(),
                                       "damping": LogUniform(1e-6, 1.0).to_dict(),
                                       "cg_iterations": Choice((3, 10)).to_dict()},
                      "settings": {"armijo_c": 1e-4}},
    }
    problem_info = {"target": {"metric": "train_loss", "value": 0.3, "direction": "min"},
                    "eval_metric": "test_accuracy"}
    return [dataclasses.replace(r, optimizer_info=infos[r.config.optimizer],
                                problem_info=problem_info) for r in records]


def _report(records: list[RunRecord]) -> str:
    study = Study.from_records(records)
    text = tables.tables_text(records, fmt="md")
    tuned = metrics.default_vs_tuned(study.runs, optimizer_specs=study.optimizers)
    robust = metrics.robustness(study.runs, optimizer_specs=study.optimizers)
    return "\n".join([text, tuned.to_csv(), robust.to_csv()])


def test_a_report_of_stored_runs_does_not_change_when_the_registries_do(monkeypatch):
    records = _described(synthetic_records(problems=("p",), seeds=(0, 1), batch_sizes=(128,)))
    # the records' names registered (as a plugin would), so a report could be tempted to look
    sgd, sgn = get_optimizer("sgd"), get_optimizer("sgn")
    OPTIMIZERS._ensure_loaded()
    monkeypatch.setitem(OPTIMIZERS._items, "sgd-synth", dataclasses.replace(sgd, name="sgd-synth"))
    monkeypatch.setitem(OPTIMIZERS._items, "sgn-synth", dataclasses.replace(sgn, name="sgn-synth"))
    PROBLEMS._ensure_loaded()
    monkeypatch.setitem(PROBLEMS._items, "p",
                        dataclasses.replace(get_problem("synthetic-linreg"), name="p"))
    before = _report(records)
    assert "defaults" in before and "Notes" not in before
    _replace(monkeypatch, OPTIMIZERS, "sgd-synth", defaults={**sgd.defaults, "lr": 0.01},
             search_space={"lr": Choice((0.01, 0.05, 0.2))})
    _replace(monkeypatch, OPTIMIZERS, "sgn-synth", defaults={**sgn.defaults, "damping": 1.0},
             search_space={"damping_min": Uniform(0.0, 1.0)})
    _replace(monkeypatch, PROBLEMS, "p", eval_metric="test_loss",
             target=Target(metric="train_loss", value=1e-9, direction="max", provenance="x"))
    assert _report(records) == before


def test_legacy_records_still_report_with_a_note():
    records = synthetic_records(problems=("p",), seeds=(0,), batch_sizes=(128,))
    assert all(not r.optimizer_info for r in records)
    study = Study.from_records(records)
    assert study.optimizers["sgd-synth"].source == "unknown"
    assert any("predate stored optimizer descriptions" in n for n in study.notes)
    assert "Notes" in tables.tables_text(records, fmt="text")
    legacy = dataclasses.replace(records[0], config=dataclasses.replace(
        records[0].config, optimizer="sgd", hyperparameters=(("lr", 0.5), ("momentum", 0.9))))
    described, notes = recorded_optimizers([legacy])
    assert described["sgd"].source == "registry"
    assert described["sgd"].defaults == dict(get_optimizer("sgd").defaults)
    assert "today's registered ones" in notes[0]
    data = legacy.to_dict()
    for name in ("optimizer_info", "problem_info"):
        del data[name]
    assert RunRecord.from_dict(data) == legacy


def test_changed_descriptions_between_runs_are_noted():
    old, new = _described(synthetic_records(problems=("p",), seeds=(0, 1), batch_sizes=(128,),
                                            curvature_lrs=(), first_order_lrs=(0.05,)))
    new = dataclasses.replace(new, optimizer_info={**new.optimizer_info,
                                                   "defaults": {"lr": 0.2, "momentum": 0.9}})
    described, notes = recorded_optimizers([old, new])
    assert described["sgd-synth"].defaults["lr"] == 0.2  # the latest record's
    assert any("the code changed between runs" in n for n in notes)
    assert RecordedOptimizer.of(old).defaults["lr"] == 0.05
    legacy = dataclasses.replace(new, optimizer_info={}, started_at="2027-01-01T00:00:00+00:00")
    described, notes = recorded_optimizers([old, legacy])  # the legacy one is later
    assert described["sgd-synth"].source == "records" and not notes


NEUTRAL_MODULES = ("curvebench.spaces", "curvebench.goals", "curvebench.records",
                   "curvebench.store", "curvebench.metrics", "curvebench.study",
                   "curvebench.formatting", "curvebench.reports", "curvebench.reports.study",
                   "curvebench.reports.tables", "curvebench.reports.build",
                   "curvebench.reports.figures", "curvebench.reports.html")


def test_neutral_modules_import_without_torch_or_jax():
    script = textwrap.dedent(f"""
        import importlib, sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "jax", "jaxlib"):
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Blocked())
        for name in {NEUTRAL_MODULES!r}:
            importlib.import_module(name)
        from curvebench.study import parse_study
        assert not any(m.split(".")[0] in ("torch", "jax") for m in sys.modules)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def _on(backend: str, record: RunRecord, *, speed: float = 1.0) -> RunRecord:
    """``record`` as if ``backend`` had run it, its clock ``speed`` times as fast."""
    history = {**record.history, "seconds": [s / speed for s in record.history["seconds"]]}
    return dataclasses.replace(
        record, config=dataclasses.replace(record.config, backend=backend),
        seconds=record.seconds / speed, history=history,
        seconds_to_target=None if record.seconds_to_target is None
        else record.seconds_to_target / speed)


def _two_backends() -> list[RunRecord]:
    records = synthetic_records(problems=("p",), seeds=(0, 1), batch_sizes=(128,),
                                curvature_lrs=(0.3,), dampings=(1e-3,), cg_iterations=(3,))
    jax = [_on("jax", r, speed=2.0) for r in records if r.config.optimizer == "sgd-synth"]
    return [_on("torch", r) for r in records] + jax


def test_report_compares_backends_side_by_side(tmp_path):
    from curvebench.reports.build import build_site

    study = Study.from_records(_two_backends())
    assert set(study.runs["optimizer"]) == {"sgd-synth [torch]", "sgd-synth [jax]",
                                            "sgn-synth [torch]"}
    board = tables.leaderboard(study, n_bootstrap=20)
    assert len(board) == 3  # the two backends' runs are never merged
    compared = tables.backend_comparison(study, board).set_index("backend")
    assert list(compared.index) == ["jax", "torch"]  # sgn ran on one backend only
    assert (compared["method"] == "sgd-synth").all()
    assert compared.loc["torch", "step_ratio"] == 1.0
    assert compared.loc["jax", "step_ratio"] == pytest.approx(0.5)
    assert compared.loc["jax", "best_steps"] == compared.loc["torch", "best_steps"]
    assert compared.loc["jax", "best_seconds"] == pytest.approx(
        compared.loc["torch", "best_seconds"] / 2)
    text = tables.tables_text(study.records, fmt="text")
    assert "Backends side by side: p" in text and "sgd-synth [jax]" in text
    build_site(study, out=tmp_path / "site", n_bootstrap=20)
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "Backends side by side" in index and "sgd-synth [jax]" in index


def test_records_of_one_backend_look_as_before():
    legacy = synthetic_records(problems=("p",), seeds=(0,), batch_sizes=(128,))
    stamped = [_on("torch", r) for r in legacy]  # legacy records count as torch runs
    for records in (stamped, legacy + stamped):
        study = Study.from_records(records)
        assert not study.several_backends
        assert set(study.runs["optimizer"]) == {"sgd-synth", "sgn-synth"}
        text = tables.tables_text(records, fmt="text")
        assert "Backends side by side" not in text and "[torch]" not in text


def test_leaderboard_final_value_is_the_best_configurations():
    records = synthetic_records(problems=("p",), seeds=(0,), batch_sizes=(128,),
                                first_order_lrs=(0.05, 0.2), curvature_lrs=())
    fast, slow = sorted(records, key=lambda r: r.config.hyperparameter_dict["lr"])
    assert fast.status == "reached" and slow.status == "budget"
    slow = dataclasses.replace(slow, final={**slow.final, "train_loss": 1e-4})
    board = tables.leaderboard(Study.from_records([fast, slow]), n_bootstrap=20)
    assert board["best_hyperparameters"].iloc[0] == "lr=0.05"
    assert board["best_final"].iloc[0] == fast.final["train_loss"]
