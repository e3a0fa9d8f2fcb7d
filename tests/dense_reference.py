"""Independent dense references for curvature tests (float64, tiny networks only).

Builds the full Jacobian of the network output with respect to all parameters with
``torch.func.jacrev`` and the loss Hessian blocks with double backward through the loss value
(not through the losses' closed forms), so it shares no code with the curvature core.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev

__all__ = ["flat_parameters", "dense_jacobian", "dense_output_hessian", "dense_ggn",
           "dense_hessian"]


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """All parameters concatenated in ``model.parameters()`` order."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _unflatten(model: nn.Module, vector: torch.Tensor) -> dict[str, torch.Tensor]:
    params, offset = {}, 0
    for name, p in model.named_parameters():
        params[name] = vector[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return params


def dense_jacobian(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``J`` of shape ``(N·D, P)``: d output / d parameters, rows sample-major."""
    theta = flat_parameters(model)

    def output(vector: torch.Tensor) -> torch.Tensor:
        return functional_call(model, _unflatten(model, vector), (inputs,)).reshape(-1)

    return jacrev(output)(theta)


def dense_output_hessian(loss_fn, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``H`` of shape ``(N·D, N·D)``: Hessian of the batch loss w.r.t. the flattened output."""
    flat = output.detach().reshape(-1)

    def value(vector: torch.Tensor) -> torch.Tensor:
        return loss_fn(vector.view_as(output), targets)

    return torch.autograd.functional.hessian(value, flat)


def dense_ggn(model: nn.Module, loss_fn, inputs: torch.Tensor,
              targets: torch.Tensor) -> torch.Tensor:
    """``G = Jᵀ H J`` of shape ``(P, P)``."""
    jacobian = dense_jacobian(model, inputs)
    with torch.no_grad():
        output = model(inputs)
    hessian = dense_output_hessian(loss_fn, output, targets)
    return jacobian.T @ hessian @ jacobian


def dense_hessian(model: nn.Module, loss_fn, inputs: torch.Tensor,
                  targets: torch.Tensor) -> torch.Tensor:
    """Full Hessian of the batch loss w.r.t. all parameters, ``(P, P)``."""
    theta = flat_parameters(model)

    def value(vector: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, _unflatten(model, vector), (inputs,)), targets)

    return torch.autograd.functional.hessian(value, theta)
