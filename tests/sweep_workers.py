"""Worker functions for sweep tests that run in real child processes (importable by name)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

#: Environment variable naming the folder where workers leave ``<pid>`` files.
PID_FOLDER = "CURVEBENCH_TEST_PID_FOLDER"


def blocking_worker(config: dict[str, Any], data_dir: str | None) -> dict[str, Any]:
    """Announce this worker's pid, then block (until killed)."""
    Path(os.environ[PID_FOLDER], str(os.getpid())).write_text(config["problem"])
    while True:
        time.sleep(3600)


def barrier_worker(config: dict[str, Any], data_dir: str | None) -> dict[str, Any]:
    """Note ``ran-<key>-<pid>``, wait until two processes have each started a run (so two
    sweeps overlap), then return a synthetic record of ``config``."""
    import dataclasses

    from curvebench.records import RunConfig
    from tests.report_fixtures import synthetic_record

    folder = Path(os.environ[PID_FOLDER])
    run_config = RunConfig.from_dict(config)
    (folder / f"ran-{run_config.key()}-{os.getpid()}").write_text("")
    deadline = time.monotonic() + 120
    while len({p.name.rsplit("-", 1)[1] for p in folder.glob("ran-*")}) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the other sweep never started a run")
        time.sleep(0.02)
    record = synthetic_record(problem=run_config.problem, optimizer=run_config.optimizer,
                              hyperparameters=dict(run_config.hyperparameters),
                              seed=run_config.seed, steps=20)
    return dataclasses.replace(record, config=run_config).to_dict()
