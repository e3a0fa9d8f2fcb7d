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
