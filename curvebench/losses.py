"""Losses that know their own curvature with respect to the network output.

Every loss here uses *mean* reduction, like ``torch.nn`` losses by default, and owns the
Gauss-Newton algebra that curvature methods need: the Hessian of the batch loss with respect to
the network output ``f`` (a block-diagonal matrix over samples), a factorisation ``H = C Cᵀ`` of
it, and a Monte-Carlo factor whose outer product equals ``H`` in expectation (for K-FAC's
sampled Fisher).

Conventions (``N`` = batch size, ``D`` = output features per sample, ``f_n`` the output of
sample ``n``; all Hessians are those of the *batch-mean* loss, so they carry the ``1/N``):

======================  ===============================  ================================
loss                    value                            Hessian block ``∂²L/∂f_n²``
======================  ===============================  ================================
``MSELoss``             ``(1/(N·D)) Σ ‖f_n − y_n‖²``     ``2/(N·D) · I``
``CrossEntropyLoss``    ``(1/N) Σ −log softmax(f_n)[y]`` ``(1/N)(diag p_n − p_n p_nᵀ)``
``BCEWithLogitsLoss``   mean over all ``N·D`` elements   ``1/(N·D) · diag p_n(1 − p_n)``
======================  ===============================  ================================

Each loss is a scaled negative log-likelihood ``L = c Σ_n −log p(y_n | f_n)`` with
``c = 2/(N·D)`` (MSE, unit-variance Gaussian), ``1/N`` (CE) or ``1/(N·D)`` (BCE), which is how
:meth:`CurvatureLoss.sampled_output_gradient` turns samples from the model's predictive
distribution into an unbiased estimate of ``H``.

Reference: Schraudolph 2002, "Fast curvature matrix-vector products for second-order gradient
descent"; Martens 2020, "New insights and perspectives on the natural gradient method".
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
import torch.nn.functional as F

__all__ = [
    "CurvatureLoss",
    "MSELoss",
    "CrossEntropyLoss",
    "BCEWithLogitsLoss",
    "LOSSES",
    "loss_by_name",
]


class CurvatureLoss(abc.ABC):
    """A mean-reduced loss ``L(f, y)`` with its Hessian with respect to the output ``f``.

    Subclasses implement the value, the Hessian-vector product, a Hessian factor and a
    Monte-Carlo factor. Outputs are ``(N, D)`` tensors; targets are class indices ``(N,)`` for
    cross-entropy and tensors shaped like the output otherwise.
    """

    name: ClassVar[str]
    #: True when the targets are class indices and accuracy is a meaningful metric.
    classification: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the scalar batch-mean loss."""

    @abc.abstractmethod
    def hessian_vector_product(self, output: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        """Return ``H v``: the Hessian of the batch loss w.r.t. ``output`` applied to ``vector``.

        Args:
            output: network output ``(N, D)``; the Hessian depends on it, not on the targets
                (true for all losses here: they are convex in the output).
            vector: ``(N, D)`` or ``(N, D, K)`` for ``K`` vectors at once.

        Returns:
            A tensor shaped like ``vector``.
        """

    @abc.abstractmethod
    def hessian_factor(self, output: torch.Tensor) -> torch.Tensor:
        """Return ``C`` with ``(N, D, K)`` shape such that ``H_n = C_n C_nᵀ`` for every sample,
        ``K =`` :meth:`hessian_factor_columns` ``(D)`` (each column costs a consumer such as
        KFLR one backward pass)."""

    def hessian_factor_columns(self, features: int) -> int:
        """``K``, the columns of :meth:`hessian_factor` for ``D = features`` outputs (``D``
        unless the Hessian's rank is lower)."""
        return features

    @abc.abstractmethod
    def sampled_output_gradient(
        self, output: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return ``g̃`` ``(N, D)`` with ``E[g̃_n g̃_nᵀ] = H_n`` (Monte-Carlo Fisher factor).

        ``g̃_n = √c ∇_{f_n}(−log p(ỹ_n | f_n))`` for ``ỹ_n`` sampled from the model's
        predictive distribution; ``c`` is the loss's likelihood scale (see module docstring).
        """

    def hessian_matrix(self, output: torch.Tensor) -> torch.Tensor:
        """Return the dense per-sample Hessian blocks ``(N, D, D)`` (for tests and small D)."""
        n, d = output.shape
        eye = torch.eye(d, dtype=output.dtype, device=output.device).expand(n, d, d)
        return self.hessian_vector_product(output, eye)


def _broadcast(factor: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Reshape a per-(sample, feature) factor to multiply ``(N, D)`` or ``(N, D, K)``."""
    return factor if vector.dim() == factor.dim() else factor.unsqueeze(-1)


class MSELoss(CurvatureLoss):
    """Mean squared error ``(1/(N·D)) Σ ‖f_n − y_n‖²`` (``torch.nn.MSELoss()``)."""

    name = "mse"

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target)

    def hessian_vector_product(self, output: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return vector * (2.0 / output.numel())

    def hessian_factor(self, output: torch.Tensor) -> torch.Tensor:
        n, d = output.shape
        scale = math.sqrt(2.0 / output.numel())
        eye = torch.eye(d, dtype=output.dtype, device=output.device)
        return (eye * scale).expand(n, d, d)

    def sampled_output_gradient(
        self, output: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        noise = torch.randn(
            output.shape, generator=generator, dtype=output.dtype, device=output.device
        )
        return noise * math.sqrt(2.0 / output.numel())


class CrossEntropyLoss(CurvatureLoss):
    """Softmax cross-entropy on logits with class-index targets, mean over the batch."""

    name = "cross_entropy"
    classification = True

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def hessian_vector_product(self, output: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        p = _broadcast(torch.softmax(output, dim=1), vector)
        hv = p * vector - p * (p * vector).sum(dim=1, keepdim=True)
        return hv / output.shape[0]

    def hessian_factor(self, output: torch.Tensor) -> torch.Tensor:
        """``D − 1`` columns (``diag p − p pᵀ`` has rank ``D − 1``: ``p`` sums to one), by
        stick-breaking (the closed-form Cholesky factor of ``diag p − p pᵀ`` without its last
        class, whose row then follows from the null vector ``1``), so KFLR and EKFAC take
        ``D − 1`` backward passes, not ``D``.

        With classes ordered so that the most probable one comes last, ``q``, and tail sums
        ``s_k = Σ_{j≥k} q_j``, column ``k < D`` has ``√(q_k s_{k+1} / s_k)`` at class ``k``,
        ``−q_i √(q_k / (s_k s_{k+1}))`` at every later class ``i`` and zero before. Every
        ``s`` is at least ``max p ≥ 1/D``, so nothing divides by a vanishing probability.
        """
        n, d = output.shape
        p = torch.softmax(output, dim=1)
        if d < 2:  # one class: a zero Hessian
            return p.new_zeros(n, d, d)
        # the most probable class swapped with the last one (a swap is its own inverse, so
        # the same gather puts the factor's rows back in class order)
        last = p.argmax(dim=1, keepdim=True)
        order = torch.arange(d, device=p.device).expand(n, d).scatter(1, last, d - 1)
        order[:, -1:] = last
        q = p.gather(1, order)
        tail = q.flip(1).cumsum(dim=1).flip(1)
        head, after = tail[:, :-1], tail[:, 1:]
        diagonal = (q[:, :-1] * after / head).sqrt()
        below = -q.unsqueeze(2) * (q[:, :-1] / (head * after)).sqrt().unsqueeze(1)
        rows = torch.arange(d, device=p.device).view(1, d, 1)
        columns = torch.arange(d - 1, device=p.device).view(1, 1, d - 1)
        factor = torch.where(rows == columns, diagonal.unsqueeze(1),
                             torch.where(rows > columns, below, 0.0))
        factor = factor.gather(1, order.unsqueeze(2).expand(n, d, d - 1))
        return factor / math.sqrt(n)

    def hessian_factor_columns(self, features: int) -> int:
        return max(features - 1, 1)

    def sampled_output_gradient(
        self, output: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        p = torch.softmax(output.detach(), dim=1)
        # inverse-CDF sampling: torch.multinomial synchronises with the host on every call
        u = torch.rand((p.shape[0], 1), generator=generator, dtype=p.dtype, device=p.device)
        sampled = (p.cumsum(dim=1) <= u).sum(dim=1, keepdim=True).clamp_(max=p.shape[1] - 1)
        one_hot = torch.zeros_like(p).scatter_(1, sampled, 1.0)  # F.one_hot synchronises too
        return (p - one_hot) / math.sqrt(output.shape[0])


class BCEWithLogitsLoss(CurvatureLoss):
    """Sigmoid binary cross-entropy on logits, mean over all elements.

    Used for the deep autoencoders (pixel intensities in ``[0, 1]`` as soft targets).
    """

    name = "bce_logits"

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output, target)

    def hessian_vector_product(self, output: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(output)
        return _broadcast(p * (1 - p), vector) * vector / output.numel()

    def hessian_factor(self, output: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(output)
        return torch.diag_embed((p * (1 - p)).sqrt() / math.sqrt(output.numel()))

    def sampled_output_gradient(
        self, output: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        p = torch.sigmoid(output.detach())
        sampled = torch.bernoulli(p, generator=generator)
        return (p - sampled) / math.sqrt(output.numel())


#: The single list of losses, by name.
LOSSES: dict[str, type[CurvatureLoss]] = {
    cls.name: cls for cls in (MSELoss, CrossEntropyLoss, BCEWithLogitsLoss)
}


def loss_by_name(name: str) -> CurvatureLoss:
    """Return a new loss instance by its registered name.

    Raises:
        KeyError: for an unknown name, listing the known ones.
    """
    try:
        return LOSSES[name]()
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}") from None
