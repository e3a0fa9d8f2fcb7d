"""Dense float64 helpers for the layer-wise Kronecker methods' tests (Eva, MKOR, TNT, K-BFGS).

An explicit forward pass of a tiny ``Linear → Tanh → Linear`` MLP, independent of the
optimizers' hooks, gives every layer's inputs with the homogeneous coordinate ``ã`` and the
gradients of the batch-mean loss with respect to its outputs ``b``; gradients are arranged as
``[∇W, ∇b]`` and vectorised column-major, so a Kronecker block ``A ⊗ S`` is ``torch.kron(A, S)``.
"""

from __future__ import annotations

import torch
from torch import nn

DTYPE = torch.float64


def tiny_mlp(*sizes: int, seed: int = 0) -> nn.Sequential:
    """``Linear → Tanh → … → Linear`` in float64."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [nn.Linear(d_in, d_out)] + ([nn.Tanh()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers).to(DTYPE)


def classification_batches(steps: int, *, n: int, d_in: int, classes: int, seed: int = 1):
    """``steps`` batches of Gaussian inputs and random labels."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, d_in, generator=generator, dtype=DTYPE),
             torch.randint(0, classes, (n,), generator=generator)) for _ in range(steps)]


def layer_tensors(model: nn.Sequential, inputs: torch.Tensor, targets: torch.Tensor):
    """Per Linear layer: ``(ã (N, d_in+1), b (N, d_out), V = [∇W, ∇b])``, by hand."""
    h, records = inputs, []
    for module in model:
        if isinstance(module, nn.Linear):
            s = h @ module.weight.T + module.bias
            s.retain_grad()
            records.append((torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1), s, module))
            h = s
        else:
            h = torch.tanh(h)
    model.zero_grad()
    nn.functional.cross_entropy(h, targets).backward()
    return [(a.detach(), s.grad.detach(),
             torch.cat([m.weight.grad, m.bias.grad.unsqueeze(1)], 1).detach())
            for a, s, m in records]


def vec(matrix: torch.Tensor) -> torch.Tensor:
    """Column-major vectorisation."""
    return matrix.T.reshape(-1)


def unvec(vector: torch.Tensor, rows: int) -> torch.Tensor:
    """Inverse of :func:`vec`."""
    return vector.reshape(-1, rows).T


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def heavy_ball_layer_step(model: nn.Sequential, buffers: dict, index: int, direction, *,
                          lr: float, momentum: float) -> None:
    """``m ← μ m + U`` (first: ``m = U``) and ``[W, b] ← [W, b] − α m`` for Linear ``index``."""
    buffers[index] = momentum * buffers[index] + direction if index in buffers else direction
    layer = [m for m in model if isinstance(m, nn.Linear)][index]
    with torch.no_grad():
        layer.weight -= lr * buffers[index][:, :-1]
        layer.bias -= lr * buffers[index][:, -1]
