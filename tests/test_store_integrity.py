"""Store integrity: corrupt, copied, invalid and odd files are named and counted at most once."""

from __future__ import annotations

import contextlib
import copy
import json
import shutil

import pytest

from curvebench.cli import main
from curvebench.records import RunRecord
from curvebench.store import RunStore
from curvebench.sweep import for_executor, run_sweep
from tests.report_fixtures import synthetic_record


def _record(seed: int = 0, lr: float = 0.05) -> RunRecord:
    return synthetic_record(problem="p", optimizer="o", seed=seed, hyperparameters={"lr": lr},
                            steps=40)


def _fake_worker(calls):
    def worker(config, data_dir):
        calls.append(config["seed"])
        from curvebench.records import RunConfig

        return _record(seed=config["seed"]).__class__(
            **{**_record(seed=config["seed"]).__dict__,
               "config": RunConfig.from_dict(config)}).to_dict()
    return worker


def test_a_corrupt_run_file_is_named_run_again_once_and_never_counted_twice(tmp_path, capsys):
    store = RunStore(tmp_path)
    # as a serial sweep stores them (workers per machine is part of a run's identity)
    configs = for_executor([_record(seed=s).config for s in (0, 1)], executor="serial")
    calls: list[int] = []
    run_sweep(configs, store=store, worker=_fake_worker(calls), progress=False)
    assert calls == [0, 1]
    bad = store.path_for(configs[0])
    bad.write_text('{"schema_version": 1, "config": ')  # killed editor, bad disk, ...
    for _ in range(3):  # every resume after the first finds the record written beside it
        run_sweep(configs, store=store, worker=_fake_worker(calls), progress=False)
    assert calls == [0, 1, 0]
    assert len(list(tmp_path.glob("run-*.json"))) == 3
    assert bad.read_text() == '{"schema_version": 1, "config": '  # left untouched
    records, skipped = store.scan()
    assert sorted(r.config.seed for r in records) == [0, 1]
    assert [s.path for s in skipped] == [bad] and not skipped[0].duplicate

    shutil.copy(store.path_for(configs[1]), tmp_path / "run-copy.json")  # a copied file
    records, skipped = store.scan()
    assert sorted(r.config.seed for r in records) == [0, 1]
    duplicate = next(s for s in skipped if s.duplicate)
    assert duplicate.path.name == "run-copy.json"
    assert store.path_for(configs[1]).name in duplicate.reason

    assert main(["show", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert f"unreadable {bad.name}" in err and "duplicate run-copy.json" in err
    assert out.split("Leaderboard")[0].count(" o ") == 2  # two runs listed, not three


def _swept_tiny_study(tmp_path):
    """A one-run study file, swept once into ``tmp_path/out``."""
    study = tmp_path / "s.toml"
    study.write_text('problems = ["synthetic-linreg"]\nseeds = [0]\n[budget]\nmax_steps = 2\n'
                     "[optimizers.sgd]\n")
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out)]) == 0
    return study, out


def test_the_sweep_command_names_the_bad_file(tmp_path, capsys):
    study, out = _swept_tiny_study(tmp_path)
    (path,) = out.glob("run-*.json")
    path.write_text("garbage")
    assert main(["sweep", str(study), "--out", str(out)]) == 0
    assert main(["sweep", str(study), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"unreadable {path.name}" in err
    assert "1 already stored, 0 to run" in [line for line in err.splitlines()
                                            if "already stored" in line][-1]
    assert len(list(out.glob("run-*.json"))) == 2


def _valid() -> dict:
    return _record().to_dict()


def _set(path: str, value):
    def change(data):
        *parents, last = path.split(".")
        target = data
        for name in parents:
            target = target[name]
        target[last] = value
    return change


def _drop(path: str):
    def change(data):
        *parents, last = path.split(".")
        target = data
        for name in parents:
            target = target[name]
        del target[last]
    return change


#: One valid-JSON change each; every one must be skipped with a message, never crash.
INVALID_RECORDS = {
    "final null": _set("final", None),
    "final value a string": _set("final.train_loss", "low"),
    "history a list": _set("history", []),
    "history column not a list": _set("history.loss", 3.0),
    "history value a string": _set("history.loss", ["x"] * 40),
    "ragged history": _set("history.loss", [1.0]),
    "evaluations null": _set("evaluations", None),
    "list-valued hyperparameter": _set("config.hyperparameters", {"lr": [0.1, 0.2]}),
    "null hyperparameter": _set("config.hyperparameters", {"lr": None}),
    "hyperparameters a list": _set("config.hyperparameters", [["lr", 0.1]]),
    "settings a list": _set("config.settings", [["armijo_c", 0.1]]),
    "list-valued setting": _set("config.settings", {"armijo_c": [0.1]}),
    "backend a number": _set("config.backend", 3),
    "optimizer_info a list": _set("optimizer_info", []),
    "problem_info a string": _set("problem_info", "mlp"),
    "lone surrogate in a name": _set("config.problem", "p\ud800"),
    "lone surrogate in an environment value": _set("environment.python", "\udfff"),
    "unknown status": _set("status", "great"),
    "steps_run a string": _set("steps_run", "40"),
    "steps_run negative": _set("steps_run", -1),
    "seed a float": _set("config.seed", 0.5),
    "seed a boolean": _set("config.seed", True),
    "batch size zero": _set("config.batch_size", 0),
    "config null": _set("config", None),
    "config missing a field": _drop("config.device"),
    "target null": _set("target", None),
    "target value a string": _set("target.value", "0.3"),
    "target direction unknown": _set("target.direction", "sideways"),
    "counters a list": _set("counters", [1, 2]),
    "phase seconds a string": _set("phase_seconds.forward", "fast"),
    "peak memory a string": _set("peak_memory_bytes", "1 MB"),
    "seconds null": _set("seconds", None),
    "started_at a number": _set("started_at", 5),
    "error a number": _set("error", 5),
    "notes a list": _set("notes", []),
    "environment null": _set("environment", None),
    "steps_to_target a float": _set("steps_to_target", 1.5),
    "missing history": _drop("history"),
    "not an object": lambda data: data.clear() or None,
}


def test_valid_records_pass_validation():
    from curvebench.store import validate_record
    from curvebench.sweep import failure_record

    for status in ("reached", "budget", "diverged", "error"):
        data = _valid()
        data["status"] = status
        validate_record(data)
    validate_record(failure_record(_record().config, "worker died").to_dict())


@pytest.mark.parametrize("case", sorted(INVALID_RECORDS))
def test_each_invalid_record_is_rejected_with_a_one_line_reason(case):
    from curvebench.store import RecordError, validate_record

    data = copy.deepcopy(_valid())
    INVALID_RECORDS[case](data)
    with pytest.raises((RecordError, ValueError)) as error:
        validate_record(data)
        RunRecord.from_dict(data)
    assert "\n" not in str(error.value)


def test_show_and_report_skip_every_invalid_record_with_a_message(tmp_path, capsys):
    results = tmp_path / "results"
    store = RunStore(results)
    store.write(_record())
    for index, case in enumerate(sorted(INVALID_RECORDS)):
        data = _valid()
        data["config"]["seed"] = 100 + index
        INVALID_RECORDS[case](data)
        text = json.dumps(data, ensure_ascii=True)  # keeps lone surrogates as \\u escapes
        (results / f"run-bad{index:02d}.json").write_text(text)
    assert main(["show", str(results)]) == 0
    err = capsys.readouterr().err
    assert err.count("curvebench: skipped unreadable run-bad") == len(INVALID_RECORDS)
    assert main(["report", str(results), "--out", str(tmp_path / "site")]) == 0
    err = capsys.readouterr().err
    assert err.count("curvebench: skipped unreadable run-bad") == len(INVALID_RECORDS)


def test_an_unreadable_results_directory_is_an_error_not_an_empty_store(tmp_path, capsys,
                                                                       monkeypatch):
    import os

    results = tmp_path / "results"
    RunStore(results).write(_record())
    real = os.scandir

    def denied(path="."):
        if os.fspath(path) == os.fspath(results):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", denied)  # chmod 000 does not stop root
    for argv in (["show", str(results)], ["report", str(results), "--out", str(tmp_path / "s")]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert "cannot be read: Permission denied" in err and len(err.splitlines()) == 1, err
        assert "no runs" not in out.lower()
    assert not (tmp_path / "s").exists()


def test_a_fifo_named_like_a_run_file_never_blocks_a_resume(tmp_path):
    import os
    import threading

    store = RunStore(tmp_path)
    (config,) = for_executor([_record().config], executor="serial")  # as a serial sweep stores it
    fifo = store.path_for(config)
    os.mkfifo(fifo)
    calls: list[int] = []
    done = threading.Event()

    def sweep():
        run_sweep([config], store=store, worker=_fake_worker(calls), progress=False)
        done.set()

    threading.Thread(target=sweep, daemon=True).start()
    try:
        assert done.wait(timeout=120), "the resume blocked on the FIFO"
    finally:  # unblock a reader stuck on the FIFO
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert calls == [0] and store.load(config) is not None
    records, skipped = store.scan()
    assert len(records) == 1 and skipped == []  # the FIFO is not a run file


def test_stale_temporary_files_are_removed_on_resume_and_live_ones_kept(tmp_path, capsys):
    import os
    import subprocess
    import sys

    from curvebench.store import _host_id

    study, out = _swept_tiny_study(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    orphan = out / f".tmp-{_host_id()}-{dead}-abc.json"
    legacy = out / ".tmp-k1l2m3n4.json"  # written before temporary files named their writer
    live = out / f".tmp-{_host_id()}-{os.getpid()}-def.json"
    fresh_legacy = out / ".tmp-zzzz.json"
    for path in (orphan, legacy, live, fresh_legacy):
        path.write_text("{")
    os.utime(legacy, (1e9, 1e9))
    capsys.readouterr()
    assert main(["sweep", str(study), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "removed 2 stale temporary file(s)" in err
    assert not orphan.exists() and not legacy.exists()
    assert live.exists() and fresh_legacy.exists()
    assert len(list(out.glob("run-*.json"))) == 1
    orphan.write_text("{")  # `curvebench run` into the directory cleans up as well
    assert main(["run", "--problem", "synthetic-linreg", "--optimizer", "sgd", "--steps", "2",
                 "--out", str(out)]) == 0
    assert "removed 1 stale temporary file(s)" in capsys.readouterr().err
    assert not orphan.exists() and live.exists()


def test_claims_are_exclusive_and_a_dead_owners_claim_is_taken_over(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys

    store = RunStore(tmp_path)
    config = _record().config
    lock = store.lock_path(config)
    assert lock.name == f"run-{config.key()}.lock"
    host = socket.gethostname()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    cases = [({"host": host, "pid": dead}, True), ({"host": host, "pid": os.getppid()}, False),
             ({"host": "elsewhere.invalid", "pid": dead}, False)]
    for owner, taken in cases:
        lock.write_text(json.dumps(owner))
        assert store.claim(config) is taken, owner
        assert json.loads(lock.read_text())["pid"] == (os.getpid() if taken else owner["pid"])
        store.release(config)
        assert lock.exists() is not taken  # only our own claim is released
    lock.write_text("garbage")
    assert not store.claim(config) and lock.read_text() == "garbage"
    lock.unlink()
    assert store.claim(config) and store.claim(config)  # re-entrant for its owner
    store.release(config)
    assert not lock.exists() and not list(tmp_path.glob(".tmp-*"))
