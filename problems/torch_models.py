"""The torch side of :mod:`curvebench.architecture`: build a declaration, describe a model.

:func:`build_torch_model` compiles a neutral :class:`~curvebench.architecture.Architecture`
into a flat ``nn.Sequential`` and loads the neutral initial parameters of a seed
(:func:`~curvebench.architecture.initial_parameters`), the same ones the JAX backend uses.
:func:`describe` goes the other way for users' own flat torch models; :func:`torch_dataset`
gives a data set's arrays as CPU tensors for torch-only scripts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from curvebench.architecture import (
    Activation,
    Architecture,
    Conv,
    Dense,
    Flatten,
    Layer,
    Pool,
    Reshape,
    initial_parameters,
)
from curvebench.problems.datasets import Dataset

__all__ = ["build_torch_model", "describe", "load_parameters", "torch_dataset"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh,
                                            "sigmoid": nn.Sigmoid}
_CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d}
_POOLS: dict[tuple[str, int], type[nn.Module]] = {
    ("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d,
    ("avg", 1): nn.AvgPool1d, ("avg", 2): nn.AvgPool2d,
}


def _module(layer: Layer) -> nn.Module:
    if isinstance(layer, Dense):
        return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
    if isinstance(layer, Conv):
        return _CONVS[len(layer.kernel_size)](
            layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
            padding=layer.padding, bias=layer.bias)
    if isinstance(layer, Pool):
        return _POOLS[layer.kind, len(layer.kernel_size)](
            layer.kernel_size, stride=layer.stride, padding=layer.padding)
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, Reshape):
        return nn.Unflatten(1, layer.shape)
    if isinstance(layer, Activation):
        return _ACTIVATIONS[layer.name]()
    raise ValueError(f"unknown layer {layer!r}")


def _modules(architecture: Architecture) -> nn.Module:
    modules = [_module(layer) for layer in architecture.layers]
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


def build_torch_model(architecture: Architecture, *, seed: int | None,
                      device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> nn.Module:
    """The flat ``nn.Sequential`` of ``architecture`` on ``device`` in ``dtype`` (a single
    layer is built as that layer alone, e.g. one ``nn.Linear``).

    Args:
        architecture: the declaration.
        seed: the parameters are :func:`~curvebench.architecture.initial_parameters` of this
            seed (the global RNG is untouched); ``None`` keeps torch's own initialisation,
            drawn from the global RNG (for loops that seed torch themselves).
        device: where the parameters live.
        dtype: floating-point type of the parameters.
    """
    if seed is None:
        return _modules(architecture).to(device=device, dtype=dtype)
    with torch.device("meta"):
        model = _modules(architecture)
    model = model.to_empty(device=device).to(dtype=dtype)
    return load_parameters(model, initial_parameters(architecture, seed=seed))


def load_parameters(model: nn.Module, arrays: list[Any]) -> nn.Module:
    """Copy ``arrays`` (torch layouts, ``model.parameters()`` order) into ``model``'s parameters.

    Raises:
        ValueError: when the number or a shape of the arrays does not match.
    """
    parameters = list(model.parameters())
    if len(parameters) != len(arrays):
        raise ValueError(f"expected {len(parameters)} arrays, got {len(arrays)}")
    with torch.no_grad():
        for parameter, array in zip(parameters, arrays, strict=True):
            value = torch.as_tensor(array)
            if value.shape != parameter.shape:
                raise ValueError(f"shape {tuple(value.shape)} does not match parameter shape "
                                 f"{tuple(parameter.shape)}")
            parameter.copy_(value)
    return model


def describe(model: nn.Module) -> Architecture:
    """The neutral description of a flat torch model (``nn.Sequential`` or one ``nn.Linear``).

    Nested ``nn.Sequential`` containers are flattened (their parameter order is unchanged).
    The description carries the default :class:`~curvebench.architecture.Init`; it says
    nothing about how the model's current parameters were drawn.

    Raises:
        ValueError: for a layer type without a neutral equivalent (named in the message).
    """

    def leaves(module: nn.Module) -> list[nn.Module]:
        if isinstance(module, nn.Sequential):
            return [leaf for child in module for leaf in leaves(child)]
        return [module]

    layers: list[Layer] = []
    activations = {kind: name for name, kind in _ACTIVATIONS.items()}
    pools = {kind: key for key, kind in _POOLS.items()}
    for module in leaves(model):
        kind = type(module)
        if kind is nn.Linear:
            layers.append(Dense(module.in_features, module.out_features,
                                bias=module.bias is not None))
        elif kind in (nn.Conv1d, nn.Conv2d):
            if (module.groups != 1 or any(d != 1 for d in module.dilation)
                    or isinstance(module.padding, str) or module.padding_mode != "zeros"):
                raise ValueError(f"unsupported convolution settings in {module}")
            layers.append(Conv(module.in_channels, module.out_channels,
                               tuple(module.kernel_size), tuple(module.stride),
                               tuple(module.padding), bias=module.bias is not None))
        elif kind in pools:
            pool_kind, rank = pools[kind]
            if getattr(module, "ceil_mode", False) or getattr(module, "dilation", 1) != 1 or (
                    not getattr(module, "count_include_pad", True)):
                raise ValueError(f"unsupported pooling settings in {module}")
            layers.append(Pool(pool_kind, _tuple(module.kernel_size, rank),
                               _tuple(module.stride or module.kernel_size, rank),
                               _tuple(module.padding, rank)))
        elif kind is nn.Flatten:
            if module.start_dim != 1 or module.end_dim != -1:
                raise ValueError(f"unsupported flatten settings in {module}")
            layers.append(Flatten())
        elif kind is nn.Unflatten:
            if module.dim != 1:
                raise ValueError(f"unsupported unflatten settings in {module}")
            layers.append(Reshape(tuple(module.unflattened_size)))
        elif kind in activations:
            layers.append(Activation(activations[kind]))
        else:
            raise ValueError(f"no neutral equivalent of layer {kind.__name__}")
    return Architecture(tuple(layers))


def _tuple(value: int | tuple[int, ...], rank: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (int(value),) * rank


def torch_dataset(data: Dataset) -> Dataset:
    """``data`` with CPU tensors in place of its NumPy arrays (sharing their memory)."""
    return dataclasses.replace(data, **{
        name: torch.as_tensor(getattr(data, name))
        for name in ("x_train", "y_train", "x_test", "y_test")})
