"""Tests of curvebench.sweep: resume after SIGKILL, divergence, executors agree, failures stored."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from curvebench.cli import main
from curvebench.harness import DIVERGENCE_FACTOR
from curvebench.records import RunConfig
from curvebench.store import RunStore
from curvebench.study import load_study
from curvebench.sweep import run_sweep, threads_per_worker

ROOT = Path(__file__).resolve().parent.parent

KILL_STUDY = """
problems = ["synthetic-linreg"]
seeds = [0]
stop_at_target = false
eval_every = 50
[budget]
max_steps = 100
[optimizers.sgd]
fixed = { momentum = 0.0 }
grid = { lr = { low = 1e-4, high = 1e-2, n = 10 } }
"""

SMALL_STUDY = """
problems = ["synthetic-linreg", "digits-logreg"]
seeds = [0]
eval_every = 5
[budget]
max_steps = 15
[optimizers.sgd]
grid = { lr = [0.01, 1.0, 1000.0] }
[optimizers.adam]
"""


def study_configs(tmp_path: Path, text: str) -> list[RunConfig]:
    path = tmp_path / "study.toml"
    path.write_text(text, encoding="utf-8")
    return load_study(path).run_configs()


def run_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("run-*.json"))}


#: A sweep driver whose third run blocks until it is killed: the kill lands in the middle of the
#: sweep whatever the load, and the test waits on files appearing, not on the clock.
KILL_DRIVER = """
import sys, time
from pathlib import Path
from curvebench.store import RunStore
from curvebench.study import load_study
from curvebench.sweep import execute_config, run_sweep

out = Path(sys.argv[2])

def worker(config, data_dir):
    if len(list(out.glob("run-*.json"))) >= 2:
        while True:  # held in flight until the test kills the process
            time.sleep(0.05)
    return execute_config(config, data_dir)

if __name__ == "__main__":
    run_sweep(load_study(sys.argv[1]).run_configs(), store=RunStore(out), worker=worker,
              progress=False)
"""
#: Only against a hang: the test waits for an event, this bound is never the expected path.
SAFETY_SECONDS = 900


@pytest.mark.slow
def test_sigkill_mid_sweep_then_resume_keeps_every_completed_run(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(KILL_STUDY, encoding="utf-8")
    driver = tmp_path / "driver.py"
    driver.write_text(KILL_DRIVER, encoding="utf-8")
    out = tmp_path / "results"
    configs = load_study(study).run_configs()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, str(driver), str(study), str(out)],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        start = time.monotonic()
        while len(list(out.glob("run-*.json"))) < 2:
            if process.poll() is not None:
                pytest.fail(f"the sweep ended before it could be killed: "
                            f"{process.stderr.read().decode(errors='replace')[-2000:]}")
            if time.monotonic() - start > SAFETY_SECONDS:
                pytest.fail("no runs stored (safety bound against a hang)")
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:  # whatever happened above: nothing we started survives
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    before = run_files(out)
    assert len(before) == 2

    records, unreadable = RunStore(out).scan()
    assert not unreadable and len(records) == len(before)

    result = run_sweep(configs, store=RunStore(out), progress=False)
    assert result.skipped == len(before)
    assert result.ran == len(configs) - len(before)  # none is run twice
    after = run_files(out)
    assert {name: after[name] for name in before} == before  # completed runs kept, untouched
    assert len(after) == len(configs)  # one file per configuration, no duplicates
    records, unreadable = RunStore(out).scan()
    assert not unreadable
    assert {r.config for r in records} == set(configs)


def test_learning_rate_sweep_records_divergence_within_a_step(tmp_path):
    text = """
problems = ["synthetic-linreg"]
eval_every = 5
[budget]
max_steps = 30
[optimizers.sgd]
fixed = { momentum = 0.0 }
grid = { lr = { low = 1e-6, high = 1e3, n = 10 } }
"""
    configs = study_configs(tmp_path, text)
    result = run_sweep(configs, store=RunStore(tmp_path / "out"), progress=False)
    assert len(result.records) == len(configs) == 10
    status = {r.config.hyperparameter_dict["lr"]: r.status for r in result.records}
    assert status[1e-6] == "budget" and status[1e3] == "diverged"
    assert all(s in ("budget", "reached", "diverged") for s in status.values())
    for record in result.records:
        losses = record.history["loss"]
        assert len(losses) == record.steps_run
        if record.status != "diverged":
            assert all(math.isfinite(v) for v in losses)
            continue
        bad = [i for i, v in enumerate(losses)
               if not math.isfinite(v) or v > DIVERGENCE_FACTOR * losses[0]]
        first_non_finite = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        assert bad, "a diverged run must show a non-finite or exploding loss"
        assert record.steps_run <= bad[0] + 1
        if first_non_finite is not None:
            assert record.steps_run <= first_non_finite + 1
    stored, unreadable = RunStore(tmp_path / "out").scan()
    assert not unreadable and len(stored) == 10


def comparable(record) -> dict:
    """What must agree between executors (everything except clocks and the environment)."""
    return {"config": record.config, "status": record.status, "steps_run": record.steps_run,
            "steps_to_target": record.steps_to_target,
            "losses": np.asarray(record.history["loss"], dtype=float),
            "evaluations": {k: np.asarray(v, dtype=float) for k, v in record.evaluations.items()
                            if k != "seconds"},
            "final": record.final, "counters": record.counters}


def same_run(config: RunConfig) -> RunConfig:
    """The config without the executor's concurrency (which changes clocks, not numbers)."""
    return dataclasses.replace(config, workers_per_machine=None)


def assert_same_records(left, right) -> None:
    assert [same_run(r.config) for r in left] == [same_run(r.config) for r in right]
    for a, b in zip(left, right, strict=True):
        a, b = comparable(a), comparable(b)
        for key in ("status", "steps_run", "steps_to_target", "counters"):
            assert a[key] == b[key], key
        np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-6)
        for column in a["evaluations"]:
            np.testing.assert_allclose(a["evaluations"][column], b["evaluations"][column],
                                       rtol=1e-6)


@pytest.mark.slow
def test_dask_local_cluster_stores_the_same_records_as_serial(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    configs = study_configs(tmp_path, SMALL_STUDY)
    serial = run_sweep(configs, store=RunStore(tmp_path / "serial"), progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        dask = run_sweep(configs, store=RunStore(tmp_path / "dask"), executor="dask",
                         scheduler=client, progress=False)
    assert dask.ran == serial.ran == len(configs)
    assert_same_records(serial.records, dask.records)
    stored = sorted(RunStore(tmp_path / "dask"), key=lambda r: r.config.key())
    assert_same_records(sorted(serial.records, key=lambda r: r.config.key()), stored)
    assert {r.status for r in stored} == {"diverged", "budget"}


def crash_on_large_lr(config: dict, data_dir):
    """A worker whose process dies on one configuration (as a segfault or OOM kill would)."""
    from curvebench.sweep import execute_config

    if config["hyperparameters"]["lr"] > 100:
        os._exit(3)
    return execute_config(config, data_dir)


@pytest.mark.slow
def test_process_pool_matches_serial_and_stores_a_dying_worker_as_error(tmp_path):
    configs = study_configs(tmp_path, SMALL_STUDY.replace(', "digits-logreg"', ""))
    serial = run_sweep(configs, store=RunStore(tmp_path / "serial"), progress=False)
    pool = run_sweep(configs, store=RunStore(tmp_path / "pool"), executor="process", workers=2,
                     worker=crash_on_large_lr, progress=False)
    crashed = [r for r in pool.records if r.config.hyperparameter_dict.get("lr", 0) > 100]
    assert len(crashed) == 1 and crashed[0].status == "error" and "died" in crashed[0].error
    assert pool.worker_failures == len(crashed)
    healthy = [r for r in pool.records if r not in crashed]
    expected = [r for r in serial.records
                if same_run(r.config) in {same_run(h.config) for h in healthy}]
    assert_same_records(expected, healthy)
    assert len(list((tmp_path / "pool").glob("run-*.json"))) == len(configs)


class PoolBrokenBeforeItsFutureSaysSo:
    """A process pool run in this process, whose worker "dies" on an lr above 100.

    The death breaks the pool at once, so the next ``submit`` raises ``BrokenProcessPool``
    before the sweep has seen the dead run's future: the order a real pool produces when a
    worker dies while the sweep is busy with another run's result.
    """

    submitted: list[str] = []

    def __init__(self, **_: object) -> None:
        self.broken = False

    def submit(self, fn, /, *args):
        from concurrent.futures import Future
        from concurrent.futures.process import BrokenProcessPool

        if self.broken:
            raise BrokenProcessPool("a child process terminated abruptly")
        future: Future = Future()
        config = args[0] if args else None
        if isinstance(config, dict) and config["hyperparameters"].get("lr", 0) > 100:
            self.broken = True
            future.set_exception(BrokenProcessPool("a child process terminated abruptly"))
        else:
            future.set_result(fn(*args))
        if isinstance(config, dict):
            self.submitted.append(config["optimizer"] + f" {config['hyperparameters']['lr']}")
        return future

    def shutdown(self, **_: object) -> None:
        pass


def test_a_submission_that_finds_the_pool_broken_is_run_later_not_blamed(tmp_path, monkeypatch):
    import curvebench.sweep as sweep

    monkeypatch.setattr(sweep, "ProcessPoolExecutor", PoolBrokenBeforeItsFutureSaysSo)
    PoolBrokenBeforeItsFutureSaysSo.submitted = []
    configs = study_configs(tmp_path, SMALL_STUDY.replace(', "digits-logreg"', ""))
    result = run_sweep(configs, store=RunStore(tmp_path), executor="process", workers=2,
                       progress=False)
    # sgd 0.01 and 1.0 finish; sgd 1000 kills the pool; adam's submission finds it broken,
    # then sgd 1000 runs alone in a new pool and dies again, then adam runs.
    assert PoolBrokenBeforeItsFutureSaysSo.submitted == [
        "sgd 0.01", "sgd 1.0", "sgd 1000.0", "sgd 1000.0", "adam 0.001"]
    status = {(r.config.optimizer, r.config.hyperparameter_dict["lr"]): r.status
              for r in result.records}
    assert status.pop(("sgd", 1000.0)) == "error"
    assert "error" not in status.values() and len(status) == 3
    assert result.worker_failures == 1


def failing_worker(config: dict, data_dir):
    raise RuntimeError("data server\nunreachable")


def test_worker_exception_is_stored_as_error_and_retried_on_request(tmp_path):
    configs = study_configs(tmp_path, SMALL_STUDY)[:3]
    store = RunStore(tmp_path / "out")
    failed = run_sweep(configs, store=store, worker=failing_worker, progress=False)
    assert failed.worker_failures == 3
    assert {r.status for r in store} == {"error"}
    assert all(r.error == "RuntimeError: data server unreachable" for r in store)
    resumed = run_sweep(configs, store=store, progress=False)
    assert (resumed.ran, resumed.skipped) == (0, 3)  # errors are results
    retried = run_sweep(configs, store=store, retry_errors=True, progress=False)
    assert retried.ran == 3 and "error" not in {r.status for r in store}
    assert len(list(store.directory.glob("run-*.json"))) == 3


def test_sweep_command_resumes_and_prints_a_summary(tmp_path, capsys):
    study = tmp_path / "study.toml"
    study.write_text(SMALL_STUDY.replace('"digits-logreg"', ""), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out)]) == 0
    first = capsys.readouterr()
    assert "robustness" in first.out and "synthetic-linreg" in first.out
    assert "4 run(s) stored" in first.out and "ETA" in first.err
    files = run_files(out)
    assert main(["sweep", str(study), "--out", str(out)]) == 0
    assert "0 run(s) stored" in capsys.readouterr().out
    assert run_files(out) == files
    assert main(["sweep", str(study), "--out", str(out), "--dry-run", "--force"]) == 0
    assert "4 to run" in capsys.readouterr().err


def test_sweep_command_rejects_bad_executor_options(tmp_path, capsys):
    study = tmp_path / "study.toml"
    study.write_text(SMALL_STUDY, encoding="utf-8")
    assert main(["sweep", str(study), "--out", str(tmp_path / "o"), "--scheduler",
                 "tcp://127.0.0.1:1"]) == 2
    assert "--scheduler needs --executor dask" in capsys.readouterr().err
    assert main(["sweep", str(study), "--out", str(tmp_path / "o"), "--executor", "mpi"]) == 2
    assert not (tmp_path / "o").exists()


def test_threads_per_worker_shares_the_cores():
    assert threads_per_worker(1, cores=8) == 8
    assert threads_per_worker(3, cores=8) == 2
    assert threads_per_worker(16, cores=8) == 1


def test_stored_records_are_strict_json(tmp_path):
    configs = study_configs(tmp_path, SMALL_STUDY)[:2]
    run_sweep(configs, store=RunStore(tmp_path / "out"), progress=False)
    for path in (tmp_path / "out").glob("run-*.json"):
        json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
