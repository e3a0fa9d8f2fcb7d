"""Sweeps as real processes: workers die with a SIGKILLed driver; concurrent sweeps of one
study into one directory split the work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curvebench.store import process_alive
from tests.sweep_workers import PID_FOLDER

ROOT = Path(__file__).resolve().parent.parent
#: Generous bound on every wait below (they end as soon as their event happens).
PATIENCE = 120.0

DRIVER = """
import sys
from curvebench.records import RunConfig
from curvebench.store import RunStore
from curvebench.sweep import run_sweep
from tests.sweep_workers import blocking_worker

if __name__ == "__main__":
    configs = [RunConfig.create(problem=f"p{i}", optimizer="o", hyperparameters={}, seed=0,
                                batch_size=1, max_steps=1, max_seconds=None, device="cpu")
               for i in range(4)]
    run_sweep(configs, store=RunStore(sys.argv[1]), executor="process", workers=2,
              worker=blocking_worker, progress=False)
"""


CONCURRENT_DRIVER = """
import sys
from curvebench.records import RunConfig
from curvebench.store import RunStore
from curvebench.sweep import run_sweep
from tests.sweep_workers import barrier_worker

configs = [RunConfig.create(problem="p", optimizer="o", hyperparameters={"lr": 0.05}, seed=seed,
                            batch_size=128, max_steps=20, max_seconds=None, device="cpu")
           for seed in range(6)]
result = run_sweep(configs, store=RunStore(sys.argv[1]), worker=barrier_worker, progress=False)
print(result.ran, getattr(result, "claimed_elsewhere", 0), len(result.records))
"""


def _env(folder: Path) -> dict[str, str]:
    return {**os.environ, PID_FOLDER: str(folder),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {PATIENCE:.0f} s for {what}")
        time.sleep(0.05)


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
def test_workers_die_when_the_driver_is_killed(tmp_path):
    folder = tmp_path / "pids"
    folder.mkdir()
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / "out")], cwd=ROOT,
                              env=_env(folder))
    started: set[int] = set()
    try:
        _wait_for(lambda: len(list(folder.iterdir())) >= 2 or driver.poll() is not None,
                  "two workers to start")
        assert driver.poll() is None, "the driver ended early"
        workers = {int(p.name) for p in folder.iterdir()}
        started = workers | _descendants(driver.pid)  # forkserver, resource tracker, workers
        assert workers <= started
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        _wait_for(lambda: not any(process_alive(pid) for pid in started),
                  "the workers, the fork server and the resource tracker to exit")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid in started:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_two_concurrent_sweeps_split_the_work_and_run_each_configuration_once(tmp_path):
    folder = tmp_path / "log"
    folder.mkdir()
    out = tmp_path / "out"
    sweeps = [subprocess.Popen([sys.executable, "-c", CONCURRENT_DRIVER, str(out)], cwd=ROOT,
                               env=_env(folder), stdout=subprocess.PIPE, text=True)
              for _ in range(2)]
    try:
        outputs = [sweep.communicate(timeout=PATIENCE)[0] for sweep in sweeps]
    finally:
        for sweep in sweeps:
            if sweep.poll() is None:
                sweep.kill()
                sweep.wait()
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    runs = [p.name.split("-")[1:] for p in folder.glob("ran-*")]
    keys = [key for key, _ in runs]
    assert len(keys) == 6 and len(set(keys)) == 6  # every configuration ran exactly once
    assert len({pid for _, pid in runs}) == 2  # and both sweeps ran some
    ran = [int(line.split()[0]) for line in outputs]
    assert sum(ran) == 6
    assert len(list(out.glob("run-*.json"))) == 6
    assert not list(out.glob("*.lock")) and not list(out.glob(".tmp-*"))  # claims released
