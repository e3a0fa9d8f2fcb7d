"""Run configurations and run records: frozen, framework-neutral (plain numbers and strings)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["SCHEMA_VERSION", "RunConfig", "RunRecord", "Status", "STATUSES", "RecordedOptimizer",
           "recorded_optimizers", "record_backend", "several_backends", "method_label",
           "method_name", "execution_label", "execution_groups", "mixed_execution_note",
           "code_label", "DEFAULT_THREADS", "MAX_THREADS", "PHASES"]

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
_IDENTITY_SINCE_V1 = ("threads", "workers_per_machine", "backend", "settings", "code")

#: Phase names the reports know (keys of ``RunRecord.phase_seconds``); optimizers may use
#: others, which are kept as they are.
PHASES = ("forward", "backward", "curvature", "solve", "update", "line_search")


def execution_label(config: RunConfig) -> str:
    """``threads=1 workers/machine=2 code=1a2b3c4d`` (``?`` for what a legacy record does not
    know; ``code`` is the start of curvebench's source fingerprint, :func:`code_label`)."""
    def show(value: int | None) -> str:
        return "?" if value is None or value == 0 else str(value)

    return (f"threads={show(config.threads)} workers/machine={show(config.workers_per_machine)}"
            f" code={code_label(config)}")


def code_label(config: RunConfig) -> str:
    """The first 8 hex digits of the curvebench source fingerprint that ran ``config`` (``?``
    for a legacy record)."""
    return (config.code_dict or {}).get("curvebench", "?")[:8]


def execution_groups(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """Records by :func:`execution_label`, largest group first (one group: nothing mixed)."""
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(execution_label(record.config), []).append(record)
    return dict(sorted(groups.items(), key=lambda item: -len(item[1])))


def mixed_execution_note(records: Sequence[RunRecord]) -> str | None:
    """One line when ``records`` mix thread counts, workers per machine or code, else
    ``None``."""
    groups = execution_groups(records)
    if len(groups) < 2:
        return None
    parts = "; ".join(f"{label}: {len(items)} run(s)" for label, items in groups.items())
    return (f"note: these runs were made with different execution settings ({parts}; "
            "? = not recorded); their seconds are not comparable across settings, nor any result "
            "across code")


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

    ``backend`` (``"torch"`` or ``"jax"``) names the framework that ran it; ``settings`` holds
    the optimizer's fixed, non-tunable constructor arguments (``OptimizerSpec.settings``, e.g.
    SGN's Armijo constant), so changing one in code makes a new run instead of silently reusing
    a stale one. Both are part of the identity and, like the fields above, left out of
    :meth:`key` when ``None`` (a legacy record).

    ``code`` (:func:`curvebench.backends.run_code`) names the code that runs it: a fingerprint
    of curvebench's source and the versions of the backend's libraries. Part of the identity
    too, so a stored run is reused only by the same code; ``None`` for a legacy record.
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
    settings: tuple[tuple[str, Any], ...] | None = None
    #: What runs it (``{"curvebench": source fingerprint, "torch": version, ...}``, frozen);
    #: ``None``: a legacy record.
    code: tuple[tuple[str, str], ...] | None = None

    @classmethod
    def create(cls, *, hyperparameters: Mapping[str, Any],
               settings: Mapping[str, Any] | None = None,
               code: Mapping[str, str] | None = None, **fields: Any) -> RunConfig:
        """Build a config from a hyperparameter mapping (and settings and code mappings)."""
        return cls(hyperparameters=_freeze(hyperparameters),
                   settings=None if settings is None else _freeze(settings),
                   code=None if code is None else _freeze(code), **fields)

    @property
    def hyperparameter_dict(self) -> dict[str, Any]:
        return dict(self.hyperparameters)

    @property
    def settings_dict(self) -> dict[str, Any] | None:
        """The fixed settings as a mapping; ``None`` for a legacy record (not recorded)."""
        return None if self.settings is None else dict(self.settings)

    @property
    def code_dict(self) -> dict[str, str] | None:
        """The code that runs it as a mapping; ``None`` for a legacy record (not recorded)."""
        return None if self.code is None else dict(self.code)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hyperparameters"] = self.hyperparameter_dict
        data["settings"] = self.settings_dict
        data["code"] = self.code_dict
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        data = dict(data)
        return cls.create(hyperparameters=data.pop("hyperparameters"),
                          settings=data.pop("settings", None), code=data.pop("code", None),
                          **data)

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

    ``optimizer_info`` (``OptimizerSpec.describe()``: defaults, search-space scales, settings,
    ...) and ``problem_info`` (``ProblemSpec.describe()``: target with its direction, budget,
    tags, number of parameters, ...) make the record self-describing: reports and metrics read
    them instead of the live registries, so a report of old runs does not change when the code
    does. Records written before they existed have them empty (readers fall back, with a note).
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
    optimizer_info: dict[str, Any] = field(default_factory=dict)
    problem_info: dict[str, Any] = field(default_factory=dict)
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
        missing = names - set(data) - {"error", "notes", "optimizer_info", "problem_info",
                                       "schema_version"}
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


#: The backend of a record that does not name one: every run before backends existed was torch.
LEGACY_BACKEND = "torch"


def record_backend(config: RunConfig) -> str:
    """The framework that ran ``config`` (``torch`` for a legacy record without the field)."""
    return config.backend or LEGACY_BACKEND


def several_backends(records: Sequence[RunRecord]) -> bool:
    """Whether ``records`` were run by more than one backend (then labels name the backend)."""
    return len({record_backend(r.config) for r in records}) > 1


def method_name(optimizer: str, backend: str | None, *, with_backend: bool) -> str:
    """An optimizer's label in tables: ``"adam"``; ``"adam [torch]"`` when ``with_backend``
    (runs of several backends that would otherwise merge); a run on a backend other than torch
    is always labelled (``"adam [jax]"``). ``backend=None``: a legacy (torch) record."""
    backend = backend or LEGACY_BACKEND
    return f"{optimizer} [{backend}]" if with_backend or backend != LEGACY_BACKEND else optimizer


def method_label(config: RunConfig, *, with_backend: bool) -> str:
    """:func:`method_name` of a run's configuration."""
    return method_name(config.optimizer, config.backend, with_backend=with_backend)


@dataclass(frozen=True)
class RecordedOptimizer:
    """What run records say about one optimizer: what metrics and labels need.

    It has the ``defaults`` and ``search_space`` of an ``OptimizerSpec`` (so it can stand in
    for one in :mod:`curvebench.metrics`), read from ``RunRecord.optimizer_info`` rather than
    the live registry. ``source`` says where the values came from: ``records``; ``registry``
    for a legacy record without ``optimizer_info`` (defaults from today's registry, no search
    space: hyperparameter scales follow the values' rule); ``unknown`` when the legacy record's
    optimizer is not registered either.
    """

    name: str
    defaults: Mapping[str, Any]
    search_space: Mapping[str, Any]
    settings: Mapping[str, Any] | None
    source: Literal["records", "registry", "unknown"]

    @classmethod
    def of(cls, record: RunRecord) -> RecordedOptimizer:
        """The description stored in ``record`` (falling back to the registry, see above)."""
        name = record.config.optimizer
        info = record.optimizer_info
        if info:
            from curvebench.spaces import space_from_dict

            return cls(name=name, defaults=dict(info.get("defaults", {})),
                       search_space={k: space_from_dict(v)
                                     for k, v in info.get("search_space", {}).items()},
                       settings=dict(info.get("settings", {})), source="records")
        from curvebench.optimizers import OPTIMIZERS  # a legacy record: the only place left

        if name in OPTIMIZERS:
            return cls(name=name, defaults=dict(OPTIMIZERS.get(name).defaults), search_space={},
                       settings=None, source="registry")
        return cls(name=name, defaults={}, search_space={}, settings=None, source="unknown")


def recorded_optimizers(
    records: Sequence[RunRecord], labels: Sequence[str] | None = None,
) -> tuple[dict[str, RecordedOptimizer], list[str]]:
    """Per optimizer label, the :class:`RecordedOptimizer` of its records, and notes.

    Args:
        records: the runs.
        labels: per record, the name its group goes by (default: the optimizer's name; e.g.
            :func:`method_label` when backends are compared).

    Returns:
        ``(label → description, notes)``: the description of the latest record (by
        ``started_at``) of each label that has one; one note line for labels whose records all
        predate stored descriptions (fallback to the registry, or unknown) and for labels whose
        records store different descriptions (the code changed between runs).
    """
    labels = list(labels) if labels is not None else [r.config.optimizer for r in records]
    latest: dict[str, tuple[bool, str, RunRecord]] = {}
    seen: dict[str, set[str]] = {}
    for record, label in zip(records, labels, strict=True):
        rank = (bool(record.optimizer_info), record.started_at)  # described records first
        if label not in latest or rank >= latest[label][:2]:
            latest[label] = (*rank, record)
        if record.optimizer_info:
            seen.setdefault(label, set()).add(
                json.dumps(record.optimizer_info, sort_keys=True, default=str))
    found = {label: RecordedOptimizer.of(record)
             for label, (_, _, record) in sorted(latest.items())}
    notes = []
    from_registry = [k for k, v in found.items() if v.source == "registry"]
    unknown = [k for k, v in found.items() if v.source == "unknown"]
    changed = [k for k, prints in sorted(seen.items()) if len(prints) > 1]
    if from_registry:
        notes.append(f"note: the records of {', '.join(from_registry)} predate stored optimizer "
                     "descriptions; their defaults are today's registered ones and "
                     "hyperparameter scales follow the values")
    if unknown:
        notes.append(f"note: the records of {', '.join(unknown)} predate stored optimizer "
                     "descriptions and the optimizer is not registered: defaults unknown")
    if changed:
        notes.append(f"note: the records of {', '.join(changed)} store different optimizer "
                     "descriptions (the code changed between runs); the latest is used")
    return found, notes
