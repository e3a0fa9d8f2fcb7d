"""Network architectures of the registered problems (plain ``nn.Sequential`` stacks).

Every model is a flat ``nn.Sequential`` of standard layers, so per-layer curvature methods
(K-FAC and relatives) can find their Linear and Conv layers by type, and outputs are
``(N, D)`` tensors as the losses expect.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = [
    "mlp",
    "autoencoder",
    "digits_cnn",
    "mnist1d_cnn",
    "lenet5",
    "cnn_sgn",
    "two_conv_two_dense",
    "three_conv_three_dense",
    "normal_init",
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def mlp(widths: Sequence[int], *, activation: str = "relu") -> nn.Sequential:
    """Fully connected network ``widths[0] → … → widths[-1]`` with ``activation`` between."""
    act = _ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def autoencoder(widths: Sequence[int], *, activation: str = "sigmoid") -> nn.Sequential:
    """Mirror-symmetric autoencoder: encoder ``widths``, decoder the reverse.

    As in Hinton & Salakhutdinov 2006, the code layer is linear; every other hidden layer uses
    ``activation``; the output is logits (pair with a sigmoid cross-entropy loss).
    """
    act = _ACTIVATIONS[activation]
    sizes = list(widths) + list(reversed(widths[:-1]))
    code_index = len(widths) - 2  # the Linear producing the code
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i != code_index and i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def normal_init(model: nn.Module, *, std: float = 1.0) -> nn.Module:
    """Draw every Linear/Conv weight from ``N(0, std²)`` and zero every bias (the SGN paper's
    initialisation, Gargiani et al. 2020)."""
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(parameter)
        else:
            nn.init.normal_(parameter, mean=0.0, std=std)
    return model


def digits_cnn() -> nn.Sequential:
    """Small 2-D CNN for 8×8 digits: conv16@3-pool-conv32@3-pool-fc10 (ReLU)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )


def mnist1d_cnn() -> nn.Sequential:
    """1-D CNN for MNIST-1D (length 40): three strided conv32 layers and a linear read-out."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 40)),
        nn.Conv1d(1, 32, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv1d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 5, 10),
    )


def lenet5() -> nn.Sequential:
    """LeNet-5 (LeCun et al. 1998) for 28×28 inputs: conv6@5(pad 2)-pool-conv16@5-pool-120-84-10."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Tanh(),
        nn.Linear(120, 84), nn.Tanh(),
        nn.Linear(84, 10),
    )


def cnn_sgn() -> nn.Sequential:
    """The SGN paper's CIFAR-10 CNN: conv32@3-pool-conv64@3-pool-conv64@3-fc64-fc10 (ReLU)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def two_conv_two_dense(*, in_channels: int = 1, size: int = 28) -> nn.Sequential:
    """DeepOBS ``2c2d``: conv32@5(same)-pool-conv64@5(same)-pool-fc1024-fc10 (ReLU)."""
    reduced = size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * reduced * reduced, 1024), nn.ReLU(), nn.Linear(1024, 10),
    )


def three_conv_three_dense() -> nn.Sequential:
    """DeepOBS ``3c3d`` for CIFAR-10: conv64@5-pool-conv96@3-pool-conv128@3-pool-512-256-10."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 5), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(64, 96, 3), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(96, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(128 * 3 * 3, 512), nn.ReLU(),
        nn.Linear(512, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )
