"""The code that runs a configuration is part of its identity: curvebench's source fingerprint
and the backend's library versions. A stored run is reused only by the same code, a run planned
by other code is refused, and summaries never mix code silently."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from curvebench import backends
from curvebench.backends import (
    CodeMismatchError,
    fingerprint_sources,
    run_code,
    source_fingerprint,
)
from curvebench.cli import main
from curvebench.harness import execute, plan_run
from curvebench.records import RunConfig, RunRecord
from curvebench.store import RecordError, RunStore, validate_record
from curvebench.sweep import run_sweep


def tiny(**overrides) -> RunConfig:
    return plan_run(problem="synthetic-linreg", optimizer="sgd", budget=None,
                    **{"hyperparameters": {"lr": 0.01}, **overrides})


def test_a_planned_run_names_its_source_and_its_backends_libraries():
    import numpy
    import torch

    code = tiny().code_dict
    assert code == {"curvebench": source_fingerprint(), "torch": torch.__version__,
                    "numpy": numpy.__version__}
    assert len(code["curvebench"]) == 16 and int(code["curvebench"], 16) >= 0


def test_the_jax_backend_names_its_libraries():
    pytest.importorskip("jax")
    import jax

    config = plan_run(problem="digits-mlp", optimizer="adam", backend="jax")
    code = config.code_dict
    assert code["jax"] == jax.__version__ and code["curvebench"] == source_fingerprint()
    assert {"jaxlib", "optax", "kfac-jax", "torch"} <= set(code)


def test_code_is_part_of_the_identity_and_survives_a_round_trip():
    config = tiny()
    other = dataclasses.replace(config, code=(("curvebench", "0" * 16), *config.code[1:]))
    newer = dataclasses.replace(config, code=(*config.code[:-1], ("torch", "99.0")))
    assert len({config.key(), other.key(), newer.key()}) == 3
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    legacy = config.to_dict()
    del legacy["code"]  # a record written before the field existed keeps its hash
    assert RunConfig.from_dict(legacy).key() == dataclasses.replace(config, code=None).key()


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_the_fingerprint_follows_every_run_shaping_module_and_no_report_module(tmp_path):
    # an editable install: the packages side by side
    side = tmp_path / "side"
    for name, text in {"curvebench/harness.py": "A = 1\n", "curvebench/jax_backend/m.py": "B\n",
                       "optimizers/kfac.py": "C\n", "problems/mlp.py": "D\n",
                       "reports/build.py": "E\n"}.items():
        write(side / name, text)
    # a wheel: the same source, subpackages nested under curvebench/
    nested = tmp_path / "nested" / "curvebench"
    for name, text in {"harness.py": "A = 1\n", "jax_backend/m.py": "B\n",
                       "optimizers/kfac.py": "C\n", "problems/mlp.py": "D\n",
                       "reports/build.py": "E\n"}.items():
        write(nested / name, text)

    def side_print():
        return fingerprint_sources({"curvebench": side / "curvebench",
                                    "curvebench.problems": side / "problems",
                                    "curvebench.optimizers": side / "optimizers"},
                                   skipped=[side / "reports"])

    def nested_print():
        return fingerprint_sources({"curvebench": nested,
                                    "curvebench.problems": nested / "problems",
                                    "curvebench.optimizers": nested / "optimizers"},
                                   skipped=[nested / "reports"])

    before = side_print()
    assert nested_print() == before
    write(side / "reports/build.py", "E = 2\n")
    write(nested / "reports/build.py", "E = 2\n")
    # the report builders only read records
    assert side_print() == before and nested_print() == before
    for name in ("curvebench/harness.py", "curvebench/jax_backend/m.py", "optimizers/kfac.py",
                 "problems/mlp.py"):
        original = (side / name).read_text()
        write(side / name, original + "# one more line\n")
        assert side_print() != before, name
        write(side / name, original)
        assert side_print() == before
    write(side / "optimizers/new.py", "")  # a new module is new code
    assert side_print() != before
    (side / "optimizers/new.py").unlink()
    (side / "optimizers/kfac.py").rename(side / "optimizers/kfac2.py")  # so is a renamed one
    assert side_print() != before


def test_the_installed_fingerprint_reads_the_run_shaping_packages_and_skips_the_reports(
        monkeypatch):
    seen = {}
    monkeypatch.setattr(backends, "fingerprint_sources",
                        lambda packages, *, skipped: seen.update(packages=dict(packages),
                                                                 skipped=list(skipped)) or "x")
    assert source_fingerprint.__wrapped__() == "x"
    assert set(seen["packages"]) == {"curvebench", "curvebench.problems",
                                     "curvebench.optimizers"}
    import curvebench.reports
    assert seen["skipped"] == [Path(curvebench.reports.__file__).parent.resolve()]


def test_a_run_stored_by_other_code_is_run_again_and_never_overwritten(tmp_path, capsys,
                                                                       monkeypatch):
    out = tmp_path / "out"
    common = ["run", "--problem", "synthetic-linreg", "--optimizer", "sgd", "--steps", "3",
              "--out", str(out)]
    assert main(common) == 0
    assert main(common) == 0 and "1 already stored" in capsys.readouterr().out
    [first] = out.glob("run-*.json")
    stored = first.read_bytes()

    monkeypatch.setattr(backends, "source_fingerprint", lambda: "0123456789abcdef")
    assert main(common) == 0
    assert "1 run(s) stored" in capsys.readouterr().out  # not reused: other source
    assert first.read_bytes() == stored
    records = RunStore(out).scan()[0]
    assert sorted(r.config.code_dict["curvebench"] for r in records) == sorted(
        [json.loads(stored)["config"]["code"]["curvebench"], "0123456789abcdef"])

    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "nor any result across code" in shown
    assert "== runs with threads=1 workers/machine=1 code=01234567 ==" in shown


def test_a_run_planned_by_other_code_is_refused_in_one_line_and_is_an_error_in_a_sweep(
        tmp_path):
    config = dataclasses.replace(tiny(), max_steps=2)
    planned = dataclasses.replace(config, code=tuple(
        (name, "0" * 16 if name == "curvebench" else version) for name, version in config.code))
    with pytest.raises(CodeMismatchError) as raised:
        execute(planned)
    message = str(raised.value)
    assert "\n" not in message
    assert f"curvebench {'0' * 16} there, {source_fingerprint()} here" in message
    assert "torch" not in message  # only what differs is named
    extra = dataclasses.replace(config, code=(*config.code, ("einops", "0.1")))
    with pytest.raises(CodeMismatchError, match="einops 0.1 there, none here"):
        execute(extra)

    store = RunStore(tmp_path / "sweep")
    result = run_sweep([planned], store=store, progress=False)
    [record] = result.records
    assert record.status == "error" and "planned with other code" in record.error


def test_a_legacy_record_without_code_is_still_run_and_loaded(tmp_path):
    legacy = dataclasses.replace(tiny(), code=None, max_steps=2)
    record = execute(legacy)
    assert record.config.code is None and record.steps_run == 2
    path = RunStore(tmp_path).write(record)
    assert RunStore(tmp_path).load(legacy) == RunRecord.from_dict(json.loads(path.read_text()))


@pytest.mark.parametrize(("code", "message"), [
    ([1], "config.code: expected an object or null, got a list"),
    ({"torch": 2}, "config.code.torch"),
])
def test_a_record_with_a_malformed_code_is_refused(code, message):
    record = execute(dataclasses.replace(tiny(), max_steps=1)).to_dict()
    validate_record(record)
    record["config"]["code"] = code
    with pytest.raises(RecordError, match=message):
        validate_record(record)


def test_html_timing_conditions_say_when_runs_of_several_sources_are_mixed():
    from curvebench.reports.study import Study, timing_conditions
    from tests.report_fixtures import synthetic_record

    def record(seed, fingerprint):
        made = synthetic_record(problem="p", optimizer="o", seed=seed,
                                hyperparameters={"lr": 0.05})
        config = dataclasses.replace(made.config, code=(("curvebench", fingerprint),))
        return dataclasses.replace(made, config=config)

    same = Study.from_records([record(0, "a" * 16), record(1, "a" * 16)]).runs
    assert "code" not in timing_conditions(same)
    mixed = Study.from_records([record(0, "a" * 16), record(1, "b" * 16)]).runs
    assert "code: mixed aaaaaaaa, bbbbbbbb (not comparable)" in timing_conditions(mixed)


def test_run_code_is_what_execute_checks_against():
    assert run_code("torch") == tiny().code_dict
