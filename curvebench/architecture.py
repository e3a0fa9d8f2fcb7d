"""Framework-neutral description of a network: a flat list of standard layers.

Every registered problem declares its model once as an :class:`Architecture` (see
``curvebench.problems.models``); each backend compiles that declaration: the torch backend
builds an ``nn.Sequential`` (``curvebench.problems.torch_models``) and
:mod:`curvebench.jax_backend.models` a pure function ``apply(params, x)``. Initial parameters
come from one neutral, seeded generator (:func:`initial_parameters`, NumPy), so both backends
start from identical weights for a seed. This module imports neither torch nor jax.

Shapes follow the torch convention: channels first (``(N, C, L)`` for 1-D and
``(N, C, H, W)`` for 2-D convolutions), weights ``(out, in)`` for dense layers and
``(out, in, *kernel)`` for convolutions; parameters are listed layer by layer, weight before
bias, which is the order of ``torch.nn.Module.parameters()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Dense",
    "Conv",
    "Pool",
    "Flatten",
    "Reshape",
    "Activation",
    "Layer",
    "Architecture",
    "Init",
    "ACTIVATIONS",
    "INITS",
    "initial_parameters",
]

#: Elementwise nonlinearities every backend provides.
ACTIVATIONS = ("relu", "tanh", "sigmoid")
#: Initialisation schemes (see :class:`Init`).
INITS = ("uniform", "normal")


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
class Init:
    """How the initial parameters of every Dense and Conv layer are drawn.

    ``"uniform"`` is torch's default for ``nn.Linear`` and ``nn.ConvNd``: weight and bias
    ``~ U(-1/√fan_in, 1/√fan_in)``, ``fan_in`` = input features (times the kernel size).
    ``"normal"``: weights ``~ N(0, std²)``, biases zero.
    """

    kind: str = "uniform"
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in INITS:
            raise ValueError(f"unknown initialisation {self.kind!r}; known: {', '.join(INITS)}")
        if not (math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"Init: std must be positive, got {self.std!r}")


@dataclass(frozen=True)
class Architecture:
    """A network as an ordered tuple of layers applied one after the other, and its init."""

    layers: tuple[Layer, ...]
    init: Init = field(default_factory=Init)

    @property
    def num_parameters(self) -> int:
        """Number of parameters (all trainable)."""
        return sum(math.prod(shape) for shape in self.parameter_shapes())

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


def initial_parameters(architecture: Architecture, *, seed: int) -> list[np.ndarray]:
    """The initial parameters for ``seed``: float64 arrays in torch's layouts and order.

    One NumPy generator, ``numpy.random.default_rng(seed)``, draws every parameter in order
    (layer by layer, weight then bias) from the distribution :attr:`Architecture.init` names,
    so the parameters are a pure function of the architecture and the seed. Backends cast them
    to their dtype (a float32 model gets the float64 draws rounded to nearest).

    Raises:
        ValueError: for a negative or non-integer seed.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    generator = np.random.default_rng(int(seed))
    init = architecture.init
    arrays: list[np.ndarray] = []
    for layer in architecture.parameterised:
        if isinstance(layer, Dense):
            weight_shape, fan_in = (layer.out_features, layer.in_features), layer.in_features
        else:
            weight_shape = (layer.out_channels, layer.in_channels, *layer.kernel_size)
            fan_in = layer.in_channels * math.prod(layer.kernel_size)
        bound = 1.0 / math.sqrt(fan_in)
        if init.kind == "uniform":
            arrays.append(generator.uniform(-bound, bound, size=weight_shape))
        else:
            arrays.append(generator.normal(0.0, init.std, size=weight_shape))
        if layer.bias:
            size = weight_shape[0]
            arrays.append(generator.uniform(-bound, bound, size=size) if init.kind == "uniform"
                          else np.zeros(size))
    return arrays
