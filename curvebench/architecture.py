"""Framework-neutral description of a network: a flat list of standard layers.

Every registered model is a flat stack (a ``torch.nn.Sequential`` or a single ``Linear``) of
the layers below, so one description serves every backend: the torch backend builds (or is
described by) it, and :mod:`curvebench.jax_backend.models` compiles it into a pure function
``apply(params, x)``. This module imports neither torch nor jax.

Shapes follow the torch convention: channels first (``(N, C, L)`` for 1-D and
``(N, C, H, W)`` for 2-D convolutions), weights ``(out, in)`` for dense layers and
``(out, in, *kernel)`` for convolutions; parameters are listed layer by layer, weight before
bias, which is the order of ``torch.nn.Module.parameters()``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Dense",
    "Conv",
    "Pool",
    "Flatten",
    "Reshape",
    "Activation",
    "Layer",
    "Architecture",
    "ACTIVATIONS",
]

#: Elementwise nonlinearities every backend provides.
ACTIVATIONS = ("relu", "tanh", "sigmoid")


@dataclass(frozen=True)
class Dense:
    """Affine layer ``y = x Wᵀ + b`` with ``W`` of shape ``(out_features, in_features)``."""

    in_features: int
    out_features: int
    bias: bool = True


@dataclass(frozen=True)
class Conv:
    """Convolution over ``len(kernel_size)`` spatial dimensions (cross-correlation, as torch).

    ``padding`` is symmetric zero padding per spatial dimension; no dilation, one group.
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    bias: bool = True

    def __post_init__(self) -> None:
        if not len(self.kernel_size) == len(self.stride) == len(self.padding):
            raise ValueError("Conv: kernel_size, stride and padding need one entry per "
                             "spatial dimension")


@dataclass(frozen=True)
class Pool:
    """Max or average pooling over the spatial dimensions (average counts padded zeros)."""

    kind: str  # "max" or "avg"
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind not in ("max", "avg"):
            raise ValueError(f"Pool: kind must be 'max' or 'avg', got {self.kind!r}")
        if not len(self.kernel_size) == len(self.stride) == len(self.padding):
            raise ValueError("Pool: kernel_size, stride and padding need one entry per "
                             "spatial dimension")


@dataclass(frozen=True)
class Flatten:
    """Flatten every dimension after the batch one (row-major, as ``torch.flatten``)."""


@dataclass(frozen=True)
class Reshape:
    """Reshape each sample to ``shape`` (the batch dimension is kept)."""

    shape: tuple[int, ...]


@dataclass(frozen=True)
class Activation:
    """Elementwise nonlinearity, one of :data:`ACTIVATIONS`."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.name!r}; known: {', '.join(ACTIVATIONS)}")


Layer = Dense | Conv | Pool | Flatten | Reshape | Activation


@dataclass(frozen=True)
class Architecture:
    """A network as an ordered tuple of layers applied one after the other."""

    layers: tuple[Layer, ...]

    @property
    def parameterised(self) -> tuple[Dense | Conv, ...]:
        """The layers that own parameters, in order."""
        return tuple(layer for layer in self.layers if isinstance(layer, Dense | Conv))

    def parameter_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of all parameters in order (weight then bias, layer by layer)."""
        shapes: list[tuple[int, ...]] = []
        for layer in self.parameterised:
            if isinstance(layer, Dense):
                shapes.append((layer.out_features, layer.in_features))
                out = layer.out_features
            else:
                shapes.append((layer.out_channels, layer.in_channels, *layer.kernel_size))
                out = layer.out_channels
            if layer.bias:
                shapes.append((out,))
        return shapes
