"""``benchmarks/sgn_costs.py``: it times SGN steps with and without CG's final residual and
prints a run's mean step (one step in ``RESIDUAL_EVERY`` records the residual).

No timing is asserted: the benchmark measures, the test checks its bookkeeping.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import sgn_costs  # noqa: E402

from curvebench.optimizers import get_optimizer  # noqa: E402


def test_the_printed_ratio_is_a_runs_mean_step(capsys):
    """With one repeat the printed ratio is exactly the amortised mean of the two printed
    steps; the registered setting fixes how often the residual is recorded."""
    assert sgn_costs.RESIDUAL_EVERY == get_optimizer("sgn").settings["residual_every"] > 1
    assert sgn_costs._amortised(1.0, 2.0) == pytest.approx(1.0 + 1.0 / sgn_costs.RESIDUAL_EVERY)
    ((name, case),) = sgn_costs._cpu_cases(["digits-mlp"], 32).items()
    sgn_costs._measure_case(name, *case, repeats=1, ks=[1, 2])
    out = capsys.readouterr().out
    rows = re.findall(r"sgn\(k=(\d+)\)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+"
                      r"(pass|MISS by [\d.]+)\s+([\d.]+) / ([\d.]+)", out)
    assert [row[0] for row in rows] == ["1", "2"] * 2  # the wall and the CPU clock
    for _, ratio, goal, flops, _, _, plain, recording in rows:
        assert float(ratio) == pytest.approx(
            sgn_costs._amortised(float(plain), float(recording)), abs=0.011)
        assert float(flops) > 0 and float(goal) in (2.3, 3.4)
    assert "the last iteration's vᵀGv (J v alone)" in out
