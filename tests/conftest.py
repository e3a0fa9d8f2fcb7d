"""Session-wide test options: pytest-benchmark kernel benchmarks run only when asked for.

Everything under ``tests/benchmarks`` carries the ``kernel_benchmark`` marker (set by that
folder's conftest). A plain ``python -m pytest`` collects those files, so an import error in
them still fails the run, but deselects their tests; ``--run-benchmarks`` keeps them::

    python -m pytest tests/benchmarks --run-benchmarks --benchmark-enable

The JAX tests (``tests/test_jax_*.py``) run last: once XLA has run a computation its thread
pools exist, and a process that forks after that (multiprocessing, Dask, a forked worker in a
later test) may deadlock in the child. Importing jax at collection starts no threads.
"""

from __future__ import annotations

import os

import pytest

# XLA sizes its CPU thread pool once, when JAX starts in this process (curvebench.backends.jax):
# one thread, the count of the runs these tests make (threads=1, the default); a JAX run with
# another count is refused here, and runs in a process of its own where a test needs one.
os.environ.setdefault("NPROC", "1")

RUN_BENCHMARKS = "--run-benchmarks"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(RUN_BENCHMARKS, action="store_true", default=False,
                     help="run the kernel_benchmark micro-benchmarks in tests/benchmarks "
                          "(add --benchmark-enable to time them; pyproject disables timing)")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the JAX tests last; deselect ``kernel_benchmark`` items unless
    ``--run-benchmarks`` was given."""
    items.sort(key=_runs_jax)  # stable: the order within each group is kept
    if config.getoption(RUN_BENCHMARKS):
        return
    kept = [item for item in items if item.get_closest_marker("kernel_benchmark") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(
            items=[item for item in items if item.get_closest_marker("kernel_benchmark")])
        items[:] = kept


def _runs_jax(item: pytest.Item) -> bool:
    return item.path.name.startswith("test_jax_")
