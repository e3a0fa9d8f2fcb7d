"""Study files: a TOML description of a hyperparameter sweep, parsed into frozen dataclasses.

A study names problems, optimizers with a hyperparameter space each, seeds, batch sizes and a
budget, and expands into one :class:`~curvebench.records.RunConfig` per
problem × batch size × optimizer × hyperparameter point × seed::

    name = "quick"
    description = "Two offline problems, SGD and Adam."
    problems = ["synthetic-linreg", "digits-logreg"]
    seeds = [0, 1]
    batch_sizes = [128]              # optional: each problem's default batch size
    device = "cpu"                   # optional
    dtype = "float32"                # optional
    eval_every = 10                  # optional: each problem's default
    stop_at_target = true            # optional
    threads = 1                      # optional: torch threads per run (default 1)
    executor = "serial"              # optional: sweep's default executor (serial, process, dask)
    backends = ["torch", "jax"]      # optional: every run on each backend (default ["torch"])

    [budget]                         # optional: each problem's default budget
    max_steps = 300
    max_seconds = 60.0
    # or: fraction = 0.5             # this share of each problem's own step budget

    [optimizers.sgd]                 # explicit grid (values), or a range with n points
    fixed = { momentum = 0.9 }
    grid = { lr = { low = 1e-3, high = 10.0, n = 5, scale = "log" } }

    [optimizers.adam]                # seeded quasi-random samples over ranges
    sample = { method = "sobol", n = 8, seed = 0, ranges = { lr = {} } }
    include_default = true           # also run the optimizer's defaults

    [optimizers.sgn]                 # an explicit list of points
    points = [{ cg_iterations = 1 }, { cg_iterations = 2 }, { cg_iterations = 5 }]

A study may state its tuning protocol instead of choosing points per optimizer (the way
Crowded Valley and AlgoPerf give every method the same tuning budget)::

    [tuning]
    configurations = 4               # the same number for every optimizer
    method = "sobol"                 # seeded scrambled Sobol or Halton points
    seed = 0

    [optimizers.sgd]                 # drawn from sgd's own search space ...
    fixed = { momentum = 0.9 }
    ranges = { lr = {} }             # ... on these axes (default: the whole search space)

With ``[tuning]`` an optimizer table takes only ``fixed`` and ``ranges``, and every optimizer
gets exactly ``configurations`` distinct points drawn from its search space (a range table may
narrow it with ``low``/``high``, visible in the file). Without it,
:meth:`Study.tuning_summary` says how many configurations each optimizer got.

Per optimizer at most one of ``points``, ``grid`` and ``sample`` is given; with none the study
runs the optimizer's defaults (with ``fixed`` applied). A grid axis is a list of values or a
range table ``{low, high, n, scale = "log"|"linear", integer = false}``; a range table without
``low``/``high`` takes them from the optimizer's search space. ``sample.ranges`` maps names to
range tables (without ``n``); an empty table, or leaving ``ranges`` out altogether, takes the
optimizer's search space. Sobol and Halton points are scrambled with ``sample.seed``
(``scipy.stats.qmc``); Sobol sequences are balanced when ``n`` is a power of two.

Every error in a study file is a :class:`StudyError` whose one-line message names the file and
the offending key, raised before anything is run.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from curvebench.formatting import configuration_label
from curvebench.goals import Budget
from curvebench.records import DEFAULT_THREADS, MAX_THREADS, RunConfig
from curvebench.spaces import (
    HyperparameterError,
    IntLogUniform,
    IntUniform,
    LogUniform,
    Space,
    Uniform,
)

if TYPE_CHECKING:  # the registries import the backends; parsing does not need them
    from curvebench.optimizers.spec import OptimizerSpec

__all__ = ["StudyError", "Study", "OptimizerSweep", "TuningProtocol", "load_study",
           "parse_study", "DESIGNS", "MAX_RUNS"]

#: The most runs a study may expand into; counted before anything is expanded, so a typo such
#: as ``n = 100000000`` is a one-line error instead of a hang or a MemoryError.
MAX_RUNS = 100_000

Design = Literal["default", "points", "grid", "sobol", "halton"]
#: How an optimizer's hyperparameter points were chosen.
DESIGNS: tuple[Design, ...] = ("default", "points", "grid", "sobol", "halton")

_TOP_KEYS = ("name", "description", "problems", "seeds", "batch_sizes", "device", "dtype",
             "eval_every", "stop_at_target", "budget", "optimizers", "threads", "tuning",
             "executor", "backends")
_TUNING_KEYS = ("configurations", "method", "seed")
_TUNED_OPTIMIZER_KEYS = ("fixed", "ranges")
_OPTIMIZER_KEYS = ("fixed", "points", "grid", "sample", "include_default")
_RANGE_KEYS = ("low", "high", "n", "scale", "integer")
_SAMPLE_KEYS = ("method", "n", "seed", "ranges")
_DTYPES = ("float32", "float64")

HyperparameterPoint = tuple[tuple[str, Any], ...]


class StudyError(ValueError):
    """A malformed study file; the one-line message names the file and the key."""


@dataclass(frozen=True)
class OptimizerSweep:
    """The hyperparameter points of one optimizer in a study.

    Args:
        optimizer: registered optimizer name.
        design: how the points were chosen (one of :data:`DESIGNS`).
        points: hyperparameter overrides per point (sorted ``(name, value)`` pairs; the
            optimizer's defaults fill in the rest); distinct after resolving defaults.
    """

    optimizer: str
    design: Design
    points: tuple[HyperparameterPoint, ...]

    def hyperparameter_points(self) -> list[dict[str, Any]]:
        """The points as dictionaries."""
        return [dict(point) for point in self.points]


@dataclass(frozen=True)
class TuningProtocol:
    """Every optimizer gets ``configurations`` points drawn by ``method`` (seeded with ``seed``)
    from its own search space."""

    configurations: int
    method: Literal["sobol", "halton"] = "sobol"
    seed: int = 0

    def describe(self) -> str:
        return (f"{self.configurations} configuration(s) per optimizer, {self.method} points "
                f"(seed {self.seed}) from each optimizer's search space")


@dataclass(frozen=True)
class Study:
    """A parsed study: what to run, not yet run.

    Args:
        name: study name (default: the file's stem).
        source: the file it came from (for messages).
        description: one line.
        problems: registered problem names.
        sweeps: one :class:`OptimizerSweep` per optimizer, in file order.
        seeds: run seeds.
        batch_sizes: batch sizes, or ``None`` for each problem's default.
        budget: budget of every run, or ``None`` for each problem's default.
        budget_fraction: with ``budget`` ``None``, run each problem for this share of its own
            step budget (0.5 is the horizon on which the offline targets were calibrated).
        device: ``"cpu"`` or ``"cuda[:index]"``.
        dtype: ``"float32"`` or ``"float64"``.
        eval_every: evaluation period, or ``None`` for each problem's default.
        stop_at_target: stop a run when it reaches the target.
        threads: torch threads per run (part of each run's identity).
        tuning: the study's tuning protocol, or ``None`` when each optimizer's points are
            chosen by hand.
        executor: how ``curvebench sweep`` runs it unless ``--executor`` says otherwise.
        backends: every run is made on each of these backends (separate records); pairs an
            optimizer does not support are skipped with a reason (:meth:`incompatible`).
    """

    name: str
    source: str
    description: str
    problems: tuple[str, ...]
    sweeps: tuple[OptimizerSweep, ...]
    seeds: tuple[int, ...]
    batch_sizes: tuple[int, ...] | None
    budget: Budget | None
    device: str = "cpu"
    dtype: str = "float32"
    eval_every: int | None = None
    stop_at_target: bool = True
    threads: int = DEFAULT_THREADS
    tuning: TuningProtocol | None = None
    budget_fraction: float | None = None
    executor: str = "serial"
    backends: tuple[str, ...] = ("torch",)

    def problem_budget(self, problem: str) -> Budget | None:
        """The budget of ``problem``'s runs (``None``: the problem's own)."""
        if self.budget is not None or self.budget_fraction is None:
            return self.budget
        from curvebench.problems import get_problem

        own = get_problem(problem).budget
        if own.max_steps is None:
            return own
        return Budget(max_steps=max(1, round(own.max_steps * self.budget_fraction)))

    def tuning_summary(self) -> str:
        """One line: the tuning protocol, or the configurations per optimizer (flagged when
        they differ, since then the robustness and best-configuration columns compare methods
        tuned with different budgets)."""
        if self.tuning is not None:
            return f"tuning: {self.tuning.describe()}"
        counts = {sweep.optimizer: len(sweep.points) for sweep in self.sweeps}
        listed = ", ".join(f"{name} {n}" for name, n in counts.items())
        if len(set(counts.values())) > 1:
            return (f"tuning: UNEQUAL budgets ({listed} configuration(s)); best and robustness "
                    "compare methods tuned with different budgets")
        return f"tuning: {listed} configuration(s), chosen by hand"

    def incompatible(self) -> list[tuple[str, str, str]]:
        """``(problem, optimizer, reason)`` pairs the study skips (capability flags)."""

        from curvebench.optimizers import get_optimizer

        skipped = []
        for problem, sweep, backend in itertools.product(self.problems, self.sweeps,
                                                         self.backends):
            reason = self._unsupported_reason(problem, sweep.optimizer, backend)
            if reason is not None:
                # an unsupported backend is the reason itself and names it; other reasons
                # say which backend's run they skip when the study has several
                about_backend = backend not in get_optimizer(sweep.optimizer).backends
                where = "" if len(self.backends) == 1 or about_backend else f" (on {backend})"
                skipped.append((problem, sweep.optimizer, reason + where))
        return skipped

    def _unsupported_reason(self, problem: str, optimizer: str, backend: str) -> str | None:
        from curvebench.optimizers import get_optimizer
        from curvebench.problems import get_problem

        spec = get_problem(problem)
        return get_optimizer(optimizer).unsupported_reason(
            tags=spec.tags, num_parameters=spec.num_parameters, backend=backend)

    def _supported(self, problem: str, optimizer: str, backend: str) -> bool:
        return self._unsupported_reason(problem, optimizer, backend) is None

    def run_configs(self) -> list[RunConfig]:
        """Every run of the study, in order problem, batch size, optimizer, point, seed.

        Duplicates (two points that resolve to the same hyperparameters) appear once.

        Raises:
            StudyError: a value the harness rejects (names the file).
        """
        from curvebench.environment import DeviceError
        from curvebench.harness import plan_run
        from curvebench.registry import UnknownNameError

        configs: list[RunConfig] = []
        seen: set[RunConfig] = set()
        for problem, batch_size, sweep, backend in itertools.product(
                self.problems, self.batch_sizes or (None,), self.sweeps, self.backends):
            if not self._supported(problem, sweep.optimizer, backend):
                continue
            for index, point in enumerate(sweep.hyperparameter_points()):
                for seed in self.seeds:
                    try:
                        config = plan_run(
                            problem=problem, optimizer=sweep.optimizer,
                            hyperparameters=point, seed=seed, device=self.device,
                            budget=self.problem_budget(problem),
                            batch_size=batch_size, dtype=self.dtype,
                            eval_every=self.eval_every,
                            stop_at_target=self.stop_at_target,
                            threads=self.threads, backend=backend)
                    except (UnknownNameError, HyperparameterError, DeviceError,
                            ValueError) as error:
                        raise StudyError(_message(
                            self.source, f"optimizers.{sweep.optimizer} point {index}",
                            str(error))) from None
                    if config not in seen:
                        seen.add(config)
                        configs.append(config)
        return configs

    def check_buildable(self) -> None:
        """Build every distinct optimizer configuration once on a model of the study.

        Catches out-of-range values (a negative learning rate) that only the optimizer's
        constructor knows about, before anything runs.

        Raises:
            StudyError: naming the optimizer and the point.
        """
        from curvebench.backends import get_backend
        from curvebench.harness import plan_run

        for sweep, backend in itertools.product(self.sweeps, self.backends):
            problems = [p for p in self.problems if self._supported(p, sweep.optimizer, backend)]
            if not problems:
                continue
            for index, point in enumerate(sweep.hyperparameter_points()):
                try:
                    get_backend(backend).check_buildable(plan_run(
                        problem=problems[0], optimizer=sweep.optimizer, hyperparameters=point,
                        threads=self.threads, backend=backend))
                except HyperparameterError as error:
                    raise StudyError(_message(
                        self.source, f"optimizers.{sweep.optimizer} point {index} "
                        f"({configuration_label(point)})", str(error))) from None


def load_study(path: Path | str) -> Study:
    """Read and validate a study file.

    Raises:
        StudyError: unreadable file, invalid TOML, unknown keys, wrong types, empty spaces,
            unknown problem, optimizer or hyperparameter names (one line naming file and key).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise StudyError(f"{path}: cannot read the study file: {reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise StudyError(_message(str(path), None, f"invalid TOML: {error}")) from None
    return parse_study(data, source=str(path), default_name=path.stem)


def parse_study(data: Mapping[str, Any], *, source: str = "<study>",
                default_name: str = "study") -> Study:
    """Validate a parsed TOML document (see the module docstring) and return the study.

    Raises:
        StudyError: as :func:`load_study`.
    """
    return _Parser(source).study(data, default_name=default_name)


def _message(source: str, key: str | None, text: str) -> str:
    text = " ".join(str(text).split())
    return f"{source}: {key}: {text}" if key else f"{source}: {text}"


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


class _Parser:
    """Validation with messages ``FILE: KEY: problem``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str | None, text: str) -> StudyError:
        return StudyError(_message(self.source, key, text))

    def table(self, value: Any, key: str, allowed: Sequence[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_type_name(value)}")
        for name in value:
            if name not in allowed:
                raise self.fail(f"{key}.{name}" if key else name,
                                f"unknown key; expected one of {', '.join(allowed)}")
        return value

    def string(self, value: Any, key: str, *, choices: Sequence[str] | None = None) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {_type_name(value)}")
        if choices is not None and value not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected a boolean, got {_type_name(value)}")
        return value

    def integer(self, value: Any, key: str, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {_type_name(value)}")
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}, got {value}")
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"expected a number, got {_type_name(value)}")
        if not math.isfinite(value):
            raise self.fail(key, f"must be finite, got {value}")
        return float(value)

    def array(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(key, f"expected an array, got {_type_name(value)}")
        if not value:
            raise self.fail(key, "must not be empty")
        return value

    def study(self, data: Mapping[str, Any], *, default_name: str) -> Study:
        from curvebench.optimizers import OPTIMIZERS
        from curvebench.problems import PROBLEMS

        data = self.table(dict(data), "", _TOP_KEYS)
        name = self.string(data.get("name", default_name), "name")
        description = self.string(data.get("description", ""), "description")
        if "problems" not in data:
            raise self.fail("problems", "missing (a list of problem names)")
        problems = []
        for i, problem in enumerate(self.array(data["problems"], "problems")):
            problem = self.string(problem, f"problems[{i}]")
            if problem not in PROBLEMS:
                raise self.fail(f"problems[{i}]", str(_unknown(PROBLEMS, problem)))
            problems.append(problem)
        seeds = tuple(self.integer(s, f"seeds[{i}]", minimum=0)
                      for i, s in enumerate(self.array(data.get("seeds", [0]), "seeds")))
        self.check_seeds(seeds)
        batch_sizes = None
        if "batch_sizes" in data:
            batch_sizes = tuple(
                self.integer(b, f"batch_sizes[{i}]", minimum=1)
                for i, b in enumerate(self.array(data["batch_sizes"], "batch_sizes")))
        device = self.string(data.get("device", "cpu"), "device")
        dtype = self.string(data.get("dtype", "float32"), "dtype", choices=_DTYPES)
        eval_every = (self.integer(data["eval_every"], "eval_every", minimum=1)
                      if "eval_every" in data else None)
        stop_at_target = self.boolean(data.get("stop_at_target", True), "stop_at_target")
        threads = self.integer(data.get("threads", DEFAULT_THREADS), "threads", minimum=1)
        if threads > MAX_THREADS:
            raise self.fail("threads", f"must be at most {MAX_THREADS}, got {threads}")
        tuning = self.tuning(data["tuning"]) if "tuning" in data else None
        from curvebench.sweep import EXECUTORS

        executor = self.string(data.get("executor", "serial"), "executor", choices=EXECUTORS)
        from curvebench.backends import backend_names

        backends = tuple(dict.fromkeys(
            self.string(b, f"backends[{i}]", choices=backend_names())
            for i, b in enumerate(self.array(data.get("backends", ["torch"]), "backends"))))
        if not backends:
            raise self.fail("backends", "must name at least one backend")
        budget, fraction = self.budget(data["budget"]) if "budget" in data else (None, None)
        if "optimizers" not in data:
            raise self.fail("optimizers", "missing (a table [optimizers.NAME] per optimizer)")
        optimizers = data["optimizers"]
        if not isinstance(optimizers, dict):
            raise self.fail("optimizers", f"expected a table, got {_type_name(optimizers)}")
        if not optimizers:
            raise self.fail("optimizers", "must name at least one optimizer")
        sweeps = []
        for optimizer, table in optimizers.items():
            key = f"optimizers.{optimizer}"
            if optimizer not in OPTIMIZERS:
                raise self.fail(key, str(_unknown(OPTIMIZERS, optimizer)))
            sweeps.append(self.tuned(OPTIMIZERS.get(optimizer), table, key, tuning)
                          if tuning is not None
                          else self.sweep(OPTIMIZERS.get(optimizer), table, key))
        points = sum(len(sweep.points) for sweep in sweeps)
        self.check_size(len(problems) * len(batch_sizes or (None,)) * points * len(seeds)
                        * len(backends), None,
                        "runs (problems × batch sizes × hyperparameter points × seeds × backends)")
        return Study(name=name, source=self.source, description=description,
                     problems=tuple(problems), sweeps=tuple(sweeps), seeds=tuple(seeds),
                     batch_sizes=batch_sizes, budget=budget, device=device, dtype=dtype,
                     eval_every=eval_every, stop_at_target=stop_at_target, threads=threads,
                     tuning=tuning, budget_fraction=fraction, executor=executor,
                     backends=backends)

    def check_seeds(self, seeds: Sequence[int]) -> None:
        from curvebench.harness import MAX_SEED

        for i, seed in enumerate(seeds):
            if seed > MAX_SEED:
                raise self.fail(f"seeds[{i}]", f"must be at most {MAX_SEED}, got {seed}")

    def check_size(self, count: int, key: str | None, what: str) -> None:
        """Refuse more than :data:`MAX_RUNS` of anything a study expands into."""
        if count > MAX_RUNS:
            raise self.fail(key, f"{count:,} {what}: more than the limit of {MAX_RUNS:,} runs "
                                 "per study; split it into several studies")

    def tuning(self, value: Any) -> TuningProtocol:
        table = self.table(value, "tuning", _TUNING_KEYS)
        if "configurations" not in table:
            raise self.fail("tuning.configurations", "missing (configurations per optimizer)")
        return TuningProtocol(
            configurations=self.integer(table["configurations"], "tuning.configurations",
                                        minimum=1),
            method=self.string(table.get("method", "sobol"), "tuning.method",
                               choices=("sobol", "halton")),  # type: ignore[arg-type]
            seed=self.integer(table.get("seed", 0), "tuning.seed", minimum=0))

    def tuned(self, spec: OptimizerSpec, value: Any, key: str,
              tuning: TuningProtocol) -> OptimizerSweep:
        """An optimizer under the study's tuning protocol: exactly ``configurations`` points."""
        if isinstance(value, dict):
            for name in ("points", "grid", "sample", "include_default"):
                if name in value:
                    raise self.fail(f"{key}.{name}", "the study's [tuning] protocol draws the "
                                                     "configurations; give only fixed and ranges")
        table = self.table(value, key, _TUNED_OPTIMIZER_KEYS)
        sample = {"method": tuning.method, "n": tuning.configurations, "seed": tuning.seed}
        if "ranges" in table:
            sample["ranges"] = table["ranges"]
        sweep = self.sweep(spec, {**({"fixed": table["fixed"]} if "fixed" in table else {}),
                                  "sample": sample}, key)
        if len(sweep.points) != tuning.configurations:
            raise self.fail(f"{key}.ranges", f"draws only {len(sweep.points)} distinct "
                                             f"configuration(s) of {tuning.configurations}; tune "
                                             "a continuous hyperparameter too")
        return sweep

    def budget(self, value: Any) -> tuple[Budget | None, float | None]:
        table = self.table(value, "budget", ("max_steps", "max_seconds", "fraction"))
        if not table:
            raise self.fail("budget", "needs max_steps, max_seconds or fraction")
        if "fraction" in table:
            if len(table) > 1:
                raise self.fail("budget.fraction", "give fraction alone (a share of each "
                                                   "problem's own budget)")
            fraction = self.number(table["fraction"], "budget.fraction")
            if not 0 < fraction <= 10:
                raise self.fail("budget.fraction", f"must be in (0, 10], got {fraction:g}")
            return None, fraction
        max_steps = (self.integer(table["max_steps"], "budget.max_steps", minimum=1)
                     if "max_steps" in table else None)
        max_seconds = None
        if "max_seconds" in table:
            max_seconds = self.number(table["max_seconds"], "budget.max_seconds")
            if max_seconds <= 0:
                raise self.fail("budget.max_seconds", f"must be positive, got {max_seconds}")
        return Budget(max_steps=max_steps, max_seconds=max_seconds), None

    def hyperparameter(self, spec: OptimizerSpec, name: str, value: Any, key: str) -> Any:
        """Check one hyperparameter name and value against the optimizer's defaults."""
        if name not in spec.defaults:
            raise self.fail(key, f"optimizer {spec.name!r} has no hyperparameter {name!r}; "
                                 f"known: {', '.join(sorted(spec.defaults))}")
        if isinstance(value, dict | list):
            raise self.fail(key, f"expected a {type(spec.defaults[name]).__name__}, "
                                 f"got {_type_name(value)}")
        try:
            return spec.resolve({name: value})[name]
        except HyperparameterError as error:
            raise self.fail(key, str(error)) from None

    def sweep(self, spec: OptimizerSpec, value: Any, key: str) -> OptimizerSweep:
        table = self.table(value, key, _OPTIMIZER_KEYS)
        designs = [d for d in ("points", "grid", "sample") if d in table]
        if len(designs) > 1:
            raise self.fail(f"{key}.{designs[1]}",
                            f"give only one of points, grid and sample (also has {designs[0]})")
        fixed_table = table.get("fixed", {})
        if not isinstance(fixed_table, dict):
            raise self.fail(f"{key}.fixed", f"expected a table, got {_type_name(fixed_table)}")
        fixed = {name: self.hyperparameter(spec, name, v, f"{key}.fixed.{name}")
                 for name, v in fixed_table.items()}
        include_default = self.boolean(table.get("include_default", False),
                                       f"{key}.include_default")
        design: Design = "default"
        points: list[dict[str, Any]] = [{}]
        if "points" in table:
            design, points = "points", self.points(spec, table["points"], f"{key}.points")
        elif "grid" in table:
            design, points = "grid", self.grid(spec, table["grid"], f"{key}.grid")
        elif "sample" in table:
            design, points = self.sample(spec, table["sample"], f"{key}.sample")
        for point in points:
            for name in point:
                if name in fixed:
                    raise self.fail(f"{key}.fixed.{name}", f"{name!r} is also swept by {design}")
        merged = [{**fixed, **point} for point in points]
        if include_default:
            merged.insert(0, {})
        unique: list[HyperparameterPoint] = []
        resolved_seen: set[tuple[tuple[str, Any], ...]] = set()
        for point in merged:
            resolved = tuple(sorted(spec.resolve(point).items()))
            if resolved not in resolved_seen:
                resolved_seen.add(resolved)
                unique.append(tuple(sorted(point.items())))
        return OptimizerSweep(optimizer=spec.name, design=design, points=tuple(unique))

    def points(self, spec: OptimizerSpec, value: Any, key: str) -> list[dict[str, Any]]:
        points = []
        for i, item in enumerate(self.array(value, key)):
            item_key = f"{key}[{i}]"
            if not isinstance(item, dict):
                raise self.fail(item_key, f"expected a table, got {_type_name(item)}")
            points.append({name: self.hyperparameter(spec, name, v, f"{item_key}.{name}")
                           for name, v in item.items()})
        return points

    def grid(self, spec: OptimizerSpec, value: Any, key: str) -> list[dict[str, Any]]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_type_name(value)}")
        if not value:
            raise self.fail(key, "must name at least one hyperparameter")
        axes: dict[str, list[Any]] = {}
        for name, axis in value.items():
            axis_key = f"{key}.{name}"
            self.hyperparameter(spec, name, spec.defaults.get(name), axis_key)  # name check
            if isinstance(axis, list):
                values = [self.hyperparameter(spec, name, v, f"{axis_key}[{i}]")
                          for i, v in enumerate(self.array(axis, axis_key))]
            elif isinstance(axis, dict):
                space, n = self.range(spec, name, axis, axis_key, with_n=True)
                values = [self.hyperparameter(spec, name, v, axis_key) for v in space.grid(n)]
            else:
                raise self.fail(axis_key, "expected an array of values or a range table "
                                          f"{{low, high, n, scale}}, got {_type_name(axis)}")
            axes[name] = list(dict.fromkeys(values))
        self.check_size(math.prod(len(v) for v in axes.values()), key, "grid points")
        names = list(axes)
        return [dict(zip(names, combo, strict=True))
                for combo in itertools.product(*(axes[n] for n in names))]

    def range(self, spec: OptimizerSpec, name: str, value: dict[str, Any], key: str, *,
              with_n: bool) -> tuple[Space, int]:
        """A range table → a search-space object (and ``n`` for grids)."""
        allowed = _RANGE_KEYS if with_n else tuple(k for k in _RANGE_KEYS if k != "n")
        table = self.table(value, key, allowed)
        n = 0
        if with_n:
            if "n" not in table:
                raise self.fail(f"{key}.n", "missing (number of grid points)")
            n = self.integer(table["n"], f"{key}.n", minimum=1)
            self.check_size(n, f"{key}.n", "grid points")
        bounds = [k for k in ("low", "high") if k in table]
        if not bounds:
            for extra in ("scale", "integer"):
                if extra in table:
                    raise self.fail(f"{key}.{extra}", "only allowed with low and high")
            space = spec.search_space.get(name)
            if space is None:
                raise self.fail(key, f"optimizer {spec.name!r} has no search range for {name!r}; "
                                     "give low and high")
            return space, n
        if len(bounds) == 1:
            missing = "high" if bounds == ["low"] else "low"
            raise self.fail(f"{key}.{missing}", "missing (give both low and high)")
        low = self.number(table["low"], f"{key}.low")
        high = self.number(table["high"], f"{key}.high")
        scale = self.string(table.get("scale", "log"), f"{key}.scale", choices=("log", "linear"))
        integer = self.boolean(table.get("integer", False), f"{key}.integer")
        try:
            if scale == "log":
                space = IntLogUniform(low, high) if integer else LogUniform(low, high)
            else:
                space = IntUniform(low, high) if integer else Uniform(low, high)
        except ValueError as error:
            raise self.fail(key, str(error)) from None
        return space, n

    def sample(self, spec: OptimizerSpec, value: Any,
               key: str) -> tuple[Design, list[dict[str, Any]]]:
        table = self.table(value, key, _SAMPLE_KEYS)
        if "method" not in table:
            raise self.fail(f"{key}.method", "missing (sobol or halton)")
        method = self.string(table["method"], f"{key}.method", choices=("sobol", "halton"))
        if "n" not in table:
            raise self.fail(f"{key}.n", "missing (number of samples)")
        n = self.integer(table["n"], f"{key}.n", minimum=1)
        self.check_size(n, f"{key}.n", "samples")
        seed = self.integer(table.get("seed", 0), f"{key}.seed", minimum=0)
        spaces: dict[str, Space] = {}
        if "ranges" in table:
            ranges = table["ranges"]
            if not isinstance(ranges, dict):
                raise self.fail(f"{key}.ranges", f"expected a table, got {_type_name(ranges)}")
            if not ranges:
                raise self.fail(f"{key}.ranges", "must name at least one hyperparameter")
            for name, item in ranges.items():
                self.hyperparameter(spec, name, spec.defaults.get(name), f"{key}.ranges.{name}")
                spaces[name], _ = self.range(spec, name, item, f"{key}.ranges.{name}",
                                             with_n=False)
        else:
            if not spec.search_space:
                raise self.fail(f"{key}.ranges", f"optimizer {spec.name!r} has no search space; "
                                                 "give ranges")
            spaces = dict(spec.search_space)
        names = sorted(spaces)
        units = _quasi_random(method, dimensions=len(names), n=n, seed=seed)
        points = []
        for row in units:
            point = {name: spaces[name].from_unit(float(u)) for name, u in zip(names, row,
                                                                                 strict=True)}
            points.append({name: self.hyperparameter(spec, name, v, f"{key}.ranges.{name}")
                           for name, v in point.items()})
        return method, points  # type: ignore[return-value]


def _quasi_random(method: str, *, dimensions: int, n: int, seed: int):
    """``n × dimensions`` scrambled Sobol or Halton points in ``[0, 1)``."""
    from scipy.stats import qmc

    engine_class = qmc.Sobol if method == "sobol" else qmc.Halton
    try:
        engine = engine_class(dimensions, scramble=True, rng=seed)
    except TypeError:  # scipy < 1.15 calls the generator ``seed``
        engine = engine_class(dimensions, scramble=True, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Sobol balance warning for n ≠ 2^k
        return engine.random(n)


def _unknown(registry: Any, name: str) -> Exception:
    try:
        registry.get(name)
    except KeyError as error:
        return error
    return KeyError(name)

