"""The benchmarks' allocator policy (``curvebench.timing.retain_freed_memory``): with it a
freed tensor's memory is reused without page faults; without it (glibc's default) part of it
is given back to the operating system and faults again when reused. Checked in child
processes, by counting page faults (no clock), because the policy applies to a whole
process."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from curvebench.timing import ALLOCATOR_POLICIES, apply_allocator_policy

#: A child process: apply a policy, then allocate and fill eight 8 MiB tensors and free them,
#: twice to warm up and five times counted; print the policy's description and the page
#: faults per counted round. With glibc's default the freed heap top is trimmed (given back to
#: the operating system) and faults again: measured 3680 faults per round of 16384 pages.
_CHILD = """
import json, resource, sys
import torch
from curvebench.timing import apply_allocator_policy
description = apply_allocator_policy(sys.argv[1])
def round_():
    tensors = [torch.empty(2 * 2**20).fill_(1.0) for _ in range(8)]
    del tensors
for _ in range(2):
    round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    round_()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(json.dumps({"description": description, "faults": faults}))
"""


def _child(policy: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, policy], capture_output=True,
                          text=True, check=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_retained_memory_is_reused_without_page_faults():
    pages = 8 * 8 * 2**20 // 4096
    retained, system = _child("retain"), _child("system")
    assert retained["description"].startswith("freed memory kept")
    assert system["description"] == "system allocator"
    assert retained["faults"] < pages / 10


def test_an_unknown_policy_is_a_clear_error():
    assert ALLOCATOR_POLICIES == ("retain", "system")
    with pytest.raises(ValueError, match="allocator policy must be one of"):
        apply_allocator_policy("jemalloc")
