"""Both backends compile a problem's one declaration and start from the same seeded weights.

No weights are converted from torch here: the JAX parameters come from the architecture and
the seed alone (:func:`curvebench.jax_backend.models.initial_params`).
"""

from __future__ import annotations

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from curvebench.architecture import Conv, Dense, Flatten, Reshape
from curvebench.jax_backend.models import compile_architecture, initial_params, params_to_numpy
from curvebench.problems import PROBLEMS, get_problem
from tests.jax_cases import jax_float64, relative_difference

OFFLINE = sorted(p.name for p in PROBLEMS if p.offline)


def _inputs(name: str) -> torch.Tensor:
    """32 training inputs of an offline problem; random inputs of the right shape otherwise."""
    spec = get_problem(name)
    if spec.offline:
        return torch.as_tensor(spec.dataset().x_train[:32], dtype=torch.float64)
    first = spec.architecture.layers[0]
    if isinstance(first, Reshape):
        shape: tuple[int, ...] = (int(np.prod(first.shape)),)
    elif isinstance(first, Flatten):
        shape = (1, 28, 28)
    elif isinstance(first, Dense):
        shape = (first.in_features,)
    else:
        assert isinstance(first, Conv)
        shape = (first.in_channels, *(32 if first.in_channels == 3 else 28,) * 2)
    return torch.rand(4, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(PROBLEMS.names()))
def test_backends_agree_from_the_same_seed(name: str) -> None:
    """float64 outputs agree to 1e-10 (offline problems on their own data); float32 weights
    are bit-identical."""
    spec = get_problem(name)
    model = spec.build_model(seed=5, dtype=torch.float64)
    x = _inputs(name)
    expected = model(x).detach().numpy()
    with jax_float64():
        params = initial_params(spec.architecture, seed=5)
        got = np.asarray(compile_architecture(spec.architecture)(params, jnp.asarray(x.numpy())))
    assert got.dtype == np.float64 and got.shape == expected.shape
    assert relative_difference(got, expected) < 1e-10
    single = params_to_numpy(spec.architecture,
                             initial_params(spec.architecture, seed=5, dtype=jnp.float32))
    for ours, theirs in zip(single, spec.build_model(seed=5).parameters(), strict=True):
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, theirs.detach().numpy())


def test_initial_params_depend_on_the_seed_only() -> None:
    architecture = get_problem("digits-cnn").architecture
    a, b, c = (params_to_numpy(architecture, initial_params(architecture, seed=s))
               for s in (1, 1, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_jax_models_import_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "from curvebench.architecture import Architecture, Dense\n"
            "from curvebench.jax_backend.models import initial_params\n"
            "initial_params(Architecture((Dense(3, 2),)), seed=0)\n"
            "assert 'torch' not in {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
