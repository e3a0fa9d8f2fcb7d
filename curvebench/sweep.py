"""Run a study's configurations serially, in a local process pool, or on a Dask cluster.

Workers run :func:`curvebench.harness.execute` and return the record as a plain dictionary; the
driver alone writes records to the :class:`~curvebench.store.RunStore`, one atomic file per run
as soon as it arrives. A sweep therefore resumes where it stopped: configurations with a
readable stored record are skipped, and a killed sweep loses only the runs that were in flight.

Failures are results. Training failures and divergences come back from the harness as records
with status ``error``/``diverged``; an exception raised in a worker outside training, or a
worker process that dies (while the run is alone in the process pool; after Dask's own retries
on a cluster), is stored as an ``error`` record with the reason in ``error``.
``--retry-errors`` runs stored ``error`` records again.

Also registers the ``curvebench sweep`` subcommand.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from curvebench.formatting import format_interval, format_number
from curvebench.records import (
    RunConfig,
    RunRecord,
    execution_label,
    method_label,
    method_name,
    mixed_execution_note,
)
from curvebench.store import RunStore

__all__ = [
    "EXECUTORS",
    "Executor",
    "SweepResult",
    "SweepError",
    "execute_config",
    "failure_record",
    "for_executor",
    "workers_per_machine",
    "pending_configs",
    "run_sweep",
    "study_summary",
    "threads_per_worker",
]

Executor = Literal["serial", "process", "dask"]
#: The executors ``run_sweep`` knows.
EXECUTORS: tuple[Executor, ...] = ("serial", "process", "dask")

#: ``worker(config_dict, data_dir) -> record_dict``; must be picklable for process and dask.
Worker = Callable[[dict[str, Any], "str | None"], dict[str, Any]]
#: What an executor yields per configuration: ``(config, record dict or None, failure or None)``.
_Outcome = tuple[RunConfig, "dict[str, Any] | None", "str | None"]


class SweepError(RuntimeError):
    """The sweep cannot start (executor unavailable, scheduler unreachable); one line."""


@dataclass(frozen=True)
class SweepResult:
    """What a sweep did.

    Args:
        records: the records of every configuration of the sweep (stored earlier or now), in
            the order of the configurations.
        ran: configurations run by this call.
        skipped: configurations already stored (not run).
        worker_failures: configurations whose worker failed outside training (stored as
            ``error`` records).
        seconds: wall-clock seconds of the call.
        claimed_elsewhere: configurations left to another sweep running them at the same
            time (see :meth:`RunStore.claim`); their records are included when stored.
    """

    records: tuple[RunRecord, ...]
    ran: int
    skipped: int
    worker_failures: int
    seconds: float
    claimed_elsewhere: int = 0


def threads_per_worker(workers: int, *, cores: int | None = None) -> int:
    """Torch intra-op threads per worker so ``workers`` processes share the cores: ``⌊c/w⌋ ≥ 1``."""
    cores = cores or _cores()
    return max(1, cores // max(1, workers))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def workers_per_machine(executor: Executor, *, workers: int | None = None,
                        scheduler: Any = None) -> int:
    """How many runs ``executor`` runs at once on one machine (recorded in every config).

    Serial: 1. Process pool and Dask ``LocalCluster``: ``workers`` (default: the cores). A
    Dask ``Client`` object: the most workers on one host. A remote scheduler address or a
    cluster object: ``workers`` when given (read as workers per machine), else 0 (unknown).
    """
    if executor == "serial":
        return 1
    if executor == "process" or scheduler is None:
        return workers or _cores()
    info = getattr(scheduler, "scheduler_info", None)
    if callable(info):
        try:
            hosts = collections.Counter(w.get("host") for w in info()["workers"].values())
            return max(hosts.values(), default=0)
        except Exception:  # noqa: BLE001 — an unexpected scheduler answer: unknown
            return workers or 0
    return workers or 0


def for_executor(configs: Sequence[RunConfig], *, executor: Executor,
                 workers: int | None = None, scheduler: Any = None) -> list[RunConfig]:
    """``configs`` with ``workers_per_machine`` set to what ``executor`` will run them with.

    It is part of a run's identity: runs sharing the cores measure other seconds than runs
    alone, so a sweep resumed with another executor runs its configurations again instead of
    mixing timings under one hash.
    """
    count = workers_per_machine(executor, workers=workers, scheduler=scheduler)
    return [c if c.workers_per_machine == count else
            dataclasses.replace(c, workers_per_machine=count) for c in configs]


def execute_config(config: dict[str, Any], data_dir: str | None = None) -> dict[str, Any]:
    """Worker function: run one configuration (a :meth:`RunConfig.to_dict`) → record dict."""
    from curvebench.harness import execute

    return execute(RunConfig.from_dict(config), data_dir=data_dir).to_dict()


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _init_worker(threads: int | None, driver: int) -> None:
    """Process-pool initializer: die with the driver, then set the torch threads."""
    die_with(driver)
    _set_threads(threads)


def die_with(driver: int) -> None:
    """End this process as soon as process ``driver`` ends, however it ends (even SIGKILL).

    A daemon thread waits on a pidfd of the driver (Linux ≥ 5.3: an event, no polling), or
    else checks every second that the driver is alive; then this process exits at once
    (``os._exit``), so a killed sweep leaves no worker running.
    """
    import threading

    from curvebench.store import process_alive

    try:
        handle = os.pidfd_open(driver)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # not Linux, or an old kernel
        handle = None

    def watch() -> None:
        if handle is not None:
            import select

            select.select([handle], [], [])  # readable once the driver has exited
        else:
            while process_alive(driver):
                time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="curvebench-driver-watch", daemon=True).start()


def _execute_with_threads(config: dict[str, Any], data_dir: str | None, threads: int | None,
                          worker: Worker) -> dict[str, Any]:
    _set_threads(threads)
    return worker(config, data_dir)


def failure_record(config: RunConfig, reason: str) -> RunRecord:
    """An ``error`` record for a configuration whose worker failed before producing a record."""
    from curvebench.problems import PROBLEMS

    target: dict[str, Any] = {}
    if config.problem in PROBLEMS:
        spec = PROBLEMS.get(config.problem).target
        target = {"metric": spec.metric, "value": spec.value, "direction": spec.direction}
    return RunRecord(
        config=config, status="error", steps_run=0, seconds=0.0, steps_to_target=None,
        seconds_to_target=None, target=target, final={},
        history={"step": [], "seconds": [], "loss": []}, evaluations={}, counters={},
        phase_seconds={}, peak_memory_bytes=None, environment={},
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        error=_one_line(reason)[:500], notes={"failure": "worker"},
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _exception_line(error: BaseException) -> str:
    return _one_line(f"{type(error).__name__}: {error}")


def pending_configs(configs: Sequence[RunConfig], store: RunStore, *, force: bool = False,
                    retry_errors: bool = False) -> tuple[list[RunConfig], dict[RunConfig,
                                                                                RunRecord]]:
    """Split ``configs`` into those to run and the stored records of the others.

    Args:
        configs: the sweep.
        store: where records live.
        force: run everything again.
        retry_errors: run configurations whose stored record has status ``error`` again.
    """
    todo: list[RunConfig] = []
    stored: dict[RunConfig, RunRecord] = {}
    for config in dict.fromkeys(configs):
        record = None if force else store.load(config)
        if record is None or (retry_errors and record.status == "error"):
            todo.append(config)
        else:
            stored[config] = record
    return todo, stored


def run_sweep(
    configs: Sequence[RunConfig],
    *,
    store: RunStore,
    executor: Executor = "serial",
    workers: int | None = None,
    scheduler: str | None = None,
    data_dir: Path | str | None = None,
    force: bool = False,
    retry_errors: bool = False,
    worker: Worker = execute_config,
    progress: bool = True,
) -> SweepResult:
    """Run the configurations not yet stored and write each record as it arrives.

    Args:
        configs: the runs (e.g. :meth:`curvebench.study.Study.run_configs`); their
            ``workers_per_machine`` is set to the executor's (:func:`for_executor`), so the
            records returned and stored carry it.
        store: the results directory.
        executor: ``serial`` (in this process), ``process`` (a local process pool, each worker
            with ``threads_per_worker(workers)`` torch threads) or ``dask``
            (``dask.distributed.Client(scheduler)``, or a ``LocalCluster`` of ``workers``
            processes when ``scheduler`` is ``None``).
        workers: number of parallel workers (default: the number of cores; ignored by serial
            and by a given Dask scheduler).
        scheduler: Dask scheduler address (``tcp://host:8786``), or a ``dask.distributed``
            ``Client``/cluster object to use as is (then nothing is closed here).
        data_dir: data root passed to every worker.
        force: run configurations again even when stored (the new record replaces the old).
        retry_errors: run stored ``error`` records again.
        worker: the function run per configuration (tests replace it).
        progress: show a progress bar (on a terminal) or one line per run on stderr with an ETA.

    Returns:
        A :class:`SweepResult`.

    Raises:
        SweepError: unknown executor, Dask missing or its scheduler unreachable.
        StoreError: the results directory is not writable.
    """
    start = time.perf_counter()
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise SweepError(f"workers must be positive, got {workers}")
    store.check_writable()
    configs = for_executor(configs, executor=executor, workers=workers, scheduler=scheduler)
    todo, stored = pending_configs(configs, store, force=force, retry_errors=retry_errors)
    overwrite = set(todo) if (force or retry_errors) else set()
    data = None if data_dir is None else str(data_dir)
    new: dict[RunConfig, RunRecord] = {}
    failures = 0
    claims = _Claims(store, force=force, retry_errors=retry_errors)
    try:
        if todo:
            if executor == "serial":
                outcomes = _serial(claims.lazily(todo), worker=worker, data_dir=data)
            elif executor == "process":
                outcomes = _process_pool(todo, worker=worker, data_dir=data,
                                         workers=workers or _cores(), claim=claims.take)
            else:
                outcomes = _dask(list(claims.lazily(todo)), worker=worker, data_dir=data,
                                 workers=workers, scheduler=scheduler)
            with _Progress(len(todo), enabled=progress) as bar:
                for config, result, failure in outcomes:
                    if failure is None:
                        record = RunRecord.from_dict(result)
                    else:
                        failures += 1
                        record = failure_record(config, failure)
                    try:
                        store.write(record, overwrite=config in overwrite)
                    except FileExistsError:  # another sweep stored it meanwhile: keep theirs
                        record = store.load(config) or record
                    claims.release(config)
                    new[config] = record
                    bar.done(record)
    finally:
        claims.release_all()
    for config in claims.elsewhere:  # finished by the other sweep by now, perhaps
        record = store.load(config)
        if record is not None:
            stored[config] = record
    ordered = [new.get(c) or stored.get(c) for c in dict.fromkeys(configs)]
    return SweepResult(records=tuple(r for r in ordered if r is not None), ran=len(new),
                       skipped=len(stored) - len(claims.elsewhere & set(stored)),
                       worker_failures=failures, seconds=time.perf_counter() - start,
                       claimed_elsewhere=len(claims.elsewhere))


class _Claims:
    """The configurations this sweep has claimed (:meth:`RunStore.claim`) and left to others.

    A configuration is run only once claimed, and only if no other sweep stored it between
    the to-do list and the claim.
    """

    def __init__(self, store: RunStore, *, force: bool, retry_errors: bool) -> None:
        self.store = store
        self.force = force
        self.retry_errors = retry_errors
        self.held: set[RunConfig] = set()
        self.elsewhere: set[RunConfig] = set()

    def take(self, config: RunConfig) -> bool:
        if config in self.held:
            return True
        if not self.store.claim(config):
            self.elsewhere.add(config)
            return False
        record = None if self.force else self.store.load(config)
        if record is not None and not (self.retry_errors and record.status == "error"):
            self.store.release(config)  # stored by another sweep meanwhile
            self.elsewhere.add(config)
            return False
        self.held.add(config)
        return True

    def lazily(self, configs: Sequence[RunConfig]) -> Iterator[RunConfig]:
        """The configurations this sweep claims, each claimed just before it is yielded."""
        return (config for config in configs if self.take(config))

    def release(self, config: RunConfig) -> None:
        if config in self.held:
            self.held.discard(config)
            self.store.release(config)

    def release_all(self) -> None:
        for config in list(self.held):
            self.release(config)


def _serial(configs: Sequence[RunConfig], *, worker: Worker,
            data_dir: str | None) -> Iterator[_Outcome]:
    for config in configs:
        try:
            yield config, worker(config.to_dict(), data_dir), None
        except Exception as error:  # noqa: BLE001 — a failing worker is a result
            yield config, None, _exception_line(error)


def _process_pool(configs: Sequence[RunConfig], *, worker: Worker, data_dir: str | None,
                  workers: int,
                  claim: Callable[[RunConfig], bool] = lambda _: True) -> Iterator[_Outcome]:
    """A pool of ``workers`` fresh processes (``forkserver`` where available, else ``spawn``).

    At most ``workers`` runs are in flight. When a worker process dies, the pool breaks and
    every run in flight is a suspect: suspects are run again one at a time in a new pool, so a
    death while a suspect runs alone is its own, and it is stored as an ``error`` record. A
    run whose submission finds the pool already broken never started; it waits for the new
    pool without suspicion. A
    pool whose workers cannot start at all (checked with a trivial task) stops the sweep with
    :class:`SweepError` instead of blaming the runs.
    """
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if context.get_start_method() == "forkserver":  # workers fork with torch already imported
        context.set_forkserver_preload(["curvebench.harness"])
    threads = threads_per_worker(workers)
    pending = collections.deque(configs)
    suspects: set[RunConfig] = set()
    while pending:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                   initializer=_init_worker, initargs=(threads, os.getpid()))
        running: dict[Any, RunConfig] = {}
        broken = False
        try:
            try:
                pool.submit(os.getpid).result()
            except BrokenProcessPool as error:
                raise SweepError("the process pool's workers die on start-up (is the sweep "
                                 "started from a script without an `if __name__ == "
                                 f"'__main__':` guard?): {_exception_line(error)}") from None
            while running or (pending and not broken):
                while pending and not broken and len(running) < workers:
                    alone = pending[0] in suspects or any(c in suspects
                                                          for c in running.values())
                    if running and alone:
                        break
                    config = pending.popleft()
                    if not claim(config):  # another sweep runs it
                        continue
                    try:
                        running[pool.submit(worker, config.to_dict(), data_dir)] = config
                    except BrokenProcessPool:  # a run in flight killed its worker just now
                        broken = True  # this one never started: it is no suspect
                        pending.appendleft(config)
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    config = running.pop(future)
                    try:
                        yield config, future.result(), None
                    except BrokenProcessPool:
                        broken = True
                        if config in suspects:  # it ran alone: the death is its own
                            yield config, None, ("the worker process died running this "
                                                 "configuration (alone in the pool)")
                        else:
                            suspects.add(config)
                            pending.appendleft(config)
                    except Exception as error:  # noqa: BLE001 — a failing worker is a result
                        yield config, None, _exception_line(error)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _dask(configs: Sequence[RunConfig], *, worker: Worker, data_dir: str | None,
          workers: int | None, scheduler: Any) -> Iterator[_Outcome]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SweepError("the dask executor needs dask.distributed: "
                         "pip install 'dask[distributed]'") from None
    owned: list[Any] = []
    threads: int | None = None
    try:
        if scheduler is None:
            count = workers or _cores()
            cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            owned.append(cluster)
            client = Client(cluster)
            owned.insert(0, client)
            threads = threads_per_worker(count)
        elif isinstance(scheduler, str):
            try:
                client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as error:
                raise SweepError(f"cannot connect to the Dask scheduler {scheduler!r}: "
                                 f"{_exception_line(error)}") from None
            owned.append(client)
        elif isinstance(scheduler, Client):
            client = scheduler
        else:  # a cluster object
            client = Client(scheduler)
            owned.append(client)
    except SweepError:
        raise
    except Exception as error:  # noqa: BLE001 — cluster start-up failures are one line
        for item in owned:
            item.close()
        raise SweepError(f"cannot start the Dask cluster: {_exception_line(error)}") from None
    try:
        futures = {}
        for config in configs:
            future = client.submit(_execute_with_threads, config.to_dict(), data_dir, threads,
                                   worker, key=f"curvebench-run-{config.key()}", pure=False)
            futures[future.key] = (future, config)
        for future in as_completed([f for f, _ in futures.values()]):
            config = futures[future.key][1]
            try:
                result = future.result()
            except Exception as error:  # noqa: BLE001 — includes KilledWorker
                yield config, None, _exception_line(error)
            else:
                yield config, result, None
            future.release()
    finally:
        for item in owned:
            item.close()


class _Progress:
    """A tqdm bar on a terminal; otherwise one line per finished run with an ETA on stderr."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        from tqdm import tqdm

        self.total = total
        self.enabled = enabled
        self.count = 0
        self.start = time.perf_counter()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.bar = tqdm(total=total, desc="sweep", unit="run", disable=None if enabled else True,
                        dynamic_ncols=True)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def done(self, record: RunRecord) -> None:
        self.count += 1
        self.statuses[record.status] += 1
        if not self.enabled:
            return
        if not self.bar.disable:
            self.bar.set_postfix(dict(self.statuses), refresh=False)
            self.bar.update()
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.count * (self.total - self.count)
        config = record.config
        print(f"curvebench sweep: {self.count}/{self.total} "
              f"[{_clock(elapsed)} elapsed, ETA {_clock(eta)}] {config.problem} "
              f"{config.optimizer} {_hyperparameters(config)} seed={config.seed} "
              f"batch={config.batch_size}: {record.status}", file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _hyperparameters(config: RunConfig) -> str:
    """The label of a configuration about to run (its defaults are the live registry's)."""
    from curvebench.formatting import configuration_label
    from curvebench.optimizers import OPTIMIZERS

    defaults = OPTIMIZERS.get(config.optimizer).defaults if config.optimizer in OPTIMIZERS else {}
    return configuration_label(config.hyperparameter_dict, defaults)


# ---------------------------------------------------------------------------------------------
# Summary and the command line


def study_summary(records: Sequence[RunRecord], *,
                  optimizer_specs: Mapping[str, Any] | None = None) -> tuple[list[str],
                                                                          list[list[Any]]]:
    """Headers and rows: one line per problem × optimizer × batch size of a sweep.

    Columns: runs and their statuses, best steps-to-target with its bootstrap interval over
    seeds, the median over configurations, best seconds-to-target, robustness (see
    :func:`curvebench.metrics.robustness`) and the best hyperparameters. Hyperparameter scales
    come from ``optimizer_specs`` when given, else from the records
    (:func:`curvebench.records.recorded_optimizers`).
    """
    from curvebench import metrics
    from curvebench.records import recorded_optimizers
    from curvebench.store import runs_dataframe

    headers = ["problem", "optimizer", "batch", "configs", "runs", "reached", "diverged",
               "error", "best steps→target [95% CI]", "median steps", "best s→target",
               "robustness", "best hyperparameters"]
    if not records:
        return headers, []
    backends: dict[str, list[RunRecord]] = {}
    for record in records:
        backends.setdefault(record.config.backend or "torch", []).append(record)
    if len(backends) > 1:  # never pool two backends' runs: one set of rows per backend
        rows = []
        for backend, group in sorted(backends.items()):
            for row in study_summary(group, optimizer_specs=optimizer_specs)[1]:
                rows.append([row[0], method_name(row[1], backend, with_backend=True),
                             *row[2:]])
        return headers, rows
    frame = runs_dataframe(list(records))
    summary = metrics.steps_to_target_summary(frame)
    if optimizer_specs is None:
        optimizer_specs = recorded_optimizers(list(records))[0]
    robust = metrics.robustness(frame, optimizer_specs=optimizer_specs)
    merged = summary.merge(robust[[*metrics.GROUP, "robustness"]], on=list(metrics.GROUP))
    counts = (frame.groupby([*metrics.GROUP, "status"]).size().unstack("status", fill_value=0))
    rows = []
    for _, row in merged.iterrows():
        key = tuple(row[c] for c in metrics.GROUP)
        status = counts.loc[key] if key in counts.index else {}
        rows.append([
            row["problem"], row["optimizer"], int(row["batch_size"]), int(row["n_configs"]),
            int(row["n_runs"]), int(status.get("reached", 0)), int(status.get("diverged", 0)),
            int(status.get("error", 0)),
            format_interval(row["best_steps"], row["best_steps_low"], row["best_steps_high"],
                            ".0f"),
            format_number(row["median_steps"], ".0f"),
            format_number(row["best_seconds"], ".3g"),
            f"{row['robustness']:.2f}", row["best_hyperparameters"],
        ])
    return headers, rows


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from curvebench.cli import _positive_int, _thread_count, output_path

    parser.add_argument("study", type=Path, help="study file (TOML)")
    parser.add_argument("--out", type=output_path, required=True, help="results directory")
    parser.add_argument("--executor", choices=EXECUTORS,
                        help="serial, process (local process pool) or dask (default: the "
                             "study's executor key, else serial)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="Dask scheduler address (default: start a LocalCluster)")
    parser.add_argument("--workers", type=_positive_int,
                        help="parallel workers (default: the number of cores); with "
                             "--scheduler, the workers per machine to record")
    parser.add_argument("--threads", type=_thread_count,
                        help="torch threads per run (default: the study's threads key, else "
                             "1); part of each run's identity")
    parser.add_argument("--backend",
                        help="run every configuration on this backend only, torch or jax "
                             "(default: the study's backends key, else torch)")
    parser.add_argument("--data-dir", type=Path, help="data root (default: $CURVEBENCH_DATA or "
                                                      "a user cache directory)")
    parser.add_argument("--force", action="store_true", help="re-run configurations already "
                                                             "stored")
    parser.add_argument("--retry-errors", action="store_true",
                        help="re-run stored runs whose status is error")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the study, print what would run, and exit")


def _sweep_command(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from curvebench.backends import UnknownBackendError, get_backend
    from curvebench.cli import UsageError
    from curvebench.environment import DeviceError
    from curvebench.harness import check_batch_size, problem_data
    from curvebench.problems import get_problem
    from curvebench.problems.datasets import DatasetError
    from curvebench.store import StoreError
    from curvebench.study import StudyError, load_study

    try:
        study = load_study(args.study)
        if args.threads is not None:
            study = dataclasses.replace(study, threads=args.threads)
        if args.backend is not None:
            study = dataclasses.replace(study, backends=(get_backend(args.backend).name,))
        args.executor = args.executor or study.executor
        configs = study.run_configs()
        study.check_buildable()
    except (StudyError, UnknownBackendError) as error:
        raise UsageError(str(error)) from None
    if not configs:
        raise UsageError(f"{study.source}: no runs: every optimizer is incompatible with every "
                         "problem (" + "; ".join(f"{o} on {p}: {r}" for p, o, r
                                                 in study.incompatible()) + ")")
    if args.scheduler is not None and args.executor != "dask":
        raise UsageError("--scheduler needs --executor dask")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError(f"data directory {str(args.data_dir)!r} does not exist or is not a "
                         "directory")
    store = RunStore(args.out)
    created = not os.path.lexists(args.out)
    try:
        for name in study.problems:  # every data set must load before anything runs
            data = problem_data(get_problem(name), data_dir=args.data_dir)
            for config in configs:
                if config.problem == name:
                    try:
                        check_batch_size(config, training_examples=len(data.x_train))
                    except ValueError as error:
                        raise UsageError(f"{study.source}: batch_sizes: {error}") from None
        store.check_writable()
        _say_skipped_files(store)
    except (DatasetError, DeviceError, StoreError) as error:
        raise UsageError(str(error)) from None
    if args.executor == "dask":
        try:
            import dask.distributed  # noqa: F401
        except ImportError:
            raise UsageError("--executor dask needs dask.distributed: "
                             "pip install 'dask[distributed]'") from None
    for problem, optimizer, reason in study.incompatible():
        print(f"curvebench sweep: skipping {optimizer} on {problem}: {reason}", file=sys.stderr)
    configs = for_executor(configs, executor=args.executor, workers=args.workers,
                           scheduler=args.scheduler)
    todo, _ = pending_configs(configs, store, force=args.force, retry_errors=args.retry_errors)
    print(f"study {study.name!r}: {len(configs)} run(s), {len(configs) - len(todo)} already "
          f"stored, {len(todo)} to run ({args.executor}, "
          f"{execution_label(configs[0]) if configs else ''})", file=sys.stderr)
    print(f"study {study.name!r}: {study.tuning_summary()}", file=sys.stderr)
    if args.dry_run:
        print(tabulate(_plan_rows(configs, set(todo)),
                       headers=["problem", "optimizer", "hyperparameters", "seeds", "batch",
                                "max steps", "max s", "to run"]))
        return 0
    try:
        result = run_sweep(configs, store=store, executor=args.executor, workers=args.workers,
                           scheduler=args.scheduler, data_dir=args.data_dir, force=args.force,
                           retry_errors=args.retry_errors)
    except (SweepError, StoreError) as error:
        if created:
            _remove_if_empty(args.out)
        raise UsageError(str(error)) from None
    headers, rows = study_summary(result.records)
    print(tabulate(rows, headers=headers))
    if result.records:
        print(mixed_execution_note(result.records)
              or f"every run: {execution_label(result.records[0].config)}")
    failures = f", {result.worker_failures} worker failure(s)" if result.worker_failures else ""
    if result.claimed_elsewhere:
        failures += f", {result.claimed_elsewhere} run by another sweep"
    print(f"\n{result.ran} run(s) stored in {args.out}, {result.skipped} already stored"
          f"{failures}; {result.seconds:.1f} s")
    return 0


def _remove_if_empty(directory: Path) -> None:
    """Remove a results directory this sweep created when the sweep could not start."""
    import contextlib

    with contextlib.suppress(OSError):
        directory.rmdir()  # fails, harmlessly, unless empty


def _say_skipped_files(store: RunStore) -> None:
    """Remove stale temporary files, and name every stored file that is not counted
    (unreadable or a duplicate), one line each."""
    removed = store.remove_stale_temporaries()
    if removed:
        print(f"curvebench sweep: removed {len(removed)} stale temporary file(s) left by "
              f"interrupted writes in {store.directory}", file=sys.stderr)
    for item in store.scan()[1]:
        print(f"curvebench sweep: {item.describe()} (left untouched; not counted)",
              file=sys.stderr)


def _plan_rows(configs: Sequence[RunConfig], todo: set[RunConfig]) -> list[list[Any]]:
    """``--dry-run``: one row per configuration (its seeds together) and how many still run."""
    rows: dict[tuple[Any, ...], list[Any]] = {}
    for config in configs:
        key = (config.problem, method_label(config, with_backend=False),
               _hyperparameters(config), config.batch_size, config.max_steps,
               config.max_seconds)
        row = rows.setdefault(key, [*key[:3], [], *key[3:], 0])
        row[3].append(str(config.seed))
        row[-1] += config in todo
    return [[*row[:3], ",".join(row[3]), *row[4:6], format_number(row[6] or math.nan, ".3g"),
             row[7]] for row in rows.values()]


def _register() -> None:
    from curvebench.cli import register_command

    register_command("sweep", help="run a study file (hyperparameter sweep) and store its runs",
                     add_arguments=_add_arguments, handler=_sweep_command)


_register()
