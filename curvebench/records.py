"""Run configurations and run records: frozen, framework-neutral (plain numbers and strings)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["SCHEMA_VERSION", "RunConfig", "RunRecord", "Status", "STATUSES"]

#: Version of the stored JSON layout; bump on incompatible changes.
SCHEMA_VERSION = 1

Status = Literal["reached", "budget", "diverged", "error"]
STATUSES: tuple[Status, ...] = ("reached", "budget", "diverged", "error")


def _freeze(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(mapping.items()))


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run; its hash names the stored file.

    ``hyperparameters`` holds the *resolved* values (defaults merged in), so a run given
    ``lr=0.1`` explicitly and one relying on a default of 0.1 are the same run.
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
        """Stable 16-hex-digit hash of the configuration."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
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
