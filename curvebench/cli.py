"""The ``curvebench`` command line: list, run, show (and sweep, report from their modules).

User errors (unknown names, bad values, missing data, missing CUDA, unwritable results
directory) exit with status 2 and one line on stderr; nothing is written before all inputs of a
command are validated.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from tabulate import tabulate

from curvebench.records import (
    DEFAULT_THREADS,
    MAX_THREADS,
    execution_groups,
    mixed_execution_note,
)

__all__ = ["main", "UsageError", "summary_rows", "register_command"]

EXIT_USAGE = 2
#: ``curvebench show --format``: terminal tables, Markdown, or one row per run.
SHOW_FORMATS = ("text", "md", "csv", "parquet")


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after an option's help, except for flags and unset defaults."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (
                action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        raise UsageError(f"{self.prog}: {message}")


#: Extra subcommands contributed by other modules: ``name -> (add_arguments, handler)``.
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                           Callable[[argparse.Namespace], int]]] = {}


def register_command(name: str, *, help: str,
                     add_arguments: Callable[[argparse.ArgumentParser], None],
                     handler: Callable[[argparse.Namespace], int]) -> None:
    """Add a subcommand (used by the sweep and report modules)."""
    _COMMANDS[name] = (help, add_arguments, handler)


def _csv(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(item) for item in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got {text!r}") from None
    from curvebench.harness import MAX_SEED

    if any(not 0 <= seed <= MAX_SEED for seed in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be between 0 and {MAX_SEED}")
    return seeds


def _thread_count(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"at most {MAX_THREADS} threads, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def output_path(text: str) -> Path:
    """An ``--out`` path: never empty (``''`` would silently mean the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return Path(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _hyperparameter(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="curvebench",
        description="Benchmarks of second-order against first-order optimizers: list the "
                    "problems and optimizers, run them, sweep a study file, show stored runs "
                    "and build a report. `curvebench COMMAND --help` describes each command.",
        epilog="example: curvebench sweep studies/quick.toml --out results/quick && "
               "curvebench report results/quick --out site")
    from curvebench import __version__

    parser.add_argument("--version", action="version", version=f"curvebench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    commands.add_parser("list", help="list problems and optimizers")

    run = commands.add_parser("run", help="run problems × optimizers × seeds and store them")
    run.add_argument("--problem", type=_csv, required=True, help="comma-separated names")
    run.add_argument("--optimizer", type=_csv, required=True, help="comma-separated names")
    run.add_argument("--hp", type=_hyperparameter, action="append", default=[],
                     metavar="NAME=VALUE", help="hyperparameter override (repeatable)")
    run.add_argument("--seed", type=_seeds, default=[0],
                     help="comma-separated seeds (default: 0)")
    run.add_argument("--steps", type=_positive_int,
                     help="max optimizer steps (default: the problem's budget)")
    run.add_argument("--max-seconds", type=_positive_float,
                     help="max measured training seconds (default: the problem's budget)")
    run.add_argument("--batch-size", type=_positive_int,
                     help="mini-batch size (default: the problem's)")
    run.add_argument("--eval-every", type=_positive_int,
                     help="steps between evaluations (default: the problem's)")
    run.add_argument("--device", default="cpu", help="cpu or cuda[:index]")
    run.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                     help="floating-point precision of model and data")
    run.add_argument("--threads", type=_thread_count, default=DEFAULT_THREADS,
                     help="torch CPU threads per run (part of the run's identity)")
    run.add_argument("--backend", default="torch",
                     help="framework the runs use: torch or jax (part of the run's identity)")
    run.add_argument("--out", type=output_path, default=Path("results"),
                     help="results directory")
    run.add_argument("--data-dir", type=Path, help="data root (default: $CURVEBENCH_DATA or "
                                                   "a user cache directory)")
    run.add_argument("--offline", action="store_true",
                     help="never download data sets (same as CURVEBENCH_OFFLINE=1)")
    run.add_argument("--force", action="store_true", help="re-run configurations already stored")
    run.add_argument("--no-stop-at-target", action="store_true",
                     help="keep training after the target is reached")

    show = commands.add_parser("show", help="summary tables of stored runs (or export them)")
    show.add_argument("directory", type=Path, help="results directory (run-*.json files)")
    show.add_argument("--format", choices=SHOW_FORMATS, default="text",
                      help="text and md print tables; csv and parquet write one row per run "
                           "to --out")
    show.add_argument("--out", type=Path, help="output file (needed by csv and parquet; md "
                                               "prints to the terminal without it)")

    for name, (help_text, add_arguments, _) in _COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help_text))
    return parser


def _list_command(args: argparse.Namespace) -> int:
    from curvebench.formatting import target_label
    from curvebench.optimizers import OPTIMIZERS
    from curvebench.problems import PROBLEMS

    problem_rows = [
        [p.name, ",".join(sorted(p.tags)), p.loss, p.batch_size,
         target_label(p.target.metric, p.target.direction, p.target.value),
         p.budget.max_steps or "", p.description]
        for p in PROBLEMS
    ]
    print(tabulate(problem_rows, headers=["problem", "tags", "loss", "batch", "target",
                                          "max steps", "description"]))
    print()
    optimizer_rows = [
        [o.name, "yes" if o.needs_curvature else "", "yes" if o.supports_conv else "no",
         ",".join(o.backends), ", ".join(f"{k}={v}" for k, v in o.defaults.items()),
         o.description]
        for o in OPTIMIZERS
    ]
    print(tabulate(optimizer_rows, headers=["optimizer", "curvature", "conv", "backends",
                                            "defaults", "description"]))
    return 0


def summary_rows(records: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the one-line-per-run summary (shared by ``run`` and ``show``).

    Read from the records alone (a legacy record's defaults and headline metric fall back to
    the registry); the optimizer is labelled with its backend when the records mix backends.
    """
    from curvebench.formatting import configuration_label
    from curvebench.formatting import format_number as fmt
    from curvebench.records import RecordedOptimizer, method_label, several_backends

    headers = ["problem", "optimizer", "hyperparameters", "seed", "status", "steps→target",
               "s→target", "steps", "seconds", "final train loss", "final test metric"]
    rows = []
    with_backend = several_backends(records)
    for r in sorted(records, key=lambda r: (r.config.problem, method_label(
            r.config, with_backend=with_backend), r.config.hyperparameters, r.config.seed)):
        metric = _eval_metric(r)
        overrides = configuration_label(r.config.hyperparameter_dict,
                                        RecordedOptimizer.of(r).defaults)
        rows.append([r.config.problem, method_label(r.config, with_backend=with_backend),
                     overrides, r.config.seed, r.status,
                     fmt(r.steps_to_target), fmt(r.seconds_to_target, ".3g"), r.steps_run,
                     fmt(r.seconds, ".3g"), fmt(r.final.get("train_loss")),
                     f"{metric}={fmt(r.final.get(metric))}"])
    return headers, rows


def _eval_metric(record: Any) -> str:
    """The record's headline held-out metric (a legacy record: the registry's, else test loss)."""
    metric = record.problem_info.get("eval_metric")
    if metric:
        return str(metric)
    from curvebench.problems import PROBLEMS

    problem = record.config.problem
    return PROBLEMS.get(problem).eval_metric if problem in PROBLEMS else "test_loss"


def _run_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from curvebench.backends import get_backend
    from curvebench.environment import DeviceError
    from curvebench.harness import check_batch_size, execute, plan_run, problem_data
    from curvebench.optimizers import HyperparameterError, get_optimizer
    from curvebench.problems import Budget, get_problem
    from curvebench.problems.datasets import DatasetError
    from curvebench.registry import UnknownNameError
    from curvebench.store import RunStore, StoreError

    overrides = dict(args.hp)
    if args.offline:
        import os

        from curvebench.problems.file_problems import OFFLINE_ENV

        os.environ[OFFLINE_ENV] = "1"
    try:
        backend = get_backend(args.backend)
        problems = [get_problem(name) for name in args.problem]
        optimizers = [get_optimizer(name) for name in args.optimizer]
        configs = []
        for problem, optimizer, seed in itertools.product(problems, optimizers, args.seed):
            budget = problem.budget
            if args.steps is not None or args.max_seconds is not None:
                budget = Budget(max_steps=args.steps, max_seconds=args.max_seconds)
            configs.append(plan_run(
                problem=problem, optimizer=optimizer, hyperparameters=overrides, seed=seed,
                device=args.device, budget=budget, batch_size=args.batch_size,
                dtype=args.dtype, eval_every=args.eval_every,
                stop_at_target=not args.no_stop_at_target, threads=args.threads,
                backend=backend.name))
        if args.data_dir is not None and not args.data_dir.is_dir():
            raise UsageError(f"data directory {str(args.data_dir)!r} does not exist or is not "
                             "a directory")
        for problem in problems:  # load every data set before anything runs
            data = problem_data(problem, data_dir=args.data_dir)
            for config in configs:
                if config.problem == problem.name:
                    check_batch_size(config, training_examples=len(data.x_train))
        for config in configs:  # optimizer hyperparameter ranges, checked on a real model
            backend.check_buildable(config)
        store = RunStore(args.out)
        store.check_writable()  # last: creates the directory only for a valid command
        removed = store.remove_stale_temporaries()
        if removed:
            print(f"curvebench: removed {len(removed)} stale temporary file(s) left by "
                  f"interrupted writes in {args.out}", file=sys.stderr)
    except (UnknownNameError, HyperparameterError, DatasetError, DeviceError, StoreError,
            ValueError) as error:
        raise UsageError(str(error)) from None

    records = []
    skipped = 0
    lines = _ProgressLines(len(configs)) if not sys.stderr.isatty() else None
    with tqdm(total=len(configs), desc="runs", unit="run", disable=None) as runs_bar:
        for config in configs:
            existing = None if args.force else store.load(config)
            if existing is not None:
                records.append(existing)
                skipped += 1
                runs_bar.update()
                continue
            label = f"{config.problem} {config.optimizer} seed={config.seed}"
            with tqdm(total=config.max_steps, desc=label, unit="step", leave=False,
                      disable=None, mininterval=0.5) as steps_bar:
                def progress(step: int, loss: float, bar=steps_bar, label=label,
                             max_steps=config.max_steps) -> None:
                    bar.update()
                    if step % 50 == 0:
                        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                    if lines is not None:
                        lines.step(label, step, max_steps, loss)

                record = execute(config, data_dir=args.data_dir, progress=progress)
            if lines is not None:
                lines.done(label, record)
            store.write(record, overwrite=args.force)
            records.append(record)
            runs_bar.update()
    headers, rows = summary_rows(records)
    print(tabulate(rows, headers=headers))
    print(f"\n{len(records) - skipped} run(s) stored in {args.out}"
          + (f", {skipped} already stored (use --force to re-run)" if skipped else ""))
    return 0


class _ProgressLines:
    """Progress of ``run`` on stderr when it is not a terminal (a log file, a batch job): a
    line per finished run, and one every :attr:`PERIOD` seconds during a long run."""

    PERIOD = 30.0

    def __init__(self, total: int) -> None:
        import time

        self.clock = time.monotonic
        self.total = total
        self.finished = 0
        self.last = self.clock()

    def step(self, label: str, step: int, max_steps: int | None, loss: float) -> None:
        if self.clock() - self.last >= self.PERIOD:
            self.last = self.clock()
            print(f"curvebench run: {label}: step {step}/{max_steps or '?'} loss={loss:.4g}",
                  file=sys.stderr, flush=True)

    def done(self, label: str, record: Any) -> None:
        self.finished += 1
        self.last = self.clock()
        print(f"curvebench run: {self.finished}/{self.total} {label}: {record.status} after "
              f"{record.steps_run} steps ({record.seconds:.3g} s)", file=sys.stderr, flush=True)


def _show_command(args: argparse.Namespace) -> int:
    from curvebench.store import RunStore, StoreError

    if not args.directory.is_dir():
        raise UsageError(f"results directory {str(args.directory)!r} does not exist")
    if args.format != "text":  # the same output as `curvebench report --format md|csv|parquet`
        from curvebench.reports.cli import report_command

        try:
            records, _ = RunStore(args.directory).scan()
        except StoreError as error:
            raise UsageError(str(error)) from None
        if args.format == "md" and (note := mixed_execution_note(records)):
            print(note, file=sys.stderr)
        return report_command(argparse.Namespace(directory=args.directory, out=args.out,
                                                 format=args.format, asv_html=None,
                                                 force=False))
    try:
        records, unreadable = RunStore(args.directory).scan()
    except StoreError as error:
        raise UsageError(str(error)) from None
    for item in unreadable:
        print(f"curvebench: skipped {item.describe()}", file=sys.stderr)
    if not records:
        print(f"no runs stored in {args.directory}")
        return 0
    from curvebench.reports.tables import tables_text

    groups = execution_groups(records)
    if len(groups) > 1:  # never one leaderboard over different thread counts
        print(mixed_execution_note(records), end="\n\n")
    for label, group in groups.items():
        if len(groups) > 1:
            print(f"== runs with {label} ==\n")
        print(tables_text(group, fmt="text"), end="")
    if len(groups) == 1:
        print(f"\nevery run: {next(iter(groups))}")
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": _list_command,
    "run": _run_command,
    "show": _show_command,
}


def _load_plugins() -> None:
    """Import modules that contribute subcommands (present once those features land)."""
    import importlib

    for module in ("curvebench.sweep", "curvebench.reports.cli"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``curvebench`` command; returns the exit status."""
    _load_plugins()
    try:
        args = build_parser().parse_args(argv)
        handler = _HANDLERS.get(args.command) or _COMMANDS[args.command][2]
        return handler(args)
    except UsageError as error:
        message = " ".join(str(error).split())
        if not message.startswith("curvebench"):
            message = f"curvebench: error: {message}"
        print(message, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("curvebench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
