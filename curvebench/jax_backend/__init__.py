"""JAX building blocks: models compiled from :mod:`curvebench.architecture`, losses, optimizers.

Importing this package imports jax; install it with ``pip install -e ".[jax]"``. The harness
runs them through :mod:`curvebench.backends.jax` (``curvebench run --backend jax``); the pieces
are tested for parity with the torch backend in ``tests/test_jax_parity.py``.
"""
