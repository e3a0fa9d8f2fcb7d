"""What a stored run needs to say about where it ran: versions, device, threads, precision."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["environment_info", "git_sha", "device_name", "device_description", "resolve_device",
           "DeviceError"]


class DeviceError(RuntimeError):
    """A device that does not exist here (one-line message)."""


def resolve_device(name: str) -> torch.device:
    """Turn ``"cpu"``, ``"cuda"`` or ``"cuda:1"`` into a device, checking it exists.

    Raises:
        DeviceError: unknown device string, or CUDA requested where there is none.
    """
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use 'cpu' or 'cuda[:index]'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but torch.cuda.is_available() is False here "
                              f"(torch {torch.__version__})")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"no CUDA device {index}; {torch.cuda.device_count()} visible")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise DeviceError(f"unsupported device {name!r}; use 'cpu' or 'cuda[:index]'")
    return device


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The git commit of the curvebench checkout, when it is one (with ``-dirty``)."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


@functools.lru_cache(maxsize=8)
def device_name(device: torch.device) -> str:
    """A human-readable name of the CPU model or the GPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use here (``"AVX2"``, ``"AVX512"``, …)."""
    return torch.backends.cpu.get_cpu_capability()


def device_description(device: torch.device) -> str:
    """The GPU's name, or the CPU model with the instruction set torch's kernels use there
    (``"AMD EPYC, AVX2"``): cost ratios of linear algebra against an SGD step differ between
    CPUs a model name alone does not tell apart."""
    if device.type == "cuda":
        return device_name(device)
    return f"{device_name(device)}, {cpu_capability()}"


def environment_info(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Versions, device, thread count, dtype and TF32 setting, as plain strings and numbers."""
    from curvebench import __version__

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "curvebench": __version__,
        "git_sha": git_sha(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cpu_capability": cpu_capability() if device.type == "cpu" else None,
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
    }
