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
    returned = sgn_costs._measure_case(name, *case, repeats=1, ks=[1, 2])
    out = capsys.readouterr().out
    rows = re.findall(r"sgn\(k=(\d+)\)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+"
                      r"(pass|MISS by [\d.]+)\s+([\d.]+) / ([\d.]+)", out)
    assert [row[0] for row in rows] == ["1", "2"] * 2  # the wall and the CPU clock
    for _, ratio, goal, flops, _, _, plain, recording in rows:
        assert float(ratio) == pytest.approx(
            sgn_costs._amortised(float(plain), float(recording)), abs=0.011)
        assert float(flops) > 0 and float(goal) in (2.3, 3.4)
    # the returned rows (what --save writes) are the printed ones
    assert [(r["clock"], r["k"]) for r in returned] == [("wall", 1), ("wall", 2),
                                                        ("cpu", 1), ("cpu", 2)]
    for row, (k, ratio, goal, flops, _, verdict, plain, recording) in zip(returned, rows,
                                                                          strict=True):
        assert row["k"] == int(k) and row["goal"] == pytest.approx(float(goal))
        assert (f"{row['ratio']:.2f}", f"{row['flops']:.2f}", f"{row['plain']:.2f}",
                f"{row['recording']:.2f}") == (ratio, flops, plain, recording)
        assert sgn_costs.verdict(row) == ("pass" if verdict == "pass" else verdict)
    assert "the last iteration's vᵀGv (J v alone)" in out


def _row(ratio: float, *, k: int = 1, workload: str = "mlp", clock: str = "cpu") -> dict:
    return {"workload": workload, "clock": clock, "k": k, "ratio": ratio, "plain": ratio - 0.1,
            "recording": ratio + 0.4, "goal": sgn_costs.goal(k), "flops": 1.5, "ops": 2.0,
            "sgd ms": 20.0 + ratio}


def test_several_processes_give_medians_ranges_and_passes_per_process():
    """A goal is met only where every process meets it; the median and range are printed."""
    runs = [[_row(ratio, k=1), _row(ratio + 1.0, k=2)] for ratio in (2.2, 2.4, 2.1)]
    one, two = sgn_costs.across_processes(runs)
    assert one["ratio"] == pytest.approx(2.2) and one["per process"]["ratio"] == [2.2, 2.4, 2.1]
    assert sgn_costs.verdict(one) == "pass in 2 of 3"  # goal 2.3: the median passes
    assert sgn_costs.verdict(two) == "pass"  # 3.2, 3.4, 3.1 against 3.4
    worse = sgn_costs.across_processes([[_row(2.5)], [_row(2.4)]])[0]
    assert sgn_costs.verdict(worse) == "MISS by 0.15"
    table = sgn_costs.summary([one, two, _row(9.0, clock="wall")], clock="cpu")
    assert "2.20 (2.10–2.40)" in table and "pass in 2 of 3" in table
    assert "3.20 (3.10–3.40)" in table and "9.00" not in table  # the other clock's row
    with pytest.raises(ValueError, match="different rows"):
        sgn_costs.across_processes([[_row(2.0, k=1)], [_row(2.0, k=2)]])


def test_a_measuring_process_gets_the_same_settings_and_one_process():
    parser = sgn_costs.build_parser()
    args = parser.parse_args(["--workloads", "mlp", "digits-mlp", "--batch", "64",
                              "--repeats", "3", "--threads", "2", "--k", "1", "10",
                              "--allocator", "system", "--processes", "3"])
    child = parser.parse_args(sgn_costs.child_arguments(args, save="rows.json"))
    assert vars(child) == {**vars(args), "processes": 1, "save": "rows.json"}


@pytest.mark.parametrize("argv", [["--processes", "0"],
                                  ["--processes", "2", "--count-operators"],
                                  ["--save", "rows.json", "--time-to-target"]])
def test_bad_process_options_are_refused_in_one_line(argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sgn_costs.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        sgn_costs.main()
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: --processes" in last
