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
import torch

from curvebench.losses import CrossEntropyLoss
from curvebench.problems import models
from curvebench.problems.torch_models import build_torch_model

_HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the ``kernel_benchmark`` marker to the items collected from this folder."""
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.kernel_benchmark)


#: The workloads of the kernel benchmarks: name -> (architecture, input shape per example).
BATCH = 512
MODELS = {
    "digits-mlp": (models.mlp([64, 64, 64, 10], activation="tanh"), (64,)),
    "mnist1d-cnn": (models.mnist1d_cnn(), (40,)),
    "mlp-784-256-256-10": (models.mlp([784, 256, 256, 10]), (784,)),
}


@pytest.fixture(params=sorted(MODELS), scope="module")
def setup(request):
    """``(name, model, loss, inputs, targets)`` of one workload at batch :data:`BATCH`."""
    architecture, shape = MODELS[request.param]
    torch.manual_seed(0)
    model = build_torch_model(architecture, seed=None)
    inputs = torch.randn(BATCH, *shape)
    targets = torch.randint(0, 10, (BATCH,))
    return request.param, model, CrossEntropyLoss(), inputs, targets
