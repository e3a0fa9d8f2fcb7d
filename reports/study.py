"""A study as the reports see it: stored runs, their summary DataFrame and per-step curves.

A *configuration* (``arm``) is one optimizer with one set of hyperparameters and one batch size
on one problem; its seeds are repeated runs of it. Labels name only the hyperparameters that
differ from the optimizer's registered defaults.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from curvebench.formatting import configuration_label
from curvebench.records import (
    RecordedOptimizer,
    RunRecord,
    method_label,
    record_backend,
    recorded_optimizers,
    several_backends,
)
from curvebench.store import RunStore, UnreadableRun, runs_dataframe

__all__ = [
    "Study",
    "PASS_WEIGHTS",
    "GRADIENT_EQUIVALENTS_DEFINITION",
    "gradient_equivalents",
    "run_threads",
    "run_load",
    "timing_conditions",
]

#: Weight of each per-step counter in gradient-equivalent passes (one gradient = 1.0).
PASS_WEIGHTS: Mapping[str, float] = {
    "forward_passes": 0.5,
    "backward_passes": 0.5,
    "ggn_products": 1.0,
    "hessian_products": 1.0,
    "jacobian_vector_products": 0.5,
}

#: The definition, as printed on the report pages.
GRADIENT_EQUIVALENTS_DEFINITION = (
    "Gradient-equivalent passes = (forward passes + backward passes) / 2 + GGN-vector products "
    "+ Hessian-vector products + Jacobian-vector products / 2, summed over steps from the "
    "optimizers' own counters. One mini-batch gradient (one forward and one backward pass) "
    "counts 1; a GGN- or Hessian-vector product (a forward-mode and a reverse-mode pass) counts "
    "1; a Jacobian-vector product alone (forward mode) counts 1/2. Line-search function "
    "evaluations count through the forward passes the optimizer reports; CG iterations count "
    "through their curvature products."
)


def gradient_equivalents(history: Mapping[str, Sequence[float]]) -> np.ndarray:
    """Cumulative gradient-equivalent passes after each step of one run.

    ``G_t = Σ_{s≤t} Σ_c w_c · count_c(s)`` with weights :data:`PASS_WEIGHTS`; missing counters
    (NaN or absent columns) count 0.

    Args:
        history: a run's per-step columns (``count_<counter>`` columns are read).

    Returns:
        Array with one value per step.
    """
    steps = len(history.get("step", ()))
    total = np.zeros(steps)
    for counter, weight in PASS_WEIGHTS.items():
        column = history.get(f"count_{counter}")
        if column is not None:
            total += weight * np.nan_to_num(np.asarray(column, dtype=float), nan=0.0)
    return np.cumsum(total)


def run_threads(record: RunRecord) -> int | None:
    """The thread count a run was timed with: the configured ``threads`` when the record's
    configuration has one, else the count its environment recorded; ``None`` when neither."""
    configured = record.config.to_dict().get("threads")
    value = configured if configured is not None else record.environment.get("threads")
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def run_load(record: RunRecord) -> float | None:
    """The machine's load (1-minute load average) recorded with a run, when it was."""
    for name in ("load_average", "load"):
        value = record.environment.get(name)
        if isinstance(value, list | tuple) and value:
            value = value[0]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def timing_conditions(runs: pd.DataFrame) -> str:
    """``"threads: 1; load 0.8–1.9"``: the conditions the seconds of ``runs`` were measured
    under (``threads: unknown`` and ``load: not recorded`` when the records do not say;
    ``code: mixed …`` when runs of more than one curvebench source are among them)."""
    threads = sorted({int(t) for t in runs.get("threads", pd.Series(dtype=float)).dropna()})
    if not threads:
        text = "threads: unknown"
    elif len(threads) == 1:
        text = f"threads: {threads[0]}"
    else:
        text = "threads: mixed " + ", ".join(map(str, threads)) + " (not comparable)"
    codes = sorted(set(runs.get("code", pd.Series(dtype=object)).dropna()) - {"?"})
    if len(codes) > 1:  # one code is the norm and goes unsaid
        text += "; code: mixed " + ", ".join(codes) + " (not comparable)"
    loads = runs.get("load", pd.Series(dtype=float)).dropna()
    if loads.empty:
        return f"{text}; load: not recorded"
    low, high = float(loads.min()), float(loads.max())
    return f"{text}; load {low:.2g}" + (f"–{high:.2g}" if high > low else "")


@dataclass(frozen=True)
class Study:
    """The stored runs of one results directory.

    Attributes:
        records: readable runs, in the store's order.
        unreadable: files that could not be read.
        runs: one row per run (:func:`curvebench.store.runs_dataframe` columns plus
            ``configuration`` (hyperparameter label), ``arm`` (optimizer and label, with the
            batch size when it varies within the problem) and ``gradient_equivalents``).
            When the records come from several backends, ``optimizer`` names the backend too
            (``"adam [jax]"``), so no table merges runs of two frameworks; ``method`` keeps
            the optimizer's name and ``backend`` the framework.
        directory: where the runs came from, when loaded from a directory.
        optimizers: per ``optimizer`` label, what the records say about it (defaults and
            search-space scales; see :func:`curvebench.records.recorded_optimizers`): the
            reports read these, never the live registry.
        notes: one line per caveat on those descriptions (legacy records, changed code).
    """

    records: tuple[RunRecord, ...]
    unreadable: tuple[UnreadableRun, ...] = ()
    runs: pd.DataFrame = field(default_factory=pd.DataFrame, compare=False)
    directory: Path | None = None
    optimizers: Mapping[str, RecordedOptimizer] = field(default_factory=dict, compare=False)
    notes: tuple[str, ...] = ()

    @property
    def several_backends(self) -> bool:
        """Whether the runs come from more than one backend (compared side by side)."""
        return several_backends(self.records)

    @classmethod
    def load(cls, directory: Path | str) -> Study:
        """Scan a results directory."""
        records, unreadable = RunStore(directory).scan()
        return cls.from_records(records, unreadable=unreadable, directory=Path(directory))

    @classmethod
    def from_records(cls, records: Iterable[RunRecord], *,
                     unreadable: Iterable[UnreadableRun] = (),
                     directory: Path | None = None) -> Study:
        """Build a study from records (synthetic or loaded)."""
        records = tuple(records)
        runs = runs_dataframe(list(records))
        with_backend = several_backends(records)
        methods = [method_label(r.config, with_backend=with_backend) for r in records]
        optimizers, notes = recorded_optimizers(records, methods)
        if records:
            runs["method"] = runs["optimizer"]
            runs["backend"] = [record_backend(r.config) for r in records]
            runs["optimizer"] = methods
            labels = [configuration_label(r.config.hyperparameter_dict,
                                          RecordedOptimizer.of(r).defaults) for r in records]
            runs["configuration"] = labels
            batch_sizes = runs.groupby("problem")["batch_size"].transform("nunique")
            runs["arm"] = [
                f"{o} {c}" + (f" bs={b}" if n > 1 else "")
                for o, c, b, n in zip(runs["optimizer"], labels, runs["batch_size"], batch_sizes,
                                      strict=True)
            ]
            runs["gradient_equivalents"] = [
                float(gradient_equivalents(r.history)[-1]) if r.history.get("step") else 0.0
                for r in records
            ]
            runs["started_at"] = [r.started_at for r in records]
            runs["threads"] = pd.array([run_threads(r) for r in records], dtype="Int64")
            runs["load"] = [np.nan if (v := run_load(r)) is None else v for r in records]
        return cls(records=records, unreadable=tuple(unreadable), runs=runs, directory=directory,
                   optimizers=optimizers, notes=tuple(notes))

    def problems(self) -> list[str]:
        """Problem names present, sorted."""
        return sorted(self.runs["problem"].unique()) if len(self.runs) else []

    def problem_runs(self, problem: str) -> pd.DataFrame:
        """Rows of :attr:`runs` for one problem."""
        return self.runs[self.runs["problem"] == problem]

    def curves(self, keys: Iterable[str], *, source: str = "history") -> pd.DataFrame:
        """Long table of the per-step (``history``) or per-evaluation columns of some runs.

        Adds ``key`` and ``arm`` columns, and ``gradient_equivalents`` for ``history``.
        """
        wanted = set(keys)
        arms = dict(zip(self.runs["key"], self.runs["arm"], strict=True)) if wanted else {}
        frames = []
        for record in self.records:
            key = record.config.key()
            if key not in wanted:
                continue
            columns = getattr(record, source)
            if not columns or not columns.get("step"):
                continue
            frame = pd.DataFrame({k: np.asarray(v, dtype=float) for k, v in columns.items()})
            if source == "history":
                frame["gradient_equivalents"] = gradient_equivalents(columns)
            frame["key"] = key
            frame["arm"] = arms[key]
            frames.append(frame)
        if not frames:
            return pd.DataFrame(columns=["key", "arm", "step"])
        return pd.concat(frames, ignore_index=True)

