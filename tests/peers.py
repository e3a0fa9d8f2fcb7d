"""Shared set-up of the peer libraries used by tests and benchmarks (test-only dependencies)."""

from __future__ import annotations

import contextlib
import types

__all__ = ["silence_asdl_profiling_markers"]


def silence_asdl_profiling_markers() -> None:
    """Replace ASDL's ``torch.cuda.nvtx`` markers by no-ops in the imported modules.

    ASDL (``asdfghjkl``) wraps its curvature and inverse computations in NVTX ranges, which
    fail on a CPU-only torch build. Only the module attributes of this process change; the
    installed library is left as it is.
    """
    from asdl.operations import operation
    from asdl.precondition import natural_gradient

    stub = types.SimpleNamespace(range=lambda *args, **kwargs: contextlib.nullcontext())
    operation.nvtx = stub
    natural_gradient.nvtx = stub
