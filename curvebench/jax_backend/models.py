"""Compile a neutral :class:`~curvebench.architecture.Architecture` into a pure JAX function.

``apply(params, x)`` is a pure function of a parameter pytree (a tuple with one dict
``{"w": …, "b": …}`` per Dense/Conv layer, in layer order) and a batch ``x`` shaped like the
torch model's input. Spatial activations are kept channels-last internally (``NHWC``, with
1-D signals as ``N×1×L×C``) and weights are stored in the layouts kfac-jax's graph matcher
recognises (dense ``(in, out)``, convolution ``HWIO``), so kfac-jax finds every layer on its
own; :data:`Flatten` restores torch's channels-first order, so outputs equal torch's.

Initial weights: :func:`initial_params` converts the neutral parameters of a seed
(:func:`curvebench.architecture.initial_parameters`, NumPy) into this pytree; the torch
backend loads the same arrays (``ProblemSpec.build_model(seed=…)``), so both backends start
from identical weights without this module importing torch. :func:`from_torch` converts the
current parameters of a user's own flat torch model instead.
"""

from __future__ import annotations

import functools
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
    initial_parameters,
)

__all__ = ["describe", "from_torch", "initial_params", "compile_architecture", "Params",
           "params_to_numpy", "params_from_numpy"]

Params = tuple[dict[str, jax.Array], ...]
Apply = Callable[[Params, jax.Array], jax.Array]

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
_ACTIVATION_FUNCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}


def describe(model: Any) -> Architecture:
    """The neutral description of a flat torch model (imports torch; see
    :func:`curvebench.problems.torch_models.describe`)."""
    from curvebench.problems.torch_models import describe as describe_torch_model

    return describe_torch_model(model)


def initial_params(architecture: Architecture, *, seed: int, dtype: Any = None) -> Params:
    """The initial parameters of ``seed`` as a pytree (the torch backend loads the same ones).

    Args:
        architecture: the declaration (e.g. ``ProblemSpec.architecture``).
        seed: see :func:`curvebench.architecture.initial_parameters`.
        dtype: the JAX dtype of the parameters (default: JAX's default float type).
    """
    arrays = initial_parameters(architecture, seed=seed)
    return params_from_numpy(architecture, arrays,
                             dtype=jnp.result_type(float) if dtype is None else dtype)


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


def compile_architecture(architecture: Architecture, *,
                         canonical_transposes: bool = False) -> Apply:
    """The pure function ``apply(params, x) -> (N, D)`` of ``architecture``.

    Args:
        architecture: the declaration.
        canonical_transposes: give every convolution a reverse-mode rule (``jax.custom_vjp``)
            that writes its two transposes as ``NHWC``/``HWIO`` convolutions on transposed
            operands. Same values and gradients; for reverse mode inside ``lax.while_loop`` or
            ``lax.cond``, whose bodies XLA's CPU compiler does not canonicalise, so JAX's own
            transposes (``01oi`` and ``f01b_i01o`` dimension labels) run there through a slow
            generic loop (measured: a 1-D CNN's vector-Jacobian product about 20× slower than
            outside a loop). The result supports reverse mode only (no ``jvp``/``linearize``)
            and hides the convolutions from kfac-jax's graph matcher.

    Raises:
        ValueError: when ``params`` does not hold one entry per parameterised layer.
    """
    layers = architecture.layers
    count = len(architecture.parameterised)
    convolve = _conv_canonical_transposes if canonical_transposes else _conv

    def apply(params: Params, x: jax.Array) -> jax.Array:
        if len(params) != count:
            raise ValueError(f"expected parameters for {count} layers, got {len(params)}")
        x = _channels_last(x)
        position = 0
        for layer in layers:
            if isinstance(layer, Dense | Conv):
                x = _parameterised(layer, params[position], x, convolve)
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


def _parameterised(layer: Dense | Conv, entry: dict[str, jax.Array], x: jax.Array,
                   convolve: Callable[..., jax.Array]) -> jax.Array:
    if isinstance(layer, Dense):
        y = x @ entry["w"]
        return y + entry["b"] if layer.bias else y
    stride = (1, *layer.stride) if len(layer.stride) == 1 else tuple(layer.stride)
    padding = (0, *layer.padding) if len(layer.padding) == 1 else layer.padding
    y = convolve(x, entry["w"], stride, tuple((p, p) for p in padding))
    return y + entry["b"][None, None, None] if layer.bias else y


def _conv(x: jax.Array, w: jax.Array, stride: tuple[int, ...],
          padding: tuple[tuple[int, int], ...]) -> jax.Array:
    """``NHWC`` input, ``HWIO`` kernel (the layouts kfac-jax recognises)."""
    return jax.lax.conv_general_dilated(x, w, window_strides=stride, padding=padding,
                                        dimension_numbers=_DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_canonical_transposes(x: jax.Array, w: jax.Array, stride: tuple[int, ...],
                               padding: tuple[tuple[int, int], ...]) -> jax.Array:
    """:func:`_conv` whose transposes are ``NHWC``/``HWIO`` convolutions too (see
    :func:`compile_architecture`)."""
    return _conv(x, w, stride, padding)


def _conv_forward(x: jax.Array, w: jax.Array, stride: tuple[int, ...],
                  padding: tuple[tuple[int, int], ...]):
    return _conv(x, w, stride, padding), (x, w)


def _conv_backward(stride: tuple[int, ...], padding: tuple[tuple[int, int], ...],
                   residuals: tuple[jax.Array, jax.Array], cotangent: jax.Array):
    """Per spatial axis (input length ``L``, kernel ``k``, stride ``s``, padding ``lo``, output
    length ``O``, ``span = (O − 1)s + 1``): the input's cotangent convolves the cotangent
    dilated by ``s`` with the flipped kernel, inputs and outputs swapped, padded by
    ``(k − 1 − lo, L − span + lo)``; the kernel's convolves the input, batch and channels
    swapped, with the cotangent dilated by ``s`` as kernel, padded by ``(lo, k − L − lo + span
    − 1)`` (XLA's own canonical forms of the two transposes)."""
    x, w = residuals
    kernel, length, out = w.shape[:2], x.shape[1:3], cotangent.shape[1:3]
    span = [(o - 1) * s + 1 for o, s in zip(out, stride, strict=True)]
    flipped = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)
    input_padding = [(k - 1 - lo, n - m + lo) for k, n, m, (lo, _) in
                     zip(kernel, length, span, padding, strict=True)]
    dx = jax.lax.conv_general_dilated(cotangent, flipped, window_strides=(1, 1),
                                      padding=input_padding, lhs_dilation=stride,
                                      dimension_numbers=_DIMENSIONS)
    kernel_padding = [(lo, k - n - lo + m - 1) for k, n, m, (lo, _) in
                      zip(kernel, length, span, padding, strict=True)]
    dw = jax.lax.conv_general_dilated(jnp.transpose(x, (3, 1, 2, 0)),
                                      jnp.transpose(cotangent, (1, 2, 0, 3)),
                                      window_strides=(1, 1), padding=kernel_padding,
                                      rhs_dilation=stride, dimension_numbers=_DIMENSIONS)
    return dx, jnp.transpose(dw, (1, 2, 0, 3))


_conv_canonical_transposes.defvjp(_conv_forward, _conv_backward)


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
