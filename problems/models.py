"""Network architectures of the registered problems, declared once, framework-neutral.

Every model is a flat stack of standard layers (:mod:`curvebench.architecture`), so per-layer
curvature methods (K-FAC and relatives) find their Dense and Conv layers by type, outputs are
``(N, D)`` as the losses expect, and every backend compiles the same declaration: torch with
:func:`curvebench.problems.torch_models.build_torch_model`, JAX with
:func:`curvebench.jax_backend.models.compile_architecture`. This module imports neither torch
nor jax.
"""

from __future__ import annotations

from collections.abc import Sequence

from curvebench.architecture import (
    Activation,
    Architecture,
    Conv,
    Dense,
    Flatten,
    Init,
    Layer,
    Pool,
    Reshape,
)

__all__ = [
    "mlp",
    "autoencoder",
    "sgn_mlp",
    "digits_cnn",
    "mnist1d_cnn",
    "lenet5",
    "cnn_sgn",
    "two_conv_two_dense",
    "three_conv_three_dense",
]


def _conv(in_channels: int, out_channels: int, kernel: int, *, stride: int = 1,
          padding: int = 0, rank: int = 2) -> Conv:
    return Conv(in_channels, out_channels, (kernel,) * rank, (stride,) * rank,
                (padding,) * rank)


def _pool(kind: str, kernel: int, *, stride: int | None = None, padding: int = 0) -> Pool:
    return Pool(kind, (kernel,) * 2, (stride or kernel,) * 2, (padding,) * 2)


def _relu() -> Activation:
    return Activation("relu")


def mlp(widths: Sequence[int], *, activation: str = "relu") -> Architecture:
    """Fully connected network ``widths[0] → … → widths[-1]`` with ``activation`` between."""
    act = Activation(activation)
    layers: list[Layer] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(Dense(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(act)
    return Architecture(tuple(layers))


def autoencoder(widths: Sequence[int], *, activation: str = "sigmoid") -> Architecture:
    """Mirror-symmetric autoencoder: encoder ``widths``, decoder the reverse.

    As in Hinton & Salakhutdinov 2006, the code layer is linear; every other hidden layer uses
    ``activation``; the output is logits (pair with a sigmoid cross-entropy loss).
    """
    act = Activation(activation)
    sizes = list(widths) + list(reversed(widths[:-1]))
    code_index = len(widths) - 2  # the Dense producing the code
    layers: list[Layer] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(Dense(n_in, n_out))
        if i != code_index and i < len(sizes) - 2:
            layers.append(act)
    return Architecture(tuple(layers))


def sgn_mlp() -> Architecture:
    """The SGN paper's MNIST MLP 784-20-20-20-10 (sigmoid) on flattened images, with
    ``N(0, 1)`` weights and zero biases (Gargiani et al. 2020)."""
    body = mlp([784, 20, 20, 20, 10], activation="sigmoid")
    return Architecture((Flatten(), *body.layers), init=Init("normal", std=1.0))


def digits_cnn() -> Architecture:
    """Small 2-D CNN for 8×8 digits: conv16@3-pool-conv32@3-pool-fc10 (ReLU)."""
    return Architecture((
        Reshape((1, 8, 8)),
        _conv(1, 16, 3, padding=1), _relu(), _pool("max", 2),
        _conv(16, 32, 3, padding=1), _relu(), _pool("max", 2),
        Flatten(), Dense(32 * 2 * 2, 10),
    ))


def mnist1d_cnn() -> Architecture:
    """1-D CNN for MNIST-1D (length 40): three strided conv32 layers and a linear read-out."""
    return Architecture((
        Reshape((1, 40)),
        _conv(1, 32, 5, stride=2, padding=2, rank=1), _relu(),
        _conv(32, 32, 3, stride=2, padding=1, rank=1), _relu(),
        _conv(32, 32, 3, stride=2, padding=1, rank=1), _relu(),
        Flatten(), Dense(32 * 5, 10),
    ))


def lenet5() -> Architecture:
    """LeNet-5 (LeCun et al. 1998) for 28×28 inputs: conv6@5(pad 2)-pool-conv16@5-pool-120-84-10."""
    tanh = Activation("tanh")
    return Architecture((
        _conv(1, 6, 5, padding=2), tanh, _pool("avg", 2),
        _conv(6, 16, 5), tanh, _pool("avg", 2),
        Flatten(),
        Dense(16 * 5 * 5, 120), tanh,
        Dense(120, 84), tanh,
        Dense(84, 10),
    ))


def cnn_sgn() -> Architecture:
    """The SGN paper's CIFAR-10 CNN: conv32@3-pool-conv64@3-pool-conv64@3-fc64-fc10 (ReLU)."""
    return Architecture((
        _conv(3, 32, 3), _relu(), _pool("max", 2),
        _conv(32, 64, 3), _relu(), _pool("max", 2),
        _conv(64, 64, 3), _relu(),
        Flatten(), Dense(64 * 4 * 4, 64), _relu(), Dense(64, 10),
    ))


def two_conv_two_dense(*, in_channels: int = 1, size: int = 28) -> Architecture:
    """DeepOBS ``2c2d``: conv32@5(same)-pool-conv64@5(same)-pool-fc1024-fc10 (ReLU)."""
    reduced = size // 4
    return Architecture((
        _conv(in_channels, 32, 5, padding=2), _relu(), _pool("max", 2),
        _conv(32, 64, 5, padding=2), _relu(), _pool("max", 2),
        Flatten(), Dense(64 * reduced * reduced, 1024), _relu(), Dense(1024, 10),
    ))


def three_conv_three_dense() -> Architecture:
    """DeepOBS ``3c3d`` for CIFAR-10: conv64@5-pool-conv96@3-pool-conv128@3-pool-512-256-10."""
    return Architecture((
        _conv(3, 64, 5), _relu(), _pool("max", 3, stride=2, padding=1),
        _conv(64, 96, 3), _relu(), _pool("max", 3, stride=2, padding=1),
        _conv(96, 128, 3, padding=1), _relu(), _pool("max", 3, stride=2, padding=1),
        Flatten(),
        Dense(128 * 3 * 3, 512), _relu(),
        Dense(512, 256), _relu(),
        Dense(256, 10),
    ))
