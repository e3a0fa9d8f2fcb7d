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


def _processes(*ratios: tuple[float, float]) -> list[dict]:
    """Rows (ours kfac, the ASDL peer) of one process per ``(ours, peer)`` pair of step ÷ SGD
    ratios."""
    return kfac_peers.across_processes([
        kfac_peers.compare([_row("kfac", True, ours), _row("asdl kfac mc", False, peer)])
        for ours, peer in ratios])


def test_several_processes_give_medians_ranges_and_passes_per_process():
    ours, peer = _processes((1.45, 1.5), (1.55, 1.5), (1.36, 1.6))
    assert ours["step/sgd"] == pytest.approx(1.45)
    assert ours["per process"]["step/sgd"] == [1.45, 1.55, 1.36]
    assert ours["ours/peer"] == pytest.approx(1.45 / 1.5)  # the median of paired ratios
    assert kfac_peers.with_range(ours, "step/sgd") == "1.45 (1.36–1.55)"
    # the median passes both goals, one process does not: neither is called met
    goals = kfac_peers._goals(ours)
    assert "1.45 (1.36–1.55) > 1.5x SGD in 1 of 3 processes" in goals
    assert "0.97 (0.85–1.03)x the fastest peer in 1 of 3 processes" in goals
    (line,) = kfac_peers.goal_lines([ours, peer])
    assert "kfac 1.45 (1.36–1.55) pass in 2 of 3" in line
    assert "asdl kfac mc 1.50 (1.50–1.60) pass in 2 of 3" in line
    assert "in some processes only by kfac, asdl kfac mc" in line
    (slower,) = kfac_peers.slower_lines([ours, peer])
    assert "0.97 (0.85–1.03)x in 1 of 3 processes asdl kfac mc" in slower
    # every process passing is a plain pass; one process is printed as before
    ours, peer = _processes((1.2, 1.5), (1.3, 1.6))
    assert kfac_peers._goals(ours) == "met" and kfac_peers.slower_lines([ours, peer]) == []
    (line,) = kfac_peers.goal_lines([ours, peer])
    assert "reached by kfac in every process; in some processes only by asdl kfac mc" in line
    assert "kfac 1.25 (1.20–1.30) pass, asdl kfac mc 1.55 (1.50–1.60) pass in 1 of 2" in line
    single = kfac_peers.compare([_row("kfac", True, 1.45)])[0]
    assert kfac_peers.with_range(single, "step/sgd") == "1.45"


def test_processes_must_measure_the_same_rows():
    one = kfac_peers.compare([_row("kfac", True, 1.4)])
    other = kfac_peers.compare([_row("kflr", True, 1.4)])
    with pytest.raises(ValueError, match="different rows"):
        kfac_peers.across_processes([one, other])


def test_a_measuring_process_gets_the_same_settings_and_one_process():
    parser = kfac_peers.build_parser()
    args = parser.parse_args(["--repeats", "7", "--workloads", "mlp", "cnn", "--every-step",
                              "only", "--allocator", "system", "--processes", "3",
                              "--threads", "2"])
    child = parser.parse_args(kfac_peers.child_arguments(args, save="rows.json"))
    assert vars(child) == {**vars(args), "processes": 1, "save": "rows.json"}


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


def test_processes_run_one_after_another_and_a_failure_stops_them(tmp_path):
    """Each process gets its own file to write; one failing process ends the run in one line
    and no later process starts."""
    script = tmp_path / "child.py"
    script.write_text(
        "import json, pathlib, sys\n"
        "save = sys.argv[sys.argv.index('--save') + 1]\n"
        "log = pathlib.Path(sys.argv[1])\n"
        "log.write_text(log.read_text() + 'x' if log.exists() else 'x')\n"
        "if len(log.read_text()) == int(sys.argv[2]): sys.exit(3)\n"
        "json.dump({'rows': [len(log.read_text())]}, open(save, 'w'))\n")
    log = tmp_path / "log"
    saved = kfac_peers.run_processes(str(script), count=2,
                                     arguments=lambda save: [str(log), "0", "--save", save])
    assert saved == [{"rows": [1]}, {"rows": [2]}]
    log.unlink()
    with pytest.raises(SystemExit, match=r"child\.py: measuring process 2 of 3 failed with "
                                         r"exit status 3"):
        kfac_peers.run_processes(str(script), count=3,
                                 arguments=lambda save: [str(log), "2", "--save", save])
    assert log.read_text() == "xx"  # the third never ran
