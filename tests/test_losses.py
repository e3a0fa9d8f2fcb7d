"""The losses' closed-form output Hessians against double backward, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from curvebench.losses import LOSSES, CrossEntropyLoss, loss_by_name
from tests.dense_reference import dense_output_hessian

N, D = 5, 4


def _targets(name: str, generator: torch.Generator) -> torch.Tensor:
    if LOSSES[name].classification:
        return torch.randint(0, D, (N,), generator=generator)
    return torch.rand(N, D, generator=generator, dtype=torch.float64)


@pytest.fixture(params=sorted(LOSSES))
def case(request):
    generator = torch.Generator().manual_seed(0)
    output = torch.randn(N, D, generator=generator, dtype=torch.float64)
    return loss_by_name(request.param), output, _targets(request.param, generator)


def _blocks(dense: torch.Tensor) -> torch.Tensor:
    """Per-sample diagonal blocks of an (N·D, N·D) matrix, checking the rest is zero."""
    full = dense.view(N, D, N, D)
    blocks = torch.stack([full[n, :, n, :] for n in range(N)])
    off = full.clone()
    for n in range(N):
        off[n, :, n, :] = 0
    assert off.abs().max() < 1e-14, "the output Hessian must be block-diagonal over samples"
    return blocks


def test_hessian_matches_double_backward(case):
    loss, output, targets = case
    expected = _blocks(dense_output_hessian(loss, output, targets))
    torch.testing.assert_close(loss.hessian_matrix(output), expected, rtol=1e-12, atol=1e-14)


def test_hessian_vector_product_batched_vectors(case):
    loss, output, _ = case
    vectors = torch.randn(N, D, 3, dtype=torch.float64)
    batched = loss.hessian_vector_product(output, vectors)
    single = torch.stack([loss.hessian_vector_product(output, vectors[..., k]) for k in range(3)],
                         dim=-1)
    torch.testing.assert_close(batched, single)


def test_hessian_factor_squares_to_hessian(case):
    loss, output, _ = case
    factor = loss.hessian_factor(output)
    torch.testing.assert_close(factor @ factor.transpose(1, 2), loss.hessian_matrix(output),
                               rtol=1e-12, atol=1e-14)


def test_sampled_gradient_is_unbiased_for_hessian(case):
    loss, output, _ = case
    generator = torch.Generator().manual_seed(1)
    samples = torch.stack([loss.sampled_output_gradient(output, generator=generator)
                           for _ in range(5000)])
    estimate = torch.einsum("snd,sne->nde", samples, samples) / len(samples)
    exact = loss.hessian_matrix(output)
    assert (estimate - exact).norm() / exact.norm() < 0.1


def test_unknown_loss_lists_known():
    with pytest.raises(KeyError, match="known: bce_logits, cross_entropy, mse"):
        loss_by_name("hinge")


def test_cross_entropy_samples_classes_with_the_model_probabilities():
    """The sampled labels' frequencies are the softmax probabilities (inverse-CDF sampling,
    with no host synchronisation), for every example of the batch."""
    loss = CrossEntropyLoss()
    output = torch.tensor([[2.0, -1.0, 0.5, 0.0], [-3.0, 0.0, 0.0, 3.0]], dtype=torch.float64)
    p = torch.softmax(output, dim=1)
    generator = torch.Generator().manual_seed(2)
    draws = 20000
    batch = output.repeat(draws, 1)  # every example drawn ``draws`` times in one call
    one_hot = (p.repeat(draws, 1) - loss.sampled_output_gradient(batch, generator=generator)
               * math.sqrt(len(batch))).reshape(draws, 2, 4)
    assert torch.allclose(one_hot.sum(dim=2), torch.ones(draws, 2, dtype=torch.float64))
    frequencies = one_hot.mean(dim=0)
    sigma = (p * (1 - p) / draws).sqrt()
    assert ((frequencies - p).abs() <= 4 * sigma + 1e-12).all(), (frequencies, p)


def test_hessian_factor_has_the_columns_the_loss_announces(case):
    """Consumers count a backward pass per column (KFLR's counters) from
    ``hessian_factor_columns``; the factor must have exactly that many."""
    loss, output, _ = case
    assert loss.hessian_factor(output).shape == (N, D, loss.hessian_factor_columns(D))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cross_entropy_factor_has_rank_columns_and_stays_finite_at_extreme_logits(dtype):
    """Softmax's Hessian ``diag p − p pᵀ`` has rank ``D − 1``: its factor has ``D − 1`` columns
    and squares to it, also where probabilities underflow to zero, tie, or put all mass on
    the last or the first class."""
    loss = CrossEntropyLoss()
    output = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0],
                           [300.0, 0.0, -300.0, 1.0, 2.0],
                           [-300.0, 0.0, 0.0, -300.0, 300.0],
                           [5.0, 5.0, -2.0, 1.0, 5.0],
                           [1e-3, -50.0, 80.0, 80.0, -1e4]], dtype=dtype)
    output = torch.cat([output, torch.randn(6, 5, generator=torch.Generator().manual_seed(4),
                                            dtype=dtype) * 20])
    factor = loss.hessian_factor(output)
    assert factor.shape == (11, 5, 4) and torch.isfinite(factor).all()
    tolerance = {"rtol": 1e-12, "atol": 1e-15} if dtype == torch.float64 else {"rtol": 1e-5,
                                                                               "atol": 1e-7}
    torch.testing.assert_close(factor @ factor.mT, loss.hessian_matrix(output), **tolerance)


def test_cross_entropy_factor_of_one_class_is_zero():
    loss = CrossEntropyLoss()
    output = torch.randn(3, 1, dtype=torch.float64)
    assert loss.hessian_factor_columns(1) == 1
    assert torch.equal(loss.hessian_factor(output), torch.zeros(3, 1, 1, dtype=torch.float64))
