"""The arithmetic a piece of torch code does: floating-point operations of its matrix products
and decompositions, counted with the formulas of :mod:`torch.utils.flop_counter`.

A step ÷ SGD step goal below the ratio of the arithmetic two steps do cannot be met where the
time of a step follows its arithmetic, as it does on one CPU thread at the sizes of the
benchmarks (on a GPU small workloads are bound by kernel launches instead; see
:mod:`curvebench.operator_counts`). torch counts matrix products, convolutions and attention
(``2`` flops per multiply-add) and nothing element-wise; :data:`DECOMPOSITION_FLOPS` adds the
decompositions second-order methods run, with the standard counts of Golub & Van Loan
(*Matrix Computations*, 4th ed.) for an ``n × n`` matrix and ``m`` right-hand sides:

=========================================  ====================================================
operator                                   flops
=========================================  ====================================================
Cholesky (``linalg_cholesky_ex``)          ``n³/3``
inverse from a Cholesky factor             ``2n³/3``
inverse (``linalg_inv_ex``, LU)            ``2n³``
triangular solve                           ``n² m``
solve with a Cholesky factor               ``2n² m``
LU solve (``linalg_solve_ex``)             ``2n³/3 + 2n² m``
symmetric eigendecomposition with vectors  ``8n³/3``: reduction to tridiagonal form and its
                                           back-transformation (not the tridiagonal solver)
symmetric eigenvalues only                 ``4n³/3``
QR, ``m × n``, ``m ≥ n``                   ``2mn² − 2n³/3``
SVD, ``m × n``, ``m ≥ n``                  ``4mn² − 4n³/3``: the bidiagonalisation only
=========================================  ====================================================

So a decomposition's count is a lower bound on what LAPACK does, and a ratio of counts is
what the arithmetic alone demands. Operators of linear algebra that no formula covers are
listed in :attr:`Arithmetic.uncounted`, never silently taken as free.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, shape_wrapper

__all__ = ["Arithmetic", "DECOMPOSITION_FLOPS", "count_flops"]

aten = torch.ops.aten


def _batch(shape) -> int:
    return math.prod(shape[:-2])


def _cholesky(a, *args, out_shape=None, **kwargs) -> int:
    return _batch(a) * a[-1] ** 3 // 3


def _cholesky_inverse(a, *args, out_shape=None, **kwargs) -> int:
    return _batch(a) * 2 * a[-1] ** 3 // 3


def _inverse(a, *args, out_shape=None, **kwargs) -> int:
    return _batch(a) * 2 * a[-1] ** 3


def _triangular_solve(a, b, *args, left: bool = True, out_shape=None, **kwargs) -> int:
    # left: A X = B, B's columns the right-hand sides; otherwise X A = B, B's rows
    return max(_batch(a), _batch(b)) * a[-1] ** 2 * (b[-1] if left else b[-2])


def _cholesky_solve(b, a, *args, out_shape=None, **kwargs) -> int:  # (rhs, factor)
    return max(_batch(a), _batch(b)) * 2 * a[-1] ** 2 * b[-1]


def _lu_solve(a, b, *args, out_shape=None, **kwargs) -> int:
    n, m = a[-1], (b[-1] if len(b) == len(a) else 1)
    return max(_batch(a), _batch(b)) * (2 * n ** 3 // 3 + 2 * n ** 2 * m)


def _eigh(a, *args, out_shape=None, **kwargs) -> int:
    """``_linalg_eigh``, which ``eigvalsh`` also dispatches, then returning no vectors."""
    vectors = out_shape is None or math.prod(out_shape[1]) > 0
    return _batch(a) * (8 if vectors else 4) * a[-1] ** 3 // 3


def _eigvalsh(a, *args, out_shape=None, **kwargs) -> int:
    return _batch(a) * 4 * a[-1] ** 3 // 3


def _svd(a, *args, out_shape=None, **kwargs) -> int:
    m, n = max(a[-2], a[-1]), min(a[-2], a[-1])
    return _batch(a) * (4 * m * n ** 2 - 4 * n ** 3 // 3)


def _qr(a, *args, out_shape=None, **kwargs) -> int:
    m, n = a[-2], a[-1]
    k = min(m, n)
    return _batch(a) * (2 * max(m, n) * k ** 2 - 2 * k ** 3 // 3)


#: Flop formulas for decompositions (torch counts none), by ATen operator.
DECOMPOSITION_FLOPS: dict[object, Callable[..., int]] = {
    aten.linalg_cholesky_ex: _cholesky,
    aten.cholesky: _cholesky,
    aten.cholesky_inverse: _cholesky_inverse,
    aten.linalg_inv_ex: _inverse,
    aten.linalg_solve_triangular: _triangular_solve,
    aten.triangular_solve: lambda b, a, *args, **kw: _triangular_solve(a, b),
    aten.cholesky_solve: _cholesky_solve,
    aten._linalg_solve_ex: _lu_solve,
    aten._linalg_eigh: _eigh,
    aten.linalg_eigvalsh: _eigvalsh,
    aten.linalg_qr: _qr,
    aten._linalg_svd: _svd,
}

#: Words of ATen operator names (split at ``_``) that make an operator linear algebra worth
#: counting, so one without a formula is reported rather than taken as free.
_LINEAR_ALGEBRA = frozenset({"cholesky", "eig", "eigh", "eigvals", "eigvalsh", "svd", "svdvals",
                             "solve", "inv", "inverse", "qr", "lu", "lstsq", "pinv", "det",
                             "slogdet", "matrix"})


@dataclass
class Arithmetic:
    """Flops counted over ``calls`` calls, by operator, and the linear-algebra operators
    dispatched for which no formula exists (name → calls)."""

    flops: int
    calls: int
    by_operator: dict[str, int] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)

    @property
    def per_call(self) -> float:
        return self.flops / self.calls


class _FlopCounter(TorchDispatchMode):
    """torch's flop formulas (``flop_registry``) and :data:`DECOMPOSITION_FLOPS` applied to
    every operator dispatched. Unlike ``FlopCounterMode``, no module hooks: those attach
    backward hooks to every module's output, which ``torch.autograd.grad`` with respect to an
    intermediate tensor (KFRA, the Gauss–Newton linearisation) does not support."""

    def __init__(self) -> None:
        super().__init__()
        self.formulas = {**flop_registry,
                         **{op: shape_wrapper(f) for op, f in DECOMPOSITION_FLOPS.items()}}
        self.by_operator: Counter[str] = Counter()
        self.uncounted: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        formula = self.formulas.get(packet)
        if formula is None and packet.__name__.endswith("_"):  # in place: as out of place
            formula = self.formulas.get(getattr(aten, packet.__name__[:-1], None))
        if formula is not None:
            self.by_operator[str(packet)] += formula(*args, **kwargs, out_val=out)
        elif _LINEAR_ALGEBRA.intersection(str(packet).split(".")[-1].split("_")):
            self.uncounted[str(packet)] += 1
        return out


def count_flops(fn: Callable[[], object], *, calls: int = 1) -> Arithmetic:
    """Run ``fn`` ``calls`` times and count the flops of its matrix products and
    decompositions (see the module's docstring for what counts)."""
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    with _FlopCounter() as counter:
        for _ in range(calls):
            fn()
    return Arithmetic(sum(counter.by_operator.values()), calls, dict(counter.by_operator),
                      dict(counter.uncounted))
