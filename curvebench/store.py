"""The run store: one JSON file per run, named by the hash of its configuration.

Files are written atomically (temporary file in the same directory, ``fsync``, rename), so a
killed process leaves either the old state or the complete new file. Files that cannot be read
are reported and skipped; the store never deletes or overwrites them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from curvebench.records import RunConfig, RunRecord

__all__ = ["RunStore", "StoreError", "UnreadableRun", "runs_dataframe"]

_PREFIX = "run-"
_SUFFIX = ".json"


class StoreError(OSError):
    """The results directory cannot be created or written (one-line message)."""


@dataclass(frozen=True)
class UnreadableRun:
    """A file in the store that could not be loaded, and why."""

    path: Path
    reason: str


class RunStore:
    """A directory of run records.

    Args:
        directory: where the ``run-<hash>.json`` files live; created on first write.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def path_for(self, config: RunConfig) -> Path:
        """The file that holds (or will hold) the run of ``config``."""
        return self.directory / f"{_PREFIX}{config.key()}{_SUFFIX}"

    def contains(self, config: RunConfig) -> bool:
        """Whether a readable record of ``config`` is stored."""
        return self.load(config) is not None

    def load(self, config: RunConfig) -> RunRecord | None:
        """The stored record of ``config``, or ``None`` when absent or unreadable."""
        path = self.path_for(config)
        if not path.exists():
            return None
        try:
            return _read(path)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def check_writable(self) -> None:
        """Create the directory if needed and check a file can be written there.

        Raises:
            StoreError: with a one-line reason.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".probe-"):
                pass
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise StoreError(f"results directory {str(self.directory)!r} is not writable: "
                             f"{reason}") from None

    def write(self, record: RunRecord, *, overwrite: bool = False) -> Path:
        """Atomically write ``record``; return its path.

        Args:
            record: the run.
            overwrite: replace an existing *readable* record of the same config (``--force``).
                An unreadable file is never replaced: the new record is written beside it.

        Raises:
            FileExistsError: when a record exists and ``overwrite`` is false.
            StoreError: when the directory is not writable.
        """
        self.check_writable()
        path = self.path_for(record.config)
        if path.exists():
            readable = self.load(record.config) is not None
            if not readable:
                path = path.with_name(f"{path.stem}.{os.getpid()}-{os.urandom(3).hex()}{_SUFFIX}")
            elif not overwrite:
                raise FileExistsError(f"{path.name} exists; pass overwrite=True to replace it")
        payload = json.dumps(record.to_dict(), indent=1, allow_nan=False)
        fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=_SUFFIX)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return path

    def scan(self) -> tuple[list[RunRecord], list[UnreadableRun]]:
        """Load every record; return ``(records, unreadable files)``."""
        records: list[RunRecord] = []
        problems: list[UnreadableRun] = []
        for path in self._files():
            try:
                records.append(_read(path))
            except (OSError, ValueError, KeyError, TypeError) as error:
                problems.append(UnreadableRun(path=path, reason=_one_line(error)))
        return records, problems

    def __iter__(self) -> Iterator[RunRecord]:
        return iter(self.scan()[0])

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob(f"{_PREFIX}*{_SUFFIX}") if p.is_file())

    def dataframe(self) -> pd.DataFrame:
        """One row per readable run (see :func:`runs_dataframe`)."""
        return runs_dataframe(self.scan()[0])


def _read(path: Path) -> RunRecord:
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return RunRecord.from_dict(data)


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def runs_dataframe(records: list[RunRecord]) -> pd.DataFrame:
    """Flatten records into a DataFrame, one row per run.

    Columns: the config fields (``threads`` and ``workers_per_machine`` NaN for legacy
    records), ``hp.<name>`` per hyperparameter, ``status``,
    ``steps_to_target``, ``seconds_to_target``, ``steps_run``, ``seconds``, ``final_<metric>``,
    ``counter.<name>``, ``phase.<name>`` (seconds), ``peak_memory_bytes``, ``key``.
    """
    rows: list[dict[str, Any]] = []
    for record in records:
        config = record.config
        row: dict[str, Any] = {
            "key": config.key(),
            "problem": config.problem,
            "optimizer": config.optimizer,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "max_steps": config.max_steps,
            "max_seconds": config.max_seconds,
            "device": config.device,
            "dtype": config.dtype,
            "threads": _nan(config.threads),
            "workers_per_machine": _nan(config.workers_per_machine),
            "status": record.status,
            "steps_to_target": _nan(record.steps_to_target),
            "seconds_to_target": _nan(record.seconds_to_target),
            "steps_run": record.steps_run,
            "seconds": record.seconds,
            "target_metric": record.target.get("metric"),
            "target_value": record.target.get("value"),
            "peak_memory_bytes": _nan(record.peak_memory_bytes),
            "error": record.error,
        }
        row.update({f"hp.{k}": v for k, v in config.hyperparameters})
        row.update({f"final_{k}": _nan(v) for k, v in record.final.items()})
        row.update({f"counter.{k}": v for k, v in record.counters.items()})
        row.update({f"phase.{k}": v for k, v in record.phase_seconds.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _nan(value: float | int | None) -> float:
    return math.nan if value is None else float(value)
