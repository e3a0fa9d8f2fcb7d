"""A seeded, shuffling mini-batch iterator over tensors already on the device."""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["ShuffledBatches"]


class ShuffledBatches:
    """Endless mini-batches: each epoch is a fresh seeded permutation, incomplete tail dropped.

    The data is indexed on its own device, so there is no per-batch ``DataLoader`` or host copy.
    With ``batch_size ≥ len(data)`` every batch is the whole data set (full-batch training).

    Args:
        inputs: ``(N, ...)`` tensor.
        targets: ``(N, ...)`` tensor.
        batch_size: examples per batch (positive).
        seed: seed of the shuffling generator (independent of the global RNG).
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, *, batch_size: int,
                 seed: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(inputs) != len(targets):
            raise ValueError("inputs and targets differ in length")
        self.inputs = inputs
        self.targets = targets
        self.size = len(inputs)
        self.batch_size = min(batch_size, self.size)
        self.full_batch = self.batch_size == self.size
        self._generator = torch.Generator(device="cpu").manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)
        self._position = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.full_batch:
            return self.inputs, self.targets
        if self._position + self.batch_size > len(self._order):
            permutation = torch.randperm(self.size, generator=self._generator)
            self._order = permutation.to(self.inputs.device)
            self._position = 0
        index = self._order[self._position : self._position + self.batch_size]
        self._position += self.batch_size
        return self.inputs[index], self.targets[index]
