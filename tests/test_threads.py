"""Threads and the executor's concurrency: set per run, recorded, part of the identity, and
never mixed silently in a summary."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from curvebench.backends import source_fingerprint
from curvebench.cli import main
from curvebench.harness import execute, plan_run
from curvebench.records import RunConfig, RunRecord
from curvebench.store import RunStore
from curvebench.study import StudyError, parse_study
from curvebench.sweep import failure_record, for_executor, pending_configs, run_sweep

#: A configuration as stored before threads and workers per machine were recorded, and the
#: hash its file is named by: old records must keep loading under the same name.
LEGACY_CONFIG = {"problem": "digits-logreg", "optimizer": "sgd",
                 "hyperparameters": {"lr": 0.1, "momentum": 0.9}, "seed": 0, "batch_size": 128,
                 "max_steps": 1000, "max_seconds": None, "device": "cpu", "dtype": "float32",
                 "eval_every": 25, "stop_at_target": True}
LEGACY_KEY = "b3287b867e4bb19c"


def tiny(**overrides) -> RunConfig:
    return plan_run(problem="synthetic-linreg", optimizer="sgd", budget=None,
                    **{"hyperparameters": {"lr": 0.01}, **overrides})


def test_threads_and_workers_are_part_of_the_identity():
    one = tiny()
    assert (one.threads, one.workers_per_machine) == (1, 1)  # a lone run: one thread
    assert tiny(threads=2).key() != one.key()
    assert tiny(workers_per_machine=2).key() != one.key()
    assert RunConfig.from_dict(one.to_dict()) == one


def test_legacy_records_load_with_unknown_threads_and_keep_their_hash():
    config = RunConfig.from_dict(LEGACY_CONFIG)
    assert config.threads is None and config.workers_per_machine is None
    assert config.key() == LEGACY_KEY


def test_a_run_uses_and_records_its_thread_count_and_restores_the_previous_one():
    previous = torch.get_num_threads()
    other = 2 if previous == 1 else 1
    record = execute(dataclasses.replace(tiny(), threads=other, max_steps=2))
    assert record.environment["threads"] == other
    assert record.config.threads == other
    assert torch.get_num_threads() == previous


def stub_worker(config: dict, data_dir) -> dict:
    return failure_record(RunConfig.from_dict(config), "stub").to_dict()


def test_a_sweep_resumed_with_another_executor_does_not_reuse_its_runs(tmp_path):
    configs = [tiny(seed=s) for s in range(3)]
    store = RunStore(tmp_path / "out")
    serial = run_sweep(configs, store=store, worker=stub_worker, progress=False)
    assert {r.config.workers_per_machine for r in serial.records} == {1}
    pooled = for_executor(configs, executor="process", workers=2)
    assert {c.workers_per_machine for c in pooled} == {2}
    todo, stored = pending_configs(pooled, store)
    assert len(todo) == 3 and not stored  # no 2-worker timing stored under a 1-worker hash
    todo, stored = pending_configs(for_executor(configs, executor="serial"), store)
    assert not todo and len(stored) == 3


def test_study_threads_key():
    base = {"problems": ["synthetic-linreg"], "optimizers": {"sgd": {}}, "seeds": [0]}
    assert {c.threads for c in parse_study(base).run_configs()} == {1}
    assert {c.threads for c in parse_study({**base, "threads": 2}).run_configs()} == {2}
    with pytest.raises(StudyError, match="threads"):
        parse_study({**base, "threads": 0})


def strip_execution_fields(path) -> None:
    """Rewrite a stored record as a legacy one (no threads, no workers per machine)."""
    data = json.loads(path.read_text())
    for name in ("threads", "workers_per_machine"):
        del data["config"][name]
    RunRecord.from_dict(data)  # still a valid record
    path.write_text(json.dumps(data))


def test_run_and_show_keep_thread_counts_apart(tmp_path, capsys):
    out = tmp_path / "out"
    common = ["run", "--problem", "synthetic-linreg", "--optimizer", "sgd", "--steps", "3",
              "--out", str(out)]
    assert main(common) == 0
    first = capsys.readouterr()
    assert "curvebench run: 1/1" in first.err  # progress lines when stderr is not a terminal
    assert main(common) == 0 and "1 already stored" in capsys.readouterr().out
    assert main([*common, "--threads", "2"]) == 0  # another identity: runs again
    assert "1 run(s) stored" in capsys.readouterr().out
    records = RunStore(out).scan()[0]
    assert sorted(r.config.threads for r in records) == [1, 2]
    assert sorted(r.environment["threads"] for r in records) == [1, 2]

    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "different execution settings" in shown
    code = source_fingerprint()[:8]
    assert f"== runs with threads=1 workers/machine=1 code={code} ==" in shown
    assert f"== runs with threads=2 workers/machine=1 code={code} ==" in shown

    legacy = next(p for p in out.glob("run-*.json")
                  if json.loads(p.read_text())["config"]["threads"] == 2)
    strip_execution_fields(legacy)
    assert main(["show", str(out)]) == 0
    assert (f"== runs with threads=? workers/machine=? code={code} =="
            in capsys.readouterr().out)


def test_show_formats_match_the_readme(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--problem", "synthetic-linreg", "--optimizer", "sgd", "--steps", "3",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["show", str(out), "--format", "md"]) == 0
    assert "| synthetic-linreg" in capsys.readouterr().out
    assert main(["show", str(out), "--format", "csv", "--out", str(tmp_path / "runs.csv")]) == 0
    header = (tmp_path / "runs.csv").read_text().splitlines()[0].split(",")
    assert {"threads", "workers_per_machine"} <= set(header)
    assert main(["show", str(out), "--format", "csv"]) == 2  # csv needs --out


def test_sweep_dry_run_lists_configurations_and_threads_flag(tmp_path, capsys):
    study = tmp_path / "study.toml"
    study.write_text('problems = ["synthetic-linreg"]\nseeds = [0, 1]\n'
                     '[optimizers.sgd]\ngrid = { lr = [0.05, 0.2] }\n', encoding="utf-8")
    assert main(["sweep", str(study), "--out", str(tmp_path / "o"), "--dry-run",
                 "--threads", "2"]) == 0
    captured = capsys.readouterr()
    assert "threads=2 workers/machine=1" in captured.err
    rows = [line for line in captured.out.splitlines() if line.startswith("synthetic-linreg")]
    assert len(rows) == 2 and all("0,1" in row for row in rows)
    assert "lr=0.05" in captured.out and "lr=0.2" in captured.out


def test_help_shows_defaults_and_the_commands(capsys):
    for argv in (["run", "--help"], ["sweep", "--help"], ["--help"]):
        with pytest.raises(SystemExit):
            main(argv)
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 1)" in text and "(default: results)" in text  # run --threads, --out
    assert "(default: the study's executor key, else serial)" in text  # sweep --executor
    assert "sweep" in text and "report" in text and "``" not in text
