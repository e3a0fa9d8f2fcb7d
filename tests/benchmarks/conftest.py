"""Marks every test in this folder ``kernel_benchmark`` (deselected unless ``--run-benchmarks``).

Files here hold pytest-benchmark micro-benchmarks (``benchmark`` fixture) of the curvature
kernels: GGN-vector product, CG iteration, Kronecker factor update. Save and compare runs::

    python -m pytest tests/benchmarks --run-benchmarks --benchmark-enable \\
        --benchmark-json=kernels.json
    python -m pytest tests/benchmarks --run-benchmarks --benchmark-enable \\
        --benchmark-autosave --benchmark-compare
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the ``kernel_benchmark`` marker to the items collected from this folder."""
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.kernel_benchmark)
