"""Compile a neutral :class:`~curvebench.architecture.Architecture` into a pure JAX function.

``apply(params, x)`` is a pure function of a parameter pytree (a tuple with one dict
``{"w": …, "b": …}`` per Dense/Conv layer, in layer order) and a batch ``x`` shaped like the
torch model's input. Spatial activations are kept channels-last internally (``NHWC``, with
1-D signals as ``N×1×L×C``) and weights are stored in the layouts kfac-jax's graph matcher
recognises (dense ``(in, out)``, convolution ``HWIO``), so kfac-jax finds every layer on its
own; :data:`Flatten` restores torch's channels-first order, so outputs equal torch's.

Initial weights: :func:`from_torch` converts a torch model's parameters (built by
``ProblemSpec.build_model(seed=…)``, or any flat model) into this pytree. Both backends thus
start from bit-identical weights for a seed; reimplementing torch's initialisers on JAX's
random-number generator could not give that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from curvebench.architecture import (
    Activation,
    Architecture,
    Conv,
    Dense,
    Flatten,
    Layer,
    Pool,
    Reshape,
)

__all__ = ["describe", "from_torch", "compile_architecture", "Params", "params_to_numpy",
           "params_from_numpy"]

Params = tuple[dict[str, jax.Array], ...]
Apply = Callable[[Params, jax.Array], jax.Array]

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
_ACTIVATION_FUNCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}


def describe(model: Any) -> Architecture:
    """The neutral description of a flat torch model (``nn.Sequential`` or one ``nn.Linear``).

    Nested ``nn.Sequential`` containers are flattened (their parameter order is unchanged).

    Raises:
        ValueError: for a layer type without a neutral equivalent (named in the message).
    """
    from torch import nn

    def leaves(module: nn.Module) -> list[nn.Module]:
        if isinstance(module, nn.Sequential):
            return [leaf for child in module for leaf in leaves(child)]
        return [module]

    modules = leaves(model)
    layers: list[Layer] = []
    activations = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}
    for module in modules:
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
        elif kind in (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d):
            rank = 1 if kind in (nn.MaxPool1d, nn.AvgPool1d) else 2
            if getattr(module, "ceil_mode", False) or getattr(module, "dilation", 1) != 1 or (
                    not getattr(module, "count_include_pad", True)):
                raise ValueError(f"unsupported pooling settings in {module}")
            layers.append(Pool("max" if "Max" in kind.__name__ else "avg",
                               _tuple(module.kernel_size, rank),
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


def from_torch(model: Any, *, dtype: Any = None) -> tuple[Architecture, Params]:
    """The architecture of a flat torch model and its current parameters as a JAX pytree.

    Args:
        model: a flat torch model (see :func:`describe`).
        dtype: the JAX dtype of the parameters (default: the torch parameters' own).

    Returns:
        ``(architecture, params)`` with ``compile_architecture(architecture)(params, x)``
        equal to ``model(x)`` up to rounding.
    """
    architecture = describe(model)
    tensors = [p.detach().cpu().numpy() for p in model.parameters()]
    return architecture, params_from_numpy(architecture, tensors, dtype=dtype)


def params_from_numpy(architecture: Architecture, arrays: Sequence[np.ndarray], *,
                      dtype: Any = None) -> Params:
    """The pytree of parameters given in torch's layouts and order (weight, bias per layer).

    Raises:
        ValueError: when the number of arrays does not match the architecture.
    """
    if len(arrays) != len(architecture.parameter_shapes()):
        raise ValueError(f"expected {len(architecture.parameter_shapes())} arrays, "
                         f"got {len(arrays)}")
    params: list[dict[str, jax.Array]] = []
    position = 0
    for layer in architecture.parameterised:
        weight = np.asarray(arrays[position])
        position += 1
        if isinstance(layer, Dense):
            weight = weight.T
        else:  # (O, I, *kernel) → HWIO, a 1-D kernel as height 1
            weight = np.moveaxis(weight, (0, 1), (-1, -2))
            if weight.ndim == 3:
                weight = weight[None]
        entry = {"w": jnp.asarray(weight, dtype=dtype)}
        if layer.bias:
            entry["b"] = jnp.asarray(arrays[position], dtype=dtype)
            position += 1
        params.append(entry)
    return tuple(params)


def params_to_numpy(architecture: Architecture, params: Params) -> list[np.ndarray]:
    """The parameters in torch's layouts and order (the inverse of :func:`from_torch`)."""
    arrays: list[np.ndarray] = []
    for layer, entry in zip(architecture.parameterised, params, strict=True):
        weight = np.asarray(entry["w"])
        if isinstance(layer, Dense):
            weight = weight.T
        else:
            if len(layer.kernel_size) == 1:
                weight = weight[0]
            weight = np.moveaxis(weight, (-1, -2), (0, 1))
        arrays.append(weight)
        if layer.bias:
            arrays.append(np.asarray(entry["b"]))
    return arrays


def compile_architecture(architecture: Architecture) -> Apply:
    """The pure function ``apply(params, x) -> (N, D)`` of ``architecture``.

    Raises:
        ValueError: when ``params`` does not hold one entry per parameterised layer.
    """
    layers = architecture.layers
    count = len(architecture.parameterised)

    def apply(params: Params, x: jax.Array) -> jax.Array:
        if len(params) != count:
            raise ValueError(f"expected parameters for {count} layers, got {len(params)}")
        x = _channels_last(x)
        position = 0
        for layer in layers:
            if isinstance(layer, Dense | Conv):
                x = _parameterised(layer, params[position], x)
                position += 1
            else:
                x = _parameter_free(layer, x)
        return x

    return apply


def _channels_last(x: jax.Array) -> jax.Array:
    """Torch's ``(N, C, *spatial)`` as ``(N, *spatial, C)``, 1-D signals as height 1."""
    if x.ndim <= 2:
        return x
    x = jnp.moveaxis(x, 1, -1)
    return x[:, None] if x.ndim == 3 else x


def _parameterised(layer: Dense | Conv, entry: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    if isinstance(layer, Dense):
        y = x @ entry["w"]
        return y + entry["b"] if layer.bias else y
    stride = (1, *layer.stride) if len(layer.stride) == 1 else layer.stride
    padding = (0, *layer.padding) if len(layer.padding) == 1 else layer.padding
    y = jax.lax.conv_general_dilated(x, entry["w"], window_strides=stride,
                                     padding=[(p, p) for p in padding],
                                     dimension_numbers=_DIMENSIONS)
    return y + entry["b"][None, None, None] if layer.bias else y


def _parameter_free(layer: Layer, x: jax.Array) -> jax.Array:
    if isinstance(layer, Activation):
        return _ACTIVATION_FUNCTIONS[layer.name](x)
    if isinstance(layer, Reshape):
        if x.ndim == 4:
            x = jnp.moveaxis(x, -1, 1)
        return _channels_last(x.reshape((x.shape[0], *layer.shape)))
    if isinstance(layer, Flatten):
        if x.ndim == 4:
            x = jnp.moveaxis(x, -1, 1)  # back to torch's channels-first order
        return x.reshape((x.shape[0], -1))
    if isinstance(layer, Pool):
        rank = len(layer.kernel_size)
        window = (1, 1, *layer.kernel_size, 1) if rank == 1 else (1, *layer.kernel_size, 1)
        strides = (1, 1, *layer.stride, 1) if rank == 1 else (1, *layer.stride, 1)
        pads = ((0, 0), (0, 0), *[(p, p) for p in layer.padding], (0, 0)) if rank == 1 else (
            (0, 0), *[(p, p) for p in layer.padding], (0, 0))
        if layer.kind == "max":
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)
        summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
        return summed / float(np.prod(layer.kernel_size))
    raise ValueError(f"unknown layer {layer!r}")
