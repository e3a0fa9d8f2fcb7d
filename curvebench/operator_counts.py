"""Counting the operators a piece of torch code dispatches, and its host reads.

On a GPU a step whose kernels are small is bound by launching them (each operator costs the
host some microseconds, whether or not a kernel runs) and by host reads of device values, each
of which waits for the queue to drain. Both are properties of the code, so they can be counted
on a CPU, where timing them is not possible: :class:`OperatorCounter` counts every ATen
operator by name (and how many of them are views, which launch no kernel on a GPU but
cost the host as much dispatch) and every host read, ``aten._local_scalar_dense`` (``float(t)``,
``t.item()``, ``bool(t)``) and ``Tensor.tolist`` (which on a CPU tensor reaches no operator,
so it is counted by wrapping the method while the counter is active).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OperatorCounter"]


class OperatorCounter(TorchDispatchMode):
    """``with OperatorCounter() as counts:`` counts operators (:attr:`operators`, by name) and
    host reads (:attr:`host_reads`) dispatched inside the block, on this thread."""

    def __init__(self) -> None:
        super().__init__()
        self.operators: Counter[str] = Counter()
        self.tolist_calls = 0
        self.views = 0
        self._tolist: Any = None

    @property
    def host_reads(self) -> int:
        """Reads of device values by the host: one synchronisation each on a GPU."""
        return self.operators["aten._local_scalar_dense"] + self.tolist_calls

    @property
    def total(self) -> int:
        """All operators dispatched (views and host reads included)."""
        return sum(self.operators.values())

    def __enter__(self) -> OperatorCounter:
        tolist = self._tolist = torch.Tensor.tolist

        def counted(tensor: torch.Tensor, *args: Any) -> Any:
            self.tolist_calls += 1
            return tolist(tensor, *args)

        torch.Tensor.tolist = counted  # type: ignore[method-assign]
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        torch.Tensor.tolist = self._tolist  # type: ignore[method-assign]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.operators[str(func.overloadpacket)] += 1
        self.views += func.is_view
        return func(*args, **(kwargs or {}))
