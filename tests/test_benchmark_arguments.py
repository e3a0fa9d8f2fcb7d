"""The benchmark scripts refuse bad arguments in one usage line (exit status 2) before they
measure anything: a misspelt workload or problem, a list that does not parse, a malformed,
unknown or out-of-range ``--hp``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.parametrize(("script", "argv", "message"), [
    ("kfac_peers", ["--workloads", "mlp", "nosuch"],
     "unknown workload(s) nosuch; known: mlp, cnn, "),
    ("sgn_costs", ["--workloads", "nosuch"], "unknown workload(s) nosuch; known: mlp, cnn, "),
    ("preconditioner_costs", ["--workloads", "mlp,nosuch"],
     "unknown workload(s) nosuch; known: mlp, cnn"),
    ("sgn_damping_floor", ["--problems", "digits-mlp,nosuch"],
     "unknown problem(s) nosuch; known: "),
    ("tune_targets", ["--problems", "nosuch", "--lrs", "0.1"],
     "unknown problem(s) nosuch; known: "),
    ("sgn_damping_floor", ["--seeds", "0,a"], "argument --seeds: invalid seed_list value"),
    ("tune_targets", ["--seeds", "x"], "argument --seeds: invalid seed_list value"),
    ("tune_targets", ["--lrs", "0.1,abc"], "argument --lrs: invalid rate_list value"),
    ("kfac_costs", ["--hp", "damping"], "--hp takes KEY=VALUE, got 'damping'"),
    ("kfac_costs", ["--hp", "nosuch=1"], "optimizer 'kfac' has no hyperparameter 'nosuch'"),
    ("kfac_costs", ["--hp", "damping=-1"], "damping must be positive"),
])
def test_bad_arguments_are_one_usage_line(script, argv, message, monkeypatch, capsys):
    module = importlib.import_module(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith(f"{script}.py: error: ") and message in last
    assert "Traceback" not in captured.err and captured.out == ""
