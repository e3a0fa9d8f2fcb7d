"""K-FAC, KFLR, KFRA and empirical-Fisher K-FAC: block-diagonal Gauss-Newton with Kronecker blocks.

Every layer with a block (:func:`curvebench.kronecker.has_kronecker_block`) gets
``G_l ≈ A_l ⊗ S_l`` (factors from :mod:`curvebench.kronecker`; the presets differ only in how
``S`` is estimated). The step for the layer's parameters ``V = [∇W, ∇b] + η[W, b]`` is

    U = (S + γ_S I)⁻¹ V (A + γ_A I)⁻¹,   γ_A = π √(λ + η),   γ_S = √(λ + η) / π,
    π = √( (tr A / dim A) / (tr S / dim S) )                    (factored Tikhonov, π-correction)

With ``bias_factor="separate"`` (ASDL's choice) ``A`` is built from the inputs ``a`` without
the homogeneous coordinate (``dim A = d_in``, also in ``π``) and the bias gets a block of its
own, ``T S``, damped as ``S`` is:

    U_W = (S + γ_S I)⁻¹ V_W (A + γ_A I)⁻¹,   u_b = (S + γ_S I)⁻¹ (∇b + η b) / T,

with ``T`` the positions per example that share the weight (1 for a Linear layer on ``(N, d)``
inputs, the output pixels of a convolution; ASDL's factors of a convolution are ``A / T``
and ``T S``). That is the block-diagonal curvature ``diag(A ⊗ S, T S)`` of ``(vec W, b)``:
the default, ``"homogeneous"`` (Martens & Grosse), has the same bias block ``T S`` (``T`` is
``A``'s homogeneous entry) but couples it to the weight through ``A``'s last row, which
costs a ``[∇W, ∇b]`` copy and a wider ``A`` per step.

Then ``U ← ν U`` (clipping), ``m ← μ m + U``, ``θ ← θ − α m``, with ``λ`` the damping, ``η`` the
weight decay (an L2 term of the objective, which is why it also enters the damping), ``α`` the
learning rate and ``μ`` the momentum.

* Factors are exponential moving averages ``F ← ε F + (1 − ε) F̂`` (first estimate taken as is),
  updated every ``cov_update_period`` steps (``T_cov``); decompositions every
  ``inv_update_period`` steps (``T_inv``) and at the first step.
* Decompositions are done in float32 (float64 for float64 models). ``inverse_method="cholesky"``
  (the presets' choice) stores the damped inverses, so the damping and ``π`` are those of the
  last decomposition (as in ASDL and kfac-jax); ``"eigh"`` stores eigenvectors and eigenvalues
  clamped at zero, ``π`` of the last decomposition, and the damped inverses
  ``Q diag(1/(λ + γ)) Qᵀ``, rebuilt whenever the damping changes, so an adapted damping takes
  effect at the next step (one n³ product per factor per change; eigh itself is 4–6× a
  Cholesky inverse). Either way a step costs two matrix products per layer. A Cholesky
  factor wider than 5/3 of the layer's other side times the decomposition period (the 3137-wide
  input of a 10-way output layer; most factors when decomposed every step) keeps its
  triangular factor instead of its inverse and is applied by two triangular solves
  (:func:`prefer_triangular_solves`): forming that inverse costs twice the factorisation,
  more than the solves cost beyond a product with it. On a CPU the factorisation is LAPACK's
  ``?potrf`` on a column-major copy, called directly (:func:`_cholesky_in_place`). A failed
  decomposition (not positive definite, non-finite, or not converged) is retried with a shift
  ten times larger each time (:func:`damped_decomposition`); only if every retry fails is the
  previous decomposition kept, or, where the new triangular factor was being written over the
  previous one's (:func:`reusable_factor`), dropped: the layer then takes the fallback ``U``
  below until a decomposition succeeds, which is attempted again at the next step.
* Clipping: ``"kl"`` scales the step so that ``α² Σ ⟨U, V⟩ ≤ clip_threshold`` (Ba, Grosse &
  Martens 2017); ``"norm"`` so that ``α ‖U‖ ≤ clip_threshold``; ``"none"``. The KL clipping
  is what keeps the presets' lr 1 finite on hard batches: on random labels (MLP
  784-256-256-10, batch 512) the first step has ``α² Σ ⟨U, V⟩ ≈ 17`` (``ν ≈ 0.024``), and the
  unclipped step, as ASDL and nngeometry take it, overflows the logits within five steps; once
  a batch is fitted the sum falls far below the threshold and the clipping no longer binds.
* Levenberg–Marquardt damping adaptation (``adapt_damping``), every
  ``damping_adaptation_period`` steps: the reduction ratio
  ``ρ = (h(θ+δ) − h(θ)) / (∇hᵀδ + ½ δᵀ(G + η I)δ)`` on the current batch, with ``h`` the loss
  plus ``½η‖θ‖²`` and ``δᵀGδ = (Jδ)ᵀ H (Jδ)`` from the step's
  :class:`~curvebench.curvature.Linearization` (built instead of the plain forward and backward
  pass on adaptation steps, so ``Jδ`` costs no extra forward pass) and the loss's output
  Hessian; ``h(θ+δ)`` is one function evaluation with the same dropout masks, which skips a
  wide input layer when the linearisation tracks it (its output at ``θ + δ`` is
  ``f₁(θ) + J₁δ``, with ``J₁δ`` kept from the ``Jδ`` product);
  ``λ ← ω λ`` if ``ρ > 3/4``, ``λ ← λ / ω`` if ``ρ < 1/4`` (Martens & Grosse 2015, §6.5),
  with ``ω = damping_decay``.
* Parameters of layers without a block (normalisation, embeddings, grouped convolutions, or a
  layer whose weight and bias are not both optimised) get the fallback
  ``U = ∇θ + ηθ`` (plain SGD with the same learning rate, momentum and clipping); their names
  are listed in :attr:`KFAC.run_notes`.

Per step, :attr:`step_info` holds ``damping``, ``step_size`` (``α ν``), ``lr``, ``update_norm``
(``‖θ_new − θ‖``), ``factors_updated``, ``inverses_updated``, on decomposition steps
``inverse_retries`` and ``inverse_failures``, when adapted, ``reduction_ratio`` (``−inf`` when
the model predicts no decrease or the new loss is not finite; none for a zero step, e.g. on a
fitted batch, which leaves the damping as it was), and ``skipped`` on a skipped step: a step
whose direction is not finite (which no clipping can bound) is not applied, leaves parameters
and momentum as they were, counts in ``skipped_steps`` and, with adaptation, raises the damping
as a failed step does. :attr:`counters` holds ``forward_passes``, ``backward_passes`` (one per
backpropagated vector: the loss's Hessian-factor columns for KFLR, ``D − 1`` for softmax
cross-entropy, ``mc_samples`` for K-FAC), ``factor_updates``,
``inverse_updates``, ``skipped_steps`` and, with adaptation, ``jacobian_vector_products`` (the
quadratic model's ``J δ``) and ``function_evaluations``.

References: Martens & Grosse 2015, "Optimizing neural networks with Kronecker-factored
approximate curvature"; Grosse & Martens 2016 (KFC); Botev, Ritter & Barber 2017 (KFLR, KFRA);
Ba, Grosse & Martens 2017, "Distributed second-order optimization using Kronecker-factored
approximations" (KL clipping); Kunstner et al. 2019 (empirical Fisher).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._python_dispatch
from torch import nn

from curvebench.curvature import Linearization, check_supported, flatten, unflatten
from curvebench.kronecker import (
    CURVATURE_TYPES,
    KroneckerFactorCollector,
    UnsupportedModelError,
    kfra_support,
    kronecker_layers,
)
from curvebench.losses import CurvatureLoss
from curvebench.optimizers.base import CurvatureOptimizer
from curvebench.optimizers.spec import (
    Choice,
    LogUniform,
    OptimizerSpec,
    Uniform,
    curvature_optimizer_factory,
    register_optimizer,
)

__all__ = ["KFAC", "Decomposition", "cholesky_route", "damped_decomposition", "pi_correction",
           "prefer_triangular_solves", "reusable_factor", "BIAS_FACTORS", "CLIPPING",
           "INVERSE_METHODS", "MANY_RIGHT_HAND_SIDES", "MAX_DECOMPOSITION_RETRIES"]

#: How a layer's bias is preconditioned (see the module docstring).
BIAS_FACTORS = ("homogeneous", "separate")
CLIPPING = ("none", "kl", "norm")
INVERSE_METHODS = ("eigh", "cholesky")
#: Retries of a failed decomposition, each with a ten times larger shift.
MAX_DECOMPOSITION_RETRIES = 8
#: From this many right-hand sides on, triangular solves run from the right
#: (:meth:`Decomposition.solve`).
MANY_RIGHT_HAND_SIDES = 64
_MAX_DAMPING = 1e6


@dataclass(frozen=True)
class Decomposition:
    """A factor ready for solves: ``eigh`` gives ``(values, vectors)``; ``cholesky`` gives the
    ``inverse`` or, where two triangular solves per step are cheaper than forming it (see
    :func:`prefer_triangular_solves`), the lower Cholesky ``factor`` ``L`` (``LLᵀ`` = the
    damped matrix) in its lower triangle (on a CPU the other triangle is not zeroed: only
    triangular solves read it).

    ``shift`` is what was added to the diagonal before decomposing (the damping for Cholesky;
    zero for ``eigh`` unless a retry was needed); ``retries`` counts failed attempts.
    """

    method: str
    shift: float
    retries: int
    values: torch.Tensor | None = None
    vectors: torch.Tensor | None = None
    inverse: torch.Tensor | None = None
    factor: torch.Tensor | None = None

    def solve(self, matrix: torch.Tensor, *, left: bool = True) -> torch.Tensor:
        """``(M + shift·I)⁻¹ matrix``, or with ``left=False`` ``matrix (M + shift·I)⁻¹``, for a
        Cholesky decomposition (inverse or factor); ``matrix`` is 2-D (a vector as a column).

        With the factor ``L``, two triangular solves. ``M`` is symmetric, so either product is
        the transpose of the other side's product with ``matrixᵀ``: the solves run from the
        right (``X Lᵀ = B``, then ``Y L = X``) where there are at least
        :data:`MANY_RIGHT_HAND_SIDES` right-hand sides and from the left otherwise. Measured
        (torch 2.13 with MKL, one thread, float32, an AMD EPYC without AVX-512, ms for both
        solves, from the left against from the right): n 785 with 256 right-hand sides 8.0
        against 5.0, n 257 with 256 2.1 against 0.8, n 256 with 785 6.1 against 2.8, n 289
        with 64 0.66 against 0.28, n 3137 with 128 59 against 41; with 4 or 10 the right
        runs 1.5–3.5 times as long (n 785, 10: 0.61 against 2.16; n 3137, 10: 10.9 against
        29.8). On an Intel Xeon with AVX-512: n 785 with 256, 2.72 against 2.44 ms; there the
        right side's column-major result costs the rest of a K-FAC step about what the side
        saves (0.2 ms in the KL clipping's inner product, 0.17 in the update with a strided
        direction), and a step that made it contiguous with a copy measured the same (the
        MLP of ``benchmarks/kfac_peers.py``, paired ratios 0.996–1.013); K-FAC applies this
        side first instead, so its other side's product writes the result row-major at no
        cost (:meth:`KFAC._precondition`).
        """
        if self.factor is None:
            return self.inverse @ matrix if left else matrix @ self.inverse
        count = matrix.shape[-1] if left else matrix.shape[0]
        if (count >= MANY_RIGHT_HAND_SIDES) == left:  # the other side, on the transpose
            return self.solve(matrix.mT, left=not left).mT
        lower, upper = self.factor, self.factor.T
        if left:
            half = torch.linalg.solve_triangular(lower, matrix, upper=False)
            return torch.linalg.solve_triangular(upper, half, upper=True)
        half = torch.linalg.solve_triangular(upper, matrix, upper=True, left=False)
        return torch.linalg.solve_triangular(lower, half, upper=False, left=False)


def prefer_triangular_solves(size: int, other: int, period: int, *,
                             device_type: str = "cpu") -> bool:
    """Whether to keep the Cholesky factor of an ``size × size`` Kronecker factor and solve
    with it, instead of forming its inverse, when the layer's other dimension is ``other``
    and the decomposition is refreshed every ``period`` steps, on a ``device_type`` device.

    Never on a GPU: there a triangular solve with a few right-hand sides runs as many small
    sequential kernels, and costs far more than a product with a stored inverse (measured on
    an H200, the CNN's fc layer of ``benchmarks/kfac_peers.py``: 1.6 ms per step for the two
    solves, 0.7 ms per decomposition for the inverse).

    Two triangular solves take ``2·size²·other`` flops per step, as the product with a stored
    inverse does, but run about 1.4 times as long; forming the inverse (``(2/3)·size³``
    flops, at about half a product's speed) costs about ``(4/3)·size³`` product flops per
    decomposition: solves win when ``0.4·2·size²·other·period < (4/3)·size³``, i.e.
    ``3·other·period < 5·size``. Measured (one thread, CPU, float32, factor plus solves
    against factor, inverse and product, every step): size 257, other 256: 0.44-0.54 ms
    against 0.68; size 256, other 785: 1.52 against 1.40; size 785, other 256: 5.1-5.4
    against 8.9. A 3137-wide input factor of a 10-way output layer (the CNN's fc) takes 166 ms
    to factor plus 231 ms to invert, and 5.5 ms for the two solves against 8.5 ms for the
    product with the inverse. In the MLP of ``benchmarks/kfac_peers.py`` with every-step
    decompositions this rule (instead of ``3·other·period < 2·size``) took a step from 4.54
    to 4.48 SGD steps.
    """
    return device_type != "cuda" and 3 * other * period < 5 * size


def _decomposition_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def damped_decomposition(matrix: torch.Tensor, *, shift: float, method: str,
                         max_retries: int = MAX_DECOMPOSITION_RETRIES,
                         keep_factor: bool = False,
                         out: torch.Tensor | None = None) -> Decomposition | None:
    """Decompose ``matrix + shift·I`` in float32 (float64 stays float64), retrying on failure.

    ``eigh``: eigenvalues clamped at zero. ``cholesky``: the inverse from the Cholesky factor,
    or with ``keep_factor`` the factor itself (for triangular solves), decomposed in ``out``
    when given (:func:`reusable_factor`: the factor of the decomposition this one replaces,
    written over even when every attempt fails), else in a new tensor.
    A failure (error, non-positive-definite, non-finite result) is retried with the shift
    raised to ``max(10·shift, 10⁻⁶·mean|diag|, 10⁻¹⁰)`` and so on, at most ``max_retries``
    times.

    Returns:
        The decomposition, or ``None`` when every attempt failed (e.g. a non-finite matrix).
    """
    if method not in INVERSE_METHODS:
        raise ValueError(f"inverse_method must be one of {INVERSE_METHODS}, got {method!r}")
    work = matrix.to(_decomposition_dtype(matrix.dtype))
    if out is not None and not (keep_factor and method == "cholesky"
                                and reusable_factor(out, like=work)):
        raise ValueError("out must be a column-major square factor of the matrix's size, "
                         "dtype and device, and only with method='cholesky' and keep_factor")
    floor = None
    for retry in range(max_retries + 1):
        # column-major, as LAPACK takes it: ``work``'s upper triangle is the lower one of
        # this transpose, which is decomposed in place (``_cholesky_in_place``)
        if method == "eigh":
            damped = work.clone()
        else:
            damped = work.mT.clone() if out is None else out.copy_(work.mT)
        damped.diagonal().add_(shift)
        try:  # one host synchronisation per attempt: the success test is one device flag
            if method == "eigh":
                values, vectors = torch.linalg.eigh(damped)
                if bool(torch.isfinite(values).all() & torch.isfinite(vectors).all()):
                    return Decomposition(method=method, shift=shift, retries=retry,
                                         values=values.clamp(min=0.0), vectors=vectors)
            else:
                lower, info = _cholesky_in_place(damped)
                # a finite matrix gives |L_ij| ≤ √M_ii, a non-finite one a non-finite L_nn;
                # SPD: |M_ij| ≤ √(M_ii M_jj), so a finite diagonal means a finite inverse
                result = lower if keep_factor else torch.cholesky_inverse(lower)
                if bool((info == 0) & torch.isfinite(result.diagonal()).all()):
                    return Decomposition(method=method, shift=shift, retries=retry,
                                         **{"factor" if keep_factor else "inverse": result})
        except RuntimeError:  # torch.linalg.LinAlgError is a RuntimeError
            pass
        if floor is None:  # only a failed attempt needs the matrix's scale
            scale = float(work.diagonal().abs().mean()) if work.numel() else 1.0
            floor = max(1e-6 * scale, 1e-10) if math.isfinite(scale) else 1e-10
        shift = max(10.0 * shift, floor)
    return None


def reusable_factor(tensor: torch.Tensor | None, *, like: torch.Tensor) -> bool:
    """Whether ``tensor`` can take the Cholesky factor of the ``n × n`` matrix ``like`` in
    place: on a CPU, column-major, of ``like``'s size, device and decomposition dtype.

    Decomposing a factor refreshed every few steps into the previous factor's memory spares a
    new ``n × n`` tensor each time. On a CPU a new tensor that large is fresh memory from the
    operating system, and filling it costs a page fault per 4 KiB: measured (one thread, the
    CNN of ``benchmarks/kfac_peers.py`` decomposing its 3137-wide input factor every step),
    the copy into a new tensor took 17 ms of a 280 ms step.
    """
    return (tensor is not None and tensor.device.type == "cpu"
            and tensor.shape == like.shape and tensor.device == like.device
            and tensor.dtype == _decomposition_dtype(like.dtype)
            and tensor.stride() == (1, like.shape[-1]))


def _cholesky_in_place(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, info)`` with ``LLᵀ = matrix`` from its lower triangle, on a CPU written over
    ``matrix`` (column-major, ``(n, n)``); there only the lower triangle is ``L``, the other
    holds what ``matrix`` had (triangular solves and ``cholesky_inverse`` read only ``L``'s).

    ``torch.linalg.cholesky_ex`` into a new tensor first copies its input there with a
    transposing, cache-unfriendly ``tril``/``triu`` on a CPU; with the input as the output
    that is an in-place zeroing of the other triangle, still a strided pass. The lower factor
    of a column-major matrix is the faster one there. On a CPU whose torch exports LAPACK's
    ``?potrf`` (:func:`_lapack_potrf`) that routine runs on ``matrix`` directly, as torch runs
    it, without the zeroing pass: the same ``L``, bit for bit. Measured (one thread, float32,
    medians of 7 rounds, ``benchmarks/kfac_peers.py``'s factor sizes): n 785, 3.3 ms into a
    new tensor, 2.8 ms for the upper factor in place, 2.05 ms for the lower one, 1.70 ms by
    ``spotrf`` directly; n 256, 0.35 → 0.21 ms (0.10 directly at n 257); n 512, 1.63 → 0.99
    ms; n 3137, 122 → 105–120 ms, 77 ms directly. Other devices get a new tensor.
    """
    if matrix.device.type != "cpu":
        return torch.linalg.cholesky_ex(matrix)
    info = _lapack_cholesky(matrix)
    if info is not None:
        return matrix, info
    info = torch.empty((), dtype=torch.int32)
    return torch.linalg.cholesky_ex(matrix, out=(matrix, info))


def _lapack_cholesky(matrix: torch.Tensor) -> torch.Tensor | None:
    """LAPACK's lower Cholesky factorisation of a column-major CPU ``matrix`` in place; its
    ``info`` (0: done, > 0: not positive definite) as a 0-d tensor, or ``None`` where it
    cannot be called: no exported ``?potrf``, another dtype or layout, a tensor autograd
    records, or under a dispatch mode (operator and flop counting, fake tensors), which must
    see the operator."""
    n = matrix.shape[-1]
    if (matrix.dim() != 2 or matrix.shape[0] != n or matrix.stride() != (1, max(n, 1))
            or n == 0 or matrix.requires_grad
            or torch.utils._python_dispatch._get_current_dispatch_mode() is not None):
        return None
    potrf = _lapack_potrf(matrix.dtype)
    if potrf is None:
        return None
    return torch.tensor(potrf(matrix), dtype=torch.int32)


def cholesky_route() -> str:
    """How this process factorises K-FAC's float32 factors on a CPU (for benchmark headers)."""
    return ("LAPACK spotrf called directly" if _lapack_potrf(torch.float32) is not None
            else "torch.linalg.cholesky_ex")


@functools.cache
def _lapack_potrf(dtype: torch.dtype) -> Any:
    """``matrix ↦ info``: LAPACK's ``spotrf``/``dpotrf`` (lower, in place, column-major) from
    the library torch runs its own on the CPU, or ``None`` where torch does not export it
    (then ``torch.linalg.cholesky_ex``). Resolved once per dtype and checked on a 2 × 2
    matrix against torch's own factor before first use. The integers are passed as 64-bit
    zero-padded values, which read the same as 32-bit ones on a little-endian machine, so
    either integer width of the library is called correctly.
    """
    name = {torch.float32: "spotrf_", torch.float64: "dpotrf_"}.get(dtype)
    if name is None or sys.byteorder != "little":
        return None
    try:
        routine = getattr(ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib",
                                                   "libtorch_cpu.so")), name)
    except (OSError, AttributeError):
        return None
    routine.restype = None

    def potrf(matrix: torch.Tensor) -> int:
        n, info = ctypes.c_int64(matrix.shape[0]), ctypes.c_int64(0)
        routine(ctypes.c_char_p(b"L"), ctypes.byref(n), ctypes.c_void_p(matrix.data_ptr()),
                ctypes.byref(n), ctypes.byref(info), ctypes.c_size_t(1))
        return info.value

    check = torch.tensor([[4.0, 2.0], [2.0, 3.0]], dtype=dtype).mT.clone()
    expected = torch.linalg.cholesky(check)
    return potrf if potrf(check) == 0 and torch.equal(check.tril(), expected) else None


def pi_correction(a: torch.Tensor, s: torch.Tensor) -> float:
    """``π = √((tr A / dim A) / (tr S / dim S))``, or 1 when either trace is not positive.

    Martens & Grosse 2015, §6.3: splits the damping between the factors so that it has the
    same relative size in both.
    """
    sums = torch.stack([a.diagonal().sum().to(s.dtype), s.diagonal().sum()]).tolist()  # one sync
    trace_a, trace_s = sums[0] / a.shape[0], sums[1] / s.shape[0]
    if not (trace_a > 0 and trace_s > 0 and math.isfinite(trace_a) and math.isfinite(trace_s)):
        return 1.0
    return math.sqrt(trace_a / trace_s)


class KFAC(CurvatureOptimizer):
    """Block-diagonal Gauss-Newton with Kronecker-factored blocks (see the module docstring).

    Args:
        model: the network.
        loss: its :class:`~curvebench.losses.CurvatureLoss`.
        curvature: ``"kfac"`` (Monte-Carlo), ``"kflr"`` (exact), ``"kfra"`` (recursive, MLPs)
            or ``"empirical"``.
        lr: learning rate ``α``.
        damping: Tikhonov damping ``λ`` (initial value when adapted).
        momentum: ``μ``.
        weight_decay: L2 coefficient ``η`` (added to the gradient and the damping).
        ema_decay: ``ε`` of the factors' moving average.
        cov_update_period: ``T_cov``, steps between factor updates.
        inv_update_period: ``T_inv``, steps between decompositions.
        mc_samples: Monte-Carlo samples per factor update (``kfac`` only).
        pi_correction: split the damping by ``π`` (else ``π = 1``).
        adapt_damping: Levenberg–Marquardt adaptation of ``λ``.
        damping_adaptation_period: steps between adaptations.
        damping_decay: ``ω ∈ (0, 1)``.
        clipping: ``"kl"``, ``"norm"`` or ``"none"``.
        clip_threshold: the KL bound or the update-norm bound.
        inverse_method: ``"eigh"`` or ``"cholesky"``.
        bias_factor: ``"homogeneous"`` (one block for ``[W, b]``, ``A`` of ``[a; 1]``) or
            ``"separate"`` (``A`` of ``a``; the bias a block ``T S`` of its own, as in ASDL).
        params: parameters (default: all of the model's trainable parameters).

    Raises:
        ValueError: out-of-range hyperparameters; :class:`UnsupportedModelError` for ``kfra``
            on a model that is not an MLP.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss: CurvatureLoss,
        curvature: str = "kfac",
        lr: float = 0.1,
        damping: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        ema_decay: float = 0.95,
        cov_update_period: int = 1,
        inv_update_period: int = 10,
        mc_samples: int = 1,
        pi_correction: bool = True,
        adapt_damping: bool = False,
        damping_adaptation_period: int = 5,
        damping_decay: float = 0.95 ** 5,
        clipping: str = "kl",
        clip_threshold: float = 1e-2,
        inverse_method: str = "eigh",
        bias_factor: str = "homogeneous",
        params: Iterable[torch.Tensor] | None = None,
    ) -> None:
        _check(curvature in CURVATURE_TYPES,
               f"curvature must be one of {CURVATURE_TYPES}, got {curvature!r}")
        _check(lr > 0, f"lr must be positive, got {lr}")
        _check(damping > 0, f"damping must be positive, got {damping}")
        _check(0 <= momentum < 1, f"momentum must be in [0, 1), got {momentum}")
        _check(weight_decay >= 0, f"weight_decay must be non-negative, got {weight_decay}")
        _check(0 <= ema_decay < 1, f"ema_decay must be in [0, 1), got {ema_decay}")
        _check(cov_update_period >= 1 and inv_update_period >= 1,
               "cov_update_period and inv_update_period must be >= 1")
        _check(mc_samples >= 1, f"mc_samples must be >= 1, got {mc_samples}")
        _check(damping_adaptation_period >= 1, "damping_adaptation_period must be >= 1")
        _check(0 < damping_decay < 1, f"damping_decay must be in (0, 1), got {damping_decay}")
        _check(clipping in CLIPPING, f"clipping must be one of {CLIPPING}, got {clipping!r}")
        _check(clip_threshold > 0, f"clip_threshold must be positive, got {clip_threshold}")
        _check(inverse_method in INVERSE_METHODS,
               f"inverse_method must be one of {INVERSE_METHODS}, got {inverse_method!r}")
        _check(bias_factor in BIAS_FACTORS,
               f"bias_factor must be one of {BIAS_FACTORS}, got {bias_factor!r}")
        if curvature == "kfra" and (reason := kfra_support(model)) is not None:
            raise UnsupportedModelError(reason)
        if adapt_damping:  # the quadratic model comes from the curvature core's linearisation
            check_supported(model)
        defaults = {"lr": lr, "damping": damping, "momentum": momentum,
                    "weight_decay": weight_decay}
        super().__init__(model, loss=loss, defaults=defaults, params=params)
        self.curvature = curvature
        self.ema_decay = ema_decay
        self.cov_update_period = cov_update_period
        self.inv_update_period = inv_update_period
        self.mc_samples = mc_samples
        self.use_pi_correction = pi_correction
        self.adapt_damping = adapt_damping
        self.damping_adaptation_period = damping_adaptation_period
        self.damping_decay = damping_decay
        self.clipping = clipping
        self.clip_threshold = clip_threshold
        self.inverse_method = inverse_method
        self.bias_factor = bias_factor
        if curvature == "kfac":  # Monte-Carlo labels come from the optimizer's own generator
            self.seed_generator()

        optimised = {id(p) for p in self.parameters_list()}
        self.layers: list[nn.Module] = []
        layer_names: list[str] = []
        for name, module in kronecker_layers(model):
            own = [p for p in (module.weight, module.bias) if p is not None]
            if all(id(p) in optimised and p.requires_grad for p in own):
                self.layers.append(module)
                layer_names.append(name)
        in_blocks = {id(p) for m in self.layers for p in (m.weight, m.bias) if p is not None}
        names = {id(p): n for n, p in model.named_parameters()}
        self.fallback_parameters = [p for p in self.parameters_list() if id(p) not in in_blocks]
        self.collector = KroneckerFactorCollector(model, layers=self.layers)
        self.run_notes: dict[str, Any] = {
            "curvature": curvature,
            "kronecker_layers": layer_names,
            "fallback_parameters": [names.get(id(p), "?") for p in self.fallback_parameters],
            "fallback_rule": "plain gradient step (SGD with the same lr, momentum, weight decay "
                             "and clipping) for parameters without a Kronecker block",
        }
        self._decompositions: dict[nn.Module, tuple[Decomposition, Decomposition]] = {}
        #: layer -> what its cached damped inverses (eigh) were built from
        self._inverse_keys: dict[nn.Module, tuple] = {}
        self._groups: dict[int, dict[str, Any]] = {}
        self._index_key: tuple[int, ...] = ()
        self._index: dict[nn.Module, tuple[int, int | None]] = {}

    # -- state ------------------------------------------------------------------------------

    def _global_state(self) -> dict[str, Any]:
        return self.state[self.parameters_list()[0]]

    def _group_of(self, parameter: torch.Tensor) -> dict[str, Any]:
        group = self._groups.get(id(parameter))
        if group is None or not any(group is g for g in self.param_groups):
            # (re)build the cache: first call, or param_groups replaced (load_state_dict)
            self._groups = {id(p): g for g in self.param_groups for p in g["params"]}
            group = self._groups[id(parameter)]
        return group

    def _groups_of(self, parameters: list[torch.Tensor]) -> list[dict[str, Any]]:
        """The parameter group of each of ``parameters`` (one lookup for a single group)."""
        if len(self.param_groups) == 1:
            return [self.param_groups[0]] * len(parameters)
        return [self._group_of(p) for p in parameters]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as ``torch.optim.Optimizer`` does; decompositions are restored from the state.

        Raises:
            ValueError: the state's input factors do not fit this optimizer's layers and
                ``bias_factor`` (e.g. a state saved with the other bias layout); the
                optimizer keeps its own state.
        """
        previous = self.state_dict()
        super().load_state_dict(state_dict)
        for layer in self.layers:
            a = self.state[layer.weight].get("A")
            width = layer.weight.reshape(layer.weight.shape[0], -1).shape[1]
            width += layer.bias is not None and self.bias_factor == "homogeneous"
            if a is not None and a.shape[0] != width:
                super().load_state_dict(previous)
                raise ValueError(
                    f"optimizer state has a {a.shape[0]}-wide input factor where this K-FAC "
                    f"(bias_factor={self.bias_factor!r}) needs {width}: saved with another "
                    "bias layout or for another model")
        self._decompositions = {}
        for layer in self.layers:
            state = self.state[layer.weight]
            if "decomposition_A" in state:
                self._decompositions[layer] = (_unpack(state, "A"), _unpack(state, "S"))

    @property
    def damping(self) -> float:
        """The current damping ``λ`` (of the first parameter group; adapted in place)."""
        return float(self.param_groups[0]["damping"])

    # -- the step ----------------------------------------------------------------------------

    def curvature_step(self, *, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        state = self._global_state()
        step = int(state.get("step", 0))
        update_factors = bool(self.layers) and step % self.cov_update_period == 0
        update_inverses = bool(self.layers) and (
            step % self.inv_update_period == 0 or len(self._decompositions) < len(self.layers))
        adapt = self.adapt_damping and (step + 1) % self.damping_adaptation_period == 0
        parameters = self.parameters_list()
        capture = (self.collector.capture(activations=self.curvature == "kfra")
                   if update_factors else contextlib.nullcontext())
        empirical = update_factors and self.curvature == "empirical"
        linearization = None
        try:
            if adapt:  # the quadratic model needs J δ: linearise (one forward, one backward)
                with capture:
                    linearization = Linearization(
                        self.model, loss=self.loss, inputs=inputs, targets=targets,
                        params=parameters, phase_timer=self.phase_timer)
                output, loss = linearization.graph_output, linearization.loss_value
                grads = unflatten(linearization.gradient, parameters)
                pre_activation_gradients = ()
                if empirical:
                    pre_activation_gradients = torch.autograd.grad(
                        output, self.collector.pre_activations(),
                        linearization.output_gradient, retain_graph=True)
            else:
                with self.phase_timer.phase("forward"), capture:
                    output = self.model(inputs)
                    loss = self.loss(output, targets)
                with self.phase_timer.phase("backward"):
                    wrt = list(parameters)
                    if empirical:
                        wrt += self.collector.pre_activations()
                    retain = update_factors and self.curvature in ("kflr", "kfac")
                    gradients = torch.autograd.grad(loss, wrt, retain_graph=retain,
                                                    allow_unused=True)
                grads = [torch.zeros_like(p) if g is None else g
                         for p, g in zip(parameters, gradients, strict=False)]
                pre_activation_gradients = gradients[len(parameters):]
            self.counters["forward_passes"] += 1
            self.counters["backward_passes"] += 1
            if update_factors:
                with self.phase_timer.phase("curvature"):
                    self._update_factors(output, pre_activation_gradients)
        finally:
            self.collector.clear()
        if update_inverses:
            with self.phase_timer.phase("solve"):
                self._update_decompositions()

        groups = self._groups_of(parameters)
        with self.phase_timer.phase("update"):
            directions, nu, size = self._directions(parameters, grads, groups)
            finite = math.isfinite(size)
            if finite and any(group["momentum"] for group in groups):
                directions = self._momentum(parameters, directions, groups)
                size = _norm(directions)

        reduction_ratio = None
        if not finite:
            # A non-finite direction cannot be clipped or applied: skip the step, keep the
            # parameters and momentum, and count it as a failed step for the damping.
            self.counters["skipped_steps"] += 1
            if self.adapt_damping:
                self._set_damping(self.damping / self.damping_decay)
        elif linearization is not None:
            with self.phase_timer.phase("damping"):
                deltas = [d * -group["lr"] for d, group in zip(directions, groups, strict=True)]
                model_change, tangent = self._quadratic_model(linearization, parameters,
                                                              grads, deltas)
        if finite:
            with self.phase_timer.phase("update"), torch.no_grad():
                rates = [group["lr"] for group in groups]
                if len(set(rates)) == 1:  # one fused update for the usual single rate
                    torch._foreach_add_(parameters, directions, alpha=-rates[0])
                else:
                    for p, d, rate in zip(parameters, directions, rates, strict=True):
                        p.add_(d, alpha=-rate)
        if finite and linearization is not None:
            with self.phase_timer.phase("damping"):
                reduction_ratio = self._adapt_damping(linearization, parameters, deltas,
                                                      model_change, tangent)

        state["step"] = step + 1
        lr = float(self.param_groups[0]["lr"])
        self.step_info.update({
            "damping": self.damping,
            "lr": lr,
            "step_size": lr * nu if finite else 0.0,
            "update_norm": lr * size if finite else 0.0,
            "factors_updated": float(update_factors),
            "inverses_updated": float(update_inverses),
        })
        if not finite:
            self.step_info["skipped"] = 1.0
        if reduction_ratio is not None:
            self.step_info["reduction_ratio"] = reduction_ratio
        return loss.detach()

    def _update_factors(self, output: torch.Tensor, pre_activation_gradients) -> None:
        separate = self.bias_factor == "separate"
        # A's running average is updated in place (no new d×d tensor; kronecker.gram)
        a_new = self.collector.input_factors(
            homogeneous=not separate, decay=self.ema_decay,
            running=[self.state[layer.weight].get("A") for layer in self.layers])
        positions = self.collector.positions() if separate else []
        s_new = self.collector.output_factors(
            curvature=self.curvature, loss=self.loss, output=output, mc_samples=self.mc_samples,
            generator=self.generator,
            pre_activation_gradients=list(pre_activation_gradients) or None)
        for index, (layer, a, s) in enumerate(zip(self.layers, a_new, s_new, strict=True)):
            state = self.state[layer.weight]
            state["A"] = a
            if "S" in state:
                state["S"].lerp_(s.detach(), 1 - self.ema_decay)
            else:
                state["S"] = s.detach()
            if separate:  # the bias's factor is T·S, T averaged as A's homogeneous entry is
                new = positions[index]
                old = state.get("positions", new)
                state["positions"] = old + (1 - self.ema_decay) * (new - old)
        self.counters["factor_updates"] += 1
        if self.curvature == "kflr":
            self.counters["backward_passes"] += self.loss.hessian_factor_columns(output.shape[1])
        elif self.curvature == "kfac":
            self.counters["backward_passes"] += self.mc_samples

    def _update_decompositions(self) -> None:
        retries, failed = 0, 0
        for layer in self.layers:
            state = self.state[layer.weight]
            gamma_a, gamma_s = self._factor_damping(state["A"], state["S"], layer)
            shifts = (0.0, 0.0) if self.inverse_method == "eigh" else (gamma_a, gamma_s)
            sizes = {"A": state["A"].shape[0], "S": state["S"].shape[0]}
            pair, overwritten = [], False
            for key, shift in zip(("A", "S"), shifts, strict=True):
                other = sizes["S" if key == "A" else "A"]
                keep = self.inverse_method == "cholesky" and prefer_triangular_solves(
                    sizes[key], other, self.inv_update_period,
                    device_type=state[key].device.type)
                previous = (self._decompositions[layer][len(pair)].factor
                            if keep and layer in self._decompositions else None)
                if not reusable_factor(previous, like=state[key]):
                    previous = None
                overwritten |= previous is not None
                result = damped_decomposition(state[key], shift=shift, method=self.inverse_method,
                                              keep_factor=keep, out=previous)
                if result is None:
                    failed += 1
                    if overwritten:  # no previous pair to keep: decomposed again next step
                        self._forget_decomposition(layer)
                    break
                retries += result.retries
                pair.append(result)
            if len(pair) == 2:
                self._decompositions[layer] = (pair[0], pair[1])
                _pack(state, "A", pair[0])
                _pack(state, "S", pair[1])
                # π is frozen with the decomposition: the damped inverses then change only
                # when the decomposition or the damping does (see _damped_inverses)
                state["damping_split"] = gamma_a / gamma_s
        self.counters["inverse_updates"] += 1
        self.step_info["inverse_retries"] = float(retries)
        self.step_info["inverse_failures"] = float(failed)

    def _forget_decomposition(self, layer: nn.Module) -> None:
        """Drop a layer's decomposition (its update is then the fallback ``U`` until the next
        successful one, which ``curvature_step`` attempts at the next step)."""
        self._decompositions.pop(layer, None)
        self._inverse_keys.pop(layer, None)
        for key in ("decomposition_A", "decomposition_S"):
            self.state[layer.weight].pop(key, None)

    def _factor_damping(self, a: torch.Tensor, s: torch.Tensor,
                        layer: nn.Module) -> tuple[float, float]:
        group = self._group_of(layer.weight)
        root = math.sqrt(group["damping"] + group["weight_decay"])
        pi = pi_correction(a, s) if self.use_pi_correction else 1.0
        return pi * root, root / pi

    def _damped_inverses(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """``((A + γ_A I)⁻¹, (S + γ_S I)⁻¹)`` of a layer's last decomposition.

        Cholesky decompositions are those inverses. For ``eigh`` they are
        ``Q diag(1/(λ + γ)) Qᵀ``, kept in the layer's state and rebuilt only when the
        decomposition or the damping changes, so each step costs two matmuls per layer.
        """
        dec_a, dec_s = self._decompositions[layer]
        if self.inverse_method == "cholesky":
            return dec_a.inverse, dec_s.inverse
        state = self.state[layer.weight]
        group = self._group_of(layer.weight)
        key = (dec_a, dec_s, group["damping"] + group["weight_decay"])
        cached = self._inverse_keys.get(layer)
        if (cached is None or cached[0] is not dec_a or cached[1] is not dec_s
                or cached[2] != key[2] or "damped_inverse_A" not in state):
            root = math.sqrt(key[2])
            split = math.sqrt(state.get("damping_split", 1.0))
            gamma_a, gamma_s = split * root, root / split
            state["damped_inverse_A"] = (dec_a.vectors / (dec_a.values + gamma_a)) @ dec_a.vectors.T
            state["damped_inverse_S"] = (dec_s.vectors / (dec_s.values + gamma_s)) @ dec_s.vectors.T
            self._inverse_keys[layer] = key
        return state["damped_inverse_A"], state["damped_inverse_S"]

    def _precondition(self, layer: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
        """``(S + γ_S I)⁻¹ V (A + γ_A I)⁻¹`` of a layer's ``V = [∇W, ∇b]`` (``(d_out, d_in+1)``;
        ``∇W`` alone, ``(d_out, d_in)``, with ``bias_factor="separate"``).

        Two matrix products with stored inverses; a factor kept as a Cholesky factor
        (:func:`prefer_triangular_solves`) is applied by two triangular solves instead. Then
        ``A``'s side goes first: triangular solves from the right leave a column-major result
        (LAPACK's layout), and the ``S`` side after them writes a row-major one, as the
        gradient is, so the KL clipping's ``⟨U, V⟩`` and the update read both contiguously
        (measured, in-process A/B, 15 rounds, Intel Xeon: the MLP of
        ``benchmarks/kfac_peers.py`` with every-step decompositions 0.98 of its step before,
        the other workloads within 1%).
        """
        dec_a, dec_s = self._decompositions[layer]
        if dec_a.factor is not None or dec_s.factor is not None:
            dtype = (dec_a.factor if dec_a.factor is not None else dec_a.inverse).dtype
            work = matrix if matrix.dtype == dtype else matrix.to(dtype)
            return dec_s.solve(dec_a.solve(work, left=False)).to(matrix.dtype)
        inverse_a, inverse_s = self._damped_inverses(layer)
        if matrix.dtype != inverse_a.dtype:
            return (inverse_s @ matrix.to(inverse_a.dtype) @ inverse_a).to(matrix.dtype)
        return inverse_s @ matrix @ inverse_a

    def _precondition_bias(self, layer: nn.Module, vector: torch.Tensor) -> torch.Tensor:
        """``(S + γ_S I)⁻¹ v / T`` of a layer's ``v = ∇b + ηb`` (``bias_factor="separate"``),
        ``T`` its positions per example (one product)."""
        dec_s = self._decompositions[layer][1]
        scale = 1.0 / self.state[layer.weight]["positions"]
        stored = dec_s.factor if dec_s.factor is not None else self._damped_inverses(layer)[1]
        work = vector if vector.dtype == stored.dtype else vector.to(stored.dtype)
        if dec_s.factor is not None:
            result = dec_s.solve(work.unsqueeze(1)).squeeze(1).mul_(scale)
        else:  # beta = 0: the input (any tensor of the result's shape) is not read
            result = torch.addmv(work, stored, work, beta=0, alpha=scale)
        return result if result.dtype == vector.dtype else result.to(vector.dtype)

    def _directions(self, parameters, grads, groups: list[dict[str, Any]]
                    ) -> tuple[list[torch.Tensor], float, float]:
        """Preconditioned, clipped directions ``νU`` per parameter, ``ν``, and ``‖νU‖``.

        The clipping's scalars and the norm are read from the device in one transfer (one
        host synchronisation per step on a GPU); ``‖νU‖ = ν‖U‖``.

        A layer's weight and bias directions are views of its one ``U`` matrix: ``V`` is
        assembled once (one copy), preconditioned by two products and never split into
        copies; the KL clipping takes ``⟨U, V⟩`` once per layer on those matrices. With
        ``bias_factor="separate"`` the weight's matrix is a view of its gradient (no copy)
        and the bias takes one matrix-vector product with ``(S + γ_S I)⁻¹``.
        """
        raw = [g.add(p.detach(), alpha=group["weight_decay"]) if group["weight_decay"] else g
               for p, g, group in zip(parameters, grads, groups, strict=True)]
        directions = list(raw)  # fallback: the gradient itself
        kl = self.clipping == "kl"
        separate = self.bias_factor == "separate"
        inners, blocks = [], []
        covered = set()
        for layer, (w, b) in self._layer_index(parameters).items():
            if layer not in self._decompositions:
                continue
            weight = raw[w]
            matrix = weight.reshape(weight.shape[0], -1)
            bias_column = b is not None and not separate
            if bias_column:
                matrix = torch.cat([matrix, raw[b].unsqueeze(1)], dim=1)
            result = self._precondition(layer, matrix)
            blocks.append(result)
            if kl:
                inners.append(torch.vdot(result.reshape(-1), matrix.reshape(-1)))
            directions[w] = (result[:, :-1] if bias_column else result).reshape(weight.shape)
            covered.add(w)
            if b is None:
                continue
            covered.add(b)
            if bias_column:
                directions[b] = result[:, -1]
            else:
                directions[b] = self._precondition_bias(layer, raw[b])
                blocks.append(directions[b])
                if kl:
                    inners.append(torch.vdot(directions[b], raw[b]))
        blocks += [directions[i] for i in range(len(raw)) if i not in covered]
        nu = 1.0
        lr = float(self.param_groups[0]["lr"])
        norm_tensor = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(blocks)))
        if kl:
            inners += [torch.vdot(directions[i].reshape(-1), raw[i].reshape(-1))
                       for i in range(len(raw)) if i not in covered]
            inner, norm = torch.stack([torch.stack(inners).sum().to(norm_tensor.dtype),
                                       norm_tensor]).tolist()
            if inner > 0 and lr**2 * inner > self.clip_threshold:
                nu = math.sqrt(self.clip_threshold / (lr**2 * inner))
        else:
            norm = float(norm_tensor)
            if self.clipping == "norm" and lr * norm > self.clip_threshold:
                nu = self.clip_threshold / (lr * norm)
        if nu != 1.0:
            directions = torch._foreach_mul(directions, nu)
        return directions, nu, nu * norm

    def _layer_index(self, parameters) -> dict[nn.Module, tuple[int, int | None]]:
        """``layer -> (index of its weight, of its bias or None)`` in ``parameters``."""
        key = tuple(id(p) for p in parameters)
        if self._index_key != key:
            index = {id(p): i for i, p in enumerate(parameters)}
            self._index = {layer: (index[id(layer.weight)],
                                   index[id(layer.bias)] if layer.bias is not None else None)
                           for layer in self.layers}
            self._index_key = key
        return self._index

    def _momentum(self, parameters, directions, groups) -> list[torch.Tensor]:
        """The momentum buffers ``m ← μ m + νU`` (the direction itself without momentum)."""
        result = []
        for p, d, group in zip(parameters, directions, groups, strict=True):
            if group["momentum"]:
                state = self.state[p]
                if "momentum_buffer" in state:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                else:
                    state["momentum_buffer"] = d.clone()
                d = state["momentum_buffer"]
            result.append(d)
        return result

    # -- Levenberg–Marquardt -----------------------------------------------------------------

    def _quadratic_model(self, linearization: Linearization, parameters, grads,
                         deltas) -> tuple[float, torch.Tensor | None]:
        """``∇hᵀδ + ½ δᵀ(G + ηI)δ`` at the current parameters (before the update), and
        ``J₁δ`` (``None`` unless :attr:`Linearization.tracks_input_layer`).

        ``δᵀGδ = (Jδ)ᵀ H (Jδ)`` with ``Jδ`` from the step's linearisation (no extra forward).
        ``δ`` is the update applied (learning rate, clipping and momentum included), so the
        trial forward at ``θ + δ`` can take the input layer's output as ``f₁(θ) + J₁δ``.
        """
        curvature = linearization.ggn_quadratic_form(flatten(deltas, parameters))
        tangent = linearization.input_layer_tangent if linearization.tracks_input_layer else None
        self.counters["jacobian_vector_products"] += 1
        terms = [curvature * 0.5]
        for p, g, d in zip(parameters, grads, deltas, strict=True):
            terms.append(torch.vdot(g.reshape(-1), d.reshape(-1)))
            eta = self._group_of(p)["weight_decay"]
            if eta:
                terms.append(eta * (torch.vdot(p.detach().reshape(-1), d.reshape(-1))
                                    + 0.5 * torch.vdot(d.reshape(-1), d.reshape(-1))))
        return float(torch.stack(terms).sum()), tangent

    def _adapt_damping(self, linearization: Linearization, parameters, deltas,
                       model_change: float, tangent: torch.Tensor | None) -> float | None:
        """The reduction ratio ρ after moving the step, and λ updated from it; ``None`` (λ
        kept) for a zero step, which tests nothing (a zero gradient: a fitted batch)."""
        if model_change == 0.0 and not any(bool(d.any()) for d in deltas):
            return None
        # The parameters now hold θ + δ; with J₁δ only the layers after the input layer run.
        new_loss = float(linearization.evaluate_loss(step=1.0, input_layer_tangent=tangent))
        self.counters["forward_passes"] += 1
        self.counters["function_evaluations"] += 1
        if not math.isfinite(new_loss):  # the step left the region where the loss is finite
            self._set_damping(self.damping / self.damping_decay)
            return -math.inf
        change = new_loss - float(linearization.loss_value)
        with torch.no_grad():
            for p, d in zip(parameters, deltas, strict=True):
                eta = self._group_of(p)["weight_decay"]
                if eta:  # ½η(‖θ+δ‖² − ‖θ‖²) with θ already updated: θ_old = p − d
                    change += eta * float(((p - d) * d).sum() + 0.5 * (d * d).sum())
        # A model that predicts no decrease makes the step a failure whatever happened.
        ratio = change / model_change if model_change < 0 else -math.inf
        damping = self.damping
        if ratio > 0.75:
            damping *= self.damping_decay
        elif ratio < 0.25:
            damping /= self.damping_decay
        self._set_damping(damping)
        return ratio

    def _set_damping(self, damping: float) -> None:
        damping = min(max(damping, 1e-8), _MAX_DAMPING)
        for group in self.param_groups:
            group["damping"] = damping


def _norm(tensors: list[torch.Tensor]) -> float:
    """``‖(t₁, t₂, …)‖₂`` of a list of tensors, as a float."""
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors))))


def _pack(state: dict[str, Any], key: str, decomposition: Decomposition) -> None:
    """Store a decomposition in the (state_dict-able) parameter state."""
    state[f"decomposition_{key}"] = {
        "method": decomposition.method, "shift": decomposition.shift,
        "values": decomposition.values, "vectors": decomposition.vectors,
        "inverse": decomposition.inverse, "factor": decomposition.factor,
    }


def _unpack(state: dict[str, Any], key: str) -> Decomposition:
    stored = state[f"decomposition_{key}"]
    return Decomposition(method=stored["method"], shift=stored["shift"], retries=0,
                         values=stored["values"], vectors=stored["vectors"],
                         inverse=stored["inverse"], factor=stored.get("factor"))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# -- presets -----------------------------------------------------------------------------------

#: Preset defaults: a damped Gauss-Newton step (lr 1, no momentum) whose damping adapts by
#: Levenberg–Marquardt from 1e-3, KL-clipped at 1e-2; factors every 5 steps, decompositions
#: every 20 (chosen on digits-mlp and digits-autoencoder; see the README's K-FAC section);
#: Cholesky inverses (half the state of eigh and a quarter of its decomposition time); the
#: bias in one block with the weight (Martens & Grosse; "separate" is ASDL's choice).
_COMMON_DEFAULTS: dict[str, float | int | bool | str] = {
    "lr": 1.0,
    "damping": 1e-3,
    "momentum": 0.0,
    "weight_decay": 0.0,
    "ema_decay": 0.95,
    "cov_update_period": 5,
    "inv_update_period": 20,
    "pi_correction": True,
    "adapt_damping": True,
    "damping_adaptation_period": 5,
    "damping_decay": 0.95 ** 5,
    "clipping": "kl",
    "clip_threshold": 1e-2,
    "inverse_method": "cholesky",
    "bias_factor": "homogeneous",
}
_SEARCH_SPACE = {
    "lr": LogUniform(1e-2, 2.0),
    "damping": LogUniform(1e-5, 1.0),
    "momentum": Uniform(0.0, 0.99),
    "clipping": Choice(("kl", "none")),
}
_REFERENCES = {
    "kfac": "Martens & Grosse 2015 (K-FAC); Grosse & Martens 2016 (KFC, convolutions).",
    "kflr": "Botev, Ritter & Barber 2017, 'Practical Gauss-Newton optimisation for deep "
            "learning' (KFLR).",
    "kfra": "Botev, Ritter & Barber 2017, 'Practical Gauss-Newton optimisation for deep "
            "learning' (KFRA).",
    "empirical": "Kunstner, Hennig & Balles 2019, 'Limitations of the empirical Fisher "
                 "approximation'; Martens & Grosse 2015 for the optimizer.",
}
_DESCRIPTIONS = {
    "kfac": "K-FAC: Kronecker-factored block Gauss-Newton, Monte-Carlo sampled output factor.",
    "kflr": "KFLR: Kronecker-factored block Gauss-Newton with the exact output-Hessian factor.",
    "kfra": "KFRA: Kronecker-factored block Gauss-Newton by recursive batch-averaged "
            "curvature (MLPs only).",
    "empirical": "K-FAC with the empirical Fisher (true-label gradients) as output factor.",
}



for _name, _curvature in (("kfac", "kfac"), ("kflr", "kflr"), ("kfra", "kfra"),
                          ("kfac-empirical", "empirical")):
    _defaults = dict(_COMMON_DEFAULTS)
    if _curvature == "kfac":
        _defaults["mc_samples"] = 1
    register_optimizer(OptimizerSpec(
        name=_name,
        description=_DESCRIPTIONS[_curvature],
        factory=curvature_optimizer_factory(KFAC, curvature=_curvature),
        defaults=_defaults,
        search_space=_SEARCH_SPACE,
        needs_curvature=True,
        supports_conv=_curvature != "kfra",
        deterministic=True,
        reference=_REFERENCES[_curvature],
    ))
