"""``benchmarks/kfac_peers.py``: its rows build and step, and its verdicts (ours ÷ the fastest
peer of the same curvature, the step ÷ SGD goals, the reasons) are computed as printed.

No timing is asserted: the benchmark measures, the tests check its bookkeeping.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import kfac_peers  # noqa: E402


def _row(name: str, ours: bool, ratio: float, *, curvature: str = "fisher-mc",
         workload: str = "mlp 784-256-256-10 b512", periods: str = "5/20",
         device: str = "cpu", flops: float = 2.0) -> dict:
    return {"workload": workload, "periods": periods, "row": name, "curvature": curvature,
            "ours": ours, "step/sgd": ratio, "state/params": 6.5 if ours else 6.0,
            "flops/sgd": flops, "plain flops/sgd": flops - 0.3, "uncounted": {},
            "ops/sgd": flops + 1.0,
            "phases": {"update": 0.5}, "sgd ms": 5.0, "device": device}


def test_ours_is_compared_with_the_fastest_peer_of_its_curvature():
    rows = kfac_peers.compare([
        _row("kfac", True, 2.2), _row("asdl kfac mc", False, 2.0),
        _row("nngeometry kfac mc", False, 2.5), _row("asdl kfac exact", False, 1.0,
                                                     curvature="fisher-exact")])
    ours = rows[0]
    assert ours["peer"] == "asdl kfac mc"
    assert ours["ours/peer"] == pytest.approx(1.1)
    assert ours["state/peer"] == pytest.approx(6.5 / 6.0)
    assert "1.10x the fastest peer" in kfac_peers._goals(ours)
    assert "2.20 > 1.5x SGD" in kfac_peers._goals(ours)
    (line,) = kfac_peers.slower_lines(rows)
    assert "1.10x asdl kfac mc" in line and "+0.20 SGD steps" in line
    goals = kfac_peers.goal_lines(rows)
    assert goals == [goals[0]] and "reached by asdl kfac exact" in goals[0]


def test_a_goal_below_every_rows_arithmetic_says_so():
    rows = kfac_peers.compare([_row("kfac", True, 2.2, flops=2.1),
                               _row("asdl kfac mc", False, 2.3, flops=1.9)])
    (line,) = kfac_peers.goal_lines(rows)
    assert "reached by no library" in line
    assert "the least: asdl kfac mc, 1.90x its flops, 1.60x on its cheapest step" in line
    assert "the fastest of ours, kfac, spends (SGD steps) update 0.50" in line
    assert "kernels" not in line  # a CPU's rows: launches do not bound them
    assert "kfac 2.20 miss (its arithmetic alone 2.10x)" in line
    (line,) = kfac_peers.goal_lines([_row("kfac", True, 2.2, flops=1.4)])
    assert "arithmetic" not in line  # 1.4x the flops: the goal is not below it
    (line,) = kfac_peers.goal_lines([_row("kfac", True, 2.2, flops=1.9, device="cuda")])
    assert "arithmetic" not in line
    assert "launches more than 1.5x an SGD step's kernels" in line and "kfac, 2.90x" in line


def test_reasons_are_chosen_by_row_workload_and_device():
    lm = kfac_peers._explanation(_row("kfac +LM damping", True, 2.0, workload="digits-cnn b128"))
    assert lm.startswith("Levenberg–Marquardt")
    on_gpu = kfac_peers._explanation(_row("kfac", True, 2.0, device="cuda"))
    on_cpu = kfac_peers._explanation(_row("kfac", True, 2.0))
    assert on_gpu.startswith("on a GPU") and not on_cpu.startswith("on a GPU")
    # a prefix names a workload, not the start of another one's name
    digits = kfac_peers._explanation(_row("kfac-empirical", True, 2.0, workload="digits-cnn b"))
    assert digits.startswith("a ~3 ms SGD step")
    assert kfac_peers._explanation(_row("kfac-empirical", True, 2.0, workload="cnn c32 b")) \
        == "not profiled: see its phases"


def test_every_row_builds_and_steps_on_a_small_cnn():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3))
    generator = torch.Generator().manual_seed(0)
    workload = kfac_peers.Workload("small cnn", model, kfac_peers.CrossEntropyLoss(),
                                   torch.randn(8, 1, 8, 8, generator=generator),
                                   torch.randint(0, 3, (8,), generator=generator))
    built = []
    for entry in kfac_peers.ENTRIES:
        try:
            runner = entry.build(workload, kfac_peers.Settings(1, 2))
        except NotImplementedError:
            assert entry.name == "kfra"  # MLPs only
            continue
        for _ in range(2):
            runner.step()
        assert runner.state_bytes() > 0
        arithmetic = kfac_peers.arithmetic_per_step(runner.step, 2)  # hooks and all, counted
        assert arithmetic["flops"] >= arithmetic["plain"] > 0 and arithmetic["operators"] > 0
        if runner.phases is not None:
            assert set(runner.phases(1)) >= {"forward", "backward", "update"}
        built.append(entry.name)
    assert len(built) == len(kfac_peers.ENTRIES) - 1
