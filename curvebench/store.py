"""The run store: one JSON file per run, named by the hash of its configuration.

Files are written atomically (temporary file in the same directory, ``fsync``, rename), so a
killed process leaves either the old state or the complete new file. Files that cannot be read
are reported and skipped; the store never deletes or overwrites them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import math
import os
import re
import socket
import tempfile
import time
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from curvebench.records import SCHEMA_VERSION, RunConfig, RunRecord, code_label

__all__ = ["RunStore", "StoreError", "UnreadableRun", "RecordError", "runs_dataframe",
           "validate_record"]

_PREFIX = "run-"
_SUFFIX = ".json"
_TEMPORARY = ".tmp-"
_LOCK = ".lock"
#: Age after which a temporary file that names no writer of this host is stale (a write takes
#: milliseconds).
STALE_TEMPORARY_SECONDS = 600.0


class StoreError(OSError):
    """The results directory cannot be created or written (one-line message)."""


@dataclass(frozen=True)
class UnreadableRun:
    """A file in the store that is not counted, and why: unreadable, or a duplicate.

    Attributes:
        path: the file.
        reason: one line.
        duplicate: the file is readable but holds a configuration already counted from another
            file (a copy, or a record written beside an unreadable file).
    """

    path: Path
    reason: str
    duplicate: bool = False

    def describe(self) -> str:
        """``"unreadable run-….json: reason"`` (or ``"duplicate …"``), one line."""
        return f"{'duplicate' if self.duplicate else 'unreadable'} {self.path.name}: {self.reason}"


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
        """The stored record of ``config``, or ``None`` when absent or unreadable.

        Reads ``run-<hash>.json``, else a record written beside it when it was unreadable
        (``run-<hash>.<pid>-<random>.json``); only regular files whose record is valid and is
        of ``config`` count (a FIFO or a copy of another run never does).
        """
        found = self._find(config)
        return None if found is None else found[1]

    def _find(self, config: RunConfig) -> tuple[Path, RunRecord] | None:
        key = config.key()
        path = self.path_for(config)
        for candidate in (path, *self._files(f"{_PREFIX}{key}.*{_SUFFIX}")):
            if not candidate.is_file():
                continue
            try:
                record = _read(candidate)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if record.config.key() == key:
                return candidate, record
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
        found = self._find(record.config)
        if found is not None:
            path = found[0]
            if not overwrite:
                raise FileExistsError(f"{path.name} exists; pass overwrite=True to replace it")
        else:
            path = self.path_for(record.config)
            if os.path.lexists(path):  # unreadable: never ours to replace
                path = path.with_name(f"{path.stem}.{os.getpid()}-{os.urandom(3).hex()}{_SUFFIX}")
        payload = json.dumps(record.to_dict(), indent=1, allow_nan=False)
        fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=_temporary_prefix(),
                                        suffix=_SUFFIX)
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

    def lock_path(self, config: RunConfig) -> Path:
        """The lock file of ``config``'s run, beside its run file."""
        return self.directory / f"{_PREFIX}{config.key()}{_LOCK}"

    def claim(self, config: RunConfig) -> bool:
        """Claim the run of ``config`` for this process before running it.

        The claim is a lock file ``run-<hash>.lock`` holding the owner's host and pid,
        created atomically (written under a temporary name, then hard-linked into place,
        which fails when the lock exists). A lock whose owner is a dead process of this host
        is taken over; one of another host is respected (its liveness cannot be checked).
        Concurrent sweeps sharing a directory therefore split the work.

        Returns:
            Whether this process holds the claim (also when it already did).
        """
        self.check_writable()
        path = self.lock_path(config)
        mine = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(3):
            if self._create_lock(path, mine):
                return True
            text, owner = _read_lock(path)
            if owner is None:
                if text is None:  # released meanwhile: try again
                    continue
                return False  # an unreadable lock: respected, never deleted
            if owner == mine:
                return True
            if owner.get("host") != mine["host"] or process_alive(int(owner.get("pid", 0))):
                return False
            if not _take_over(path, text):
                return False
        return False

    def release(self, config: RunConfig) -> None:
        """Drop this process's claim of ``config`` (nothing when it holds none)."""
        path = self.lock_path(config)
        _, owner = _read_lock(path)
        if owner == {"host": socket.gethostname(), "pid": os.getpid()}:
            with contextlib.suppress(OSError):
                path.unlink()

    def _create_lock(self, path: Path, owner: dict[str, Any]) -> bool:
        fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=_temporary_prefix(),
                                        suffix=_SUFFIX)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(owner, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp_name, path)
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp_name).unlink(missing_ok=True)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary files (``.tmp-*.json``) left by writers that were killed.

        A temporary file names its writer (host and pid): it is stale when that process is no
        longer alive on this host, or, for files of other hosts and of older versions that
        name no writer, when it is older than :data:`STALE_TEMPORARY_SECONDS`. A file of a
        live writer is never touched.

        Returns:
            The files removed.
        """
        removed = []
        now = time.time()
        for path in self._files(f"{_TEMPORARY}*{_SUFFIX}"):
            owner = re.fullmatch(rf"{re.escape(_TEMPORARY)}([0-9a-f]{{8}})-(\d+)-.*",
                                 path.name)
            try:
                old = now - path.stat().st_mtime > STALE_TEMPORARY_SECONDS
                if owner and owner[1] == _host_id():
                    stale = not process_alive(int(owner[2]))
                else:
                    stale = old
                if stale:
                    path.unlink()
                    removed.append(path)
            except OSError:
                continue
        return removed

    def scan(self) -> tuple[list[RunRecord], list[UnreadableRun]]:
        """Load every record; return ``(records, files not counted)``.

        Each configuration is counted once: when several readable files hold the same
        configuration, the one named by its hash (else the first by name) is counted and the
        others are returned as duplicates. Invalid records (see :func:`validate_record`) are
        returned as unreadable.

        Raises:
            StoreError: the directory exists but cannot be listed.
        """
        counted: dict[str, tuple[Path, RunRecord]] = {}
        problems: list[UnreadableRun] = []
        for path in self._files():
            try:
                record = _read(path)
            except (OSError, ValueError, KeyError, TypeError) as error:
                problems.append(UnreadableRun(path=path, reason=_one_line(error)))
                continue
            key = record.config.key()
            if key in counted:
                first, _ = counted[key]
                keep, drop = first, path
                if path.name == f"{_PREFIX}{key}{_SUFFIX}":  # the file named by the hash wins
                    counted[key] = (path, record)
                    keep, drop = path, first
                problems.append(UnreadableRun(
                    path=drop, duplicate=True,
                    reason=f"same configuration as {keep.name}; counted once"))
            else:
                counted[key] = (path, record)
        return [record for _, record in counted.values()], problems

    def __iter__(self) -> Iterator[RunRecord]:
        return iter(self.scan()[0])

    def _files(self, pattern: str = f"{_PREFIX}*{_SUFFIX}") -> list[Path]:
        """Regular files matching ``pattern``, sorted (a FIFO or a directory never counts)."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            return []
        except OSError as error:
            raise StoreError(f"results directory {str(self.directory)!r} cannot be read: "
                             f"{error.strerror or type(error).__name__}") from None
        names = sorted(e.name for e in entries
                       if fnmatch.fnmatchcase(e.name, pattern) and _regular_file(e))
        return [self.directory / name for name in names]

    def dataframe(self) -> pd.DataFrame:
        """One row per readable run (see :func:`runs_dataframe`)."""
        return runs_dataframe(self.scan()[0])


def _read_lock(path: Path) -> tuple[str | None, dict[str, Any] | None]:
    """``(text, owner)`` of a lock file; ``(None, None)`` when absent."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except OSError:
        return "", None
    try:
        owner = json.loads(text)
    except ValueError:
        return text, None
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return text, None
    return text, {"host": owner.get("host"), "pid": owner["pid"]}


def _take_over(path: Path, stale_text: str) -> bool:
    """Remove the lock of a dead owner, unless it changed since it was judged stale."""
    aside = path.with_name(f"{path.name}.{os.getpid()}-{os.urandom(3).hex()}.stale")
    try:
        os.rename(path, aside)
    except OSError:
        return False
    try:
        if aside.read_text(encoding="utf-8") == stale_text:
            return True
        with contextlib.suppress(OSError):  # a fresh lock of someone else: put it back
            os.link(aside, path)
        return False
    finally:
        aside.unlink(missing_ok=True)


def _host_id() -> str:
    """Eight hex digits naming this machine (in temporary and lock file names)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _temporary_prefix() -> str:
    return f"{_TEMPORARY}{_host_id()}-{os.getpid()}-"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # a zombie (killed, not yet reaped) holds nothing any more
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _regular_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file(follow_symlinks=True)
    except OSError:
        return False


def _read(path: Path) -> RunRecord:
    if not path.is_file():  # opening a FIFO would wait forever
        raise ValueError("not a regular file")
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    validate_record(data)
    return RunRecord.from_dict(data)


class RecordError(ValueError):
    """A stored record that does not match the schema; the message names the field."""


#: Fields whose values must be at least this (``None`` always allowed where the type allows).
_MINIMUM = {"config.seed": 0, "config.batch_size": 1, "config.max_steps": 1,
            "config.eval_every": 0, "steps_run": 0, "steps_to_target": 0,
            "peak_memory_bytes": 0, "seconds": 0, "seconds_to_target": 0,
            "config.max_seconds": 0}
#: Container values that may be ``null`` in JSON (non-finite numbers are stored as ``null``).
_NULLABLE_VALUES = ("history", "evaluations", "final", "counters", "phase_seconds")


def validate_record(data: Any) -> None:
    """Check a record's JSON form against the fields and types of :class:`RunRecord`.

    Every field of :class:`RunRecord` and :class:`RunConfig` is checked against its type
    annotation (``int`` is not ``bool``; numbers are finite; ``Literal`` values are among the
    allowed; strings are valid Unicode, so a lone surrogate is refused), plus: hyperparameters
    are scalars (bool, int, finite float, str); the per-step and per-evaluation columns are
    lists of numbers or ``null`` of one length per table; ``target`` has a string ``metric``,
    a finite ``value`` and a ``direction`` of ``min``/``max`` where given; counts are
    non-negative.

    Raises:
        RecordError: one line naming the first offending field.
    """
    if not isinstance(data, dict):
        raise RecordError("not a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecordError(f"schema version {version!r}, expected {SCHEMA_VERSION}")
    _check_fields(data, RunRecord, "")
    config = data["config"]
    hyperparameters = config.get("hyperparameters")
    if not isinstance(hyperparameters, dict):
        raise RecordError(f"config.hyperparameters: expected an object, got "
                          f"{_json_type(hyperparameters)}")
    for name, value in hyperparameters.items():
        _check_value(name, str, "config.hyperparameters (a name)")
        _check_value(value, bool | int | float | str, f"config.hyperparameters.{name}")
    for mapping, values in (("settings", bool | int | float | str), ("code", str)):
        entries = config.get(mapping)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise RecordError(f"config.{mapping}: expected an object or null, got "
                              f"{_json_type(entries)}")
        for name, value in entries.items():
            _check_value(value, values, f"config.{mapping}.{name}")
    for table in ("history", "evaluations"):
        lengths = {len(column) for column in data[table].values()}
        if len(lengths) > 1:
            raise RecordError(f"{table}: columns of different lengths {sorted(lengths)}")
    target = data["target"]
    for name, hint in (("metric", str), ("value", float), ("direction", _DIRECTION)):
        if name in target:
            _check_value(target[name], hint, f"target.{name}")


_DIRECTION = typing.Literal["min", "max"]


def _check_fields(data: dict[str, Any], cls: type, prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    defaults = {f.name for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING}
    for name, hint in hints.items():
        where = f"{prefix}{name}"
        if name not in data:
            if name in defaults:
                continue
            raise RecordError(f"{where}: missing")
        value = data[name]
        if name == "config" and cls is RunRecord:
            if not isinstance(value, dict):
                raise RecordError(f"config: expected an object, got {_json_type(value)}")
            _check_fields(value, RunConfig, "config.")
        elif name in ("hyperparameters", "settings", "code") and cls is RunConfig:
            continue  # a JSON object of scalars, checked by the caller
        else:
            _check_value(value, hint, where, nullable=name in _NULLABLE_VALUES)
        if name in ("schema_version",):
            continue
        minimum = _MINIMUM.get(where)
        if minimum is not None and value is not None and value < minimum:
            raise RecordError(f"{where}: must be at least {minimum}, got {value!r}")


def _check_value(value: Any, hint: Any, where: str, *, nullable: bool = False) -> None:
    """Raise :class:`RecordError` unless the JSON ``value`` matches the annotation ``hint``.

    ``nullable``: values inside containers (dict values, list items) may be ``null``.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        _check_strings(value, where)
        return
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                _check_value(value, option, where, nullable=nullable)
                return
            except RecordError:
                continue
        raise RecordError(f"{where}: expected {_hint_name(hint)}, got {_json_type(value)}")
    if origin is typing.Literal:
        if value not in args or isinstance(value, bool) != isinstance(args[0], bool):
            raise RecordError(f"{where}: expected one of {', '.join(map(repr, args))}, got "
                              f"{_short(value)}")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {_json_type(value)}")
        for key, item in value.items():
            _check_value(key, str, f"{where} (a key)")
            if not (nullable and item is None):
                _check_value(item, args[1], f"{where}.{key}", nullable=nullable)
        return
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise RecordError(f"{where}: expected a list, got {_json_type(value)}")
        for index, item in enumerate(value):
            if not (nullable and item is None):
                _check_value(item, args[0], f"{where}[{index}]", nullable=nullable)
        return
    if hint is type(None):
        ok = value is None
    elif hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = (isinstance(value, int | float) and not isinstance(value, bool)
              and math.isfinite(value))
    elif hint is str:
        ok = isinstance(value, str)
        if ok:
            _check_strings(value, where)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise RecordError(f"{where}: expected {_hint_name(hint)}, got {_short(value)}")


def _check_strings(value: Any, where: str) -> None:
    """Every string in ``value`` (keys included) encodes as UTF-8 (no lone surrogates)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RecordError(f"{where}: a string that is not valid Unicode") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, where)
            _check_strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, where)


def _hint_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_hint_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if hint is float:
        return "a finite number"
    return {bool: "a boolean", int: "an integer", str: "a string"}.get(hint, str(hint))


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(value),
                                                                          type(value).__name__)


def _short(value: Any) -> str:
    text = _json_type(value) if isinstance(value, dict | list) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def runs_dataframe(records: list[RunRecord]) -> pd.DataFrame:
    """Flatten records into a DataFrame, one row per run.

    Columns: the config fields (``threads`` and ``workers_per_machine`` NaN, ``backend``
    ``None`` for legacy records; ``code`` as :func:`~curvebench.records.code_label`),
    ``hp.<name>`` per hyperparameter, ``status``,
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
            "backend": config.backend,
            "threads": _nan(config.threads),
            "workers_per_machine": _nan(config.workers_per_machine),
            "code": code_label(config),
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
