"""``benchmarks/kfac_costs.py``: the presets it measures are the registry's torch K-FAC
presets (a registered optimizer of another backend, e.g. kfac-jax, is skipped, not built)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import kfac_costs  # noqa: E402


def test_presets_are_the_torch_kfac_family():
    assert set(kfac_costs.presets()) == {"kfac", "kfac-empirical", "kflr", "kfra"}
