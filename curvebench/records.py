"""Run configurations and run records: frozen, framework-neutral (plain numbers and strings)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["SCHEMA_VERSION", "RunConfig", "RunRecord", "Status", "STATUSES",
           "execution_label", "execution_groups", "mixed_execution_note", "DEFAULT_THREADS",
           "MAX_THREADS"]

#: Version of the stored JSON layout; bump on incompatible changes.
SCHEMA_VERSION = 1

Status = Literal["reached", "budget", "diverged", "error"]
STATUSES: tuple[Status, ...] = ("reached", "budget", "diverged", "error")


#: Torch threads of a run unless told otherwise. One: on a shared machine a multi-threaded
#: step waits on OpenMP barriers whenever another process holds a core (issue report: a
#: digits-logreg SGD run took 0.5 s with one thread and 18 s with two on a busy 2-core
#: machine), and one thread per run lets a process pool use the cores without oversubscribing.
DEFAULT_THREADS = 1
#: Most torch threads a run accepts (more only oversubscribes; a million crashes torch).
MAX_THREADS = 512

#: Identity fields added after the first records were written; ``None`` = not recorded.
_IDENTITY_SINCE_V1 = ("threads", "workers_per_machine", "backend")


def execution_label(config: RunConfig) -> str:
    """``threads=1 workers/machine=2`` (``?`` for a setting a legacy record does not know)."""
    def show(value: int | None) -> str:
        return "?" if value is None or value == 0 else str(value)

    return f"threads={show(config.threads)} workers/machine={show(config.workers_per_machine)}"


def execution_groups(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Records by :func:`execution_label`, largest group first (one group: nothing mixed)."""
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(execution_label(record.config), []).append(record)
    return dict(sorted(groups.items(), key=lambda item: -len(item[1])))


def mixed_execution_note(records: Sequence[RunRecord]) -> str | None:
    """One line when ``records`` mix thread counts or workers per machine, else ``None``."""
    groups = execution_groups(records)
    if len(groups) < 2:
        return None
    parts = "; ".join(f"{label}: {len(items)} run(s)" for label, items in groups.items())
    return (f"note: these runs were made with different execution settings ({parts}; "
            "? = not recorded); their seconds are not comparable across settings")


def _freeze(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(mapping.items()))


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run; its hash names the stored file.

    ``hyperparameters`` holds the *resolved* values (defaults merged in), so a run given
    ``lr=0.1`` explicitly and one relying on a default of 0.1 are the same run.

    ``threads`` (torch intra-op threads of the run) and ``workers_per_machine`` (how many runs
    the executor runs at once on one machine: 1 for ``run`` and serial sweeps; 0 when not known,
    e.g. on a remote Dask cluster) are part of the identity: the thread count changes the
    floating-point reduction order, hence the loss curve, and both change the measured seconds
    (and with them seconds-to-target and a ``max_seconds`` budget). ``None`` marks a legacy
    record written before these fields existed (settings unknown); ``None`` fields are left out
    of :meth:`key`, so such records keep the hash their file is named by.
    """

    problem: str
    optimizer: str
    hyperparameters: tuple[tuple[str, Any], ...]
    seed: int
    batch_size: int
    max_steps: int | None
    max_seconds: float | None
    device: str
    dtype: str = "float32"
    eval_every: int = 0
    stop_at_target: bool = True
    threads: int | None = None
    workers_per_machine: int | None = None
    #: The framework the run ran on (``"torch"``, ``"jax"``); ``None``: a legacy torch record.
    backend: str | None = None

    @classmethod
    def create(cls, *, hyperparameters: Mapping[str, Any], **fields: Any) -> RunConfig:
        """Build a config from a hyperparameter mapping."""
        return cls(hyperparameters=_freeze(hyperparameters), **fields)

    @property
    def hyperparameter_dict(self) -> dict[str, Any]:
        return dict(self.hyperparameters)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hyperparameters"] = self.hyperparameter_dict
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        data = dict(data)
        return cls.create(hyperparameters=data.pop("hyperparameters"), **data)

    def key(self) -> str:
        """Stable 16-hex-digit hash of the configuration (legacy ``None`` fields left out)."""
        data = self.to_dict()
        for name in _IDENTITY_SINCE_V1:
            if data[name] is None:
                del data[name]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunRecord:
    """The result of one run.

    ``history`` holds per-step columns (``step``, ``seconds``, ``loss`` and the optimizer's
    per-step diagnostics and counter increments); ``evaluations`` holds per-evaluation columns
    (``step``, ``seconds``, ``train_loss``, ``test_loss``, ``test_accuracy``). Missing values are
    ``None`` in JSON and NaN in memory.
    """

    config: RunConfig
    status: Status
    steps_run: int
    seconds: float
    steps_to_target: int | None
    seconds_to_target: float | None
    target: dict[str, Any]
    final: dict[str, float | None]
    history: dict[str, list[float]]
    evaluations: dict[str, list[float]]
    counters: dict[str, float]
    phase_seconds: dict[str, float]
    peak_memory_bytes: int | None
    environment: dict[str, Any]
    started_at: str
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["config"] = self.config.to_dict()
        data["config_key"] = self.config.key()
        return _json_safe(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """Rebuild a record from its JSON form.

        Raises:
            ValueError: wrong schema version or missing fields.
        """
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"schema version {version!r}, expected {SCHEMA_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(data) - {"error", "notes", "schema_version"}
        if missing:
            raise ValueError(f"missing fields {sorted(missing)}")
        values = {k: v for k, v in data.items() if k in names}
        values["config"] = RunConfig.from_dict(data["config"])
        for column_group in ("history", "evaluations"):
            values[column_group] = {
                k: [math.nan if x is None else x for x in v] for k, v in data[column_group].items()
            }
        return cls(**values)


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by ``None`` (strict JSON) recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
