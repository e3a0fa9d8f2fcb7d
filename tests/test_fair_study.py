"""Equal tuning budgets by design, and defaults that work at the suite's batch sizes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from curvebench.optimizers import get_optimizer
from curvebench.optimizers.spec import Choice
from curvebench.problems import get_problem
from curvebench.study import StudyError, load_study, parse_study

ROOT = Path(__file__).resolve().parent.parent

TUNED = {
    "problems": ["synthetic-linreg", "digits-logreg"],
    "tuning": {"configurations": 3, "method": "sobol", "seed": 0},
    "optimizers": {"sgd": {"fixed": {"momentum": 0.9}, "ranges": {"lr": {}}},
                   "adam": {"ranges": {"lr": {}}},
                   "sgn": {"ranges": {"cg_iterations": {}, "damping_min": {}}}},
}


def configurations(study) -> dict[str, int]:
    return {sweep.optimizer: len(sweep.points) for sweep in study.sweeps}


def test_tuning_protocol_gives_every_optimizer_the_same_number_of_configurations():
    study = parse_study(TUNED)
    assert configurations(study) == {"sgd": 3, "adam": 3, "sgn": 3}
    assert "3 configuration(s) per optimizer" in study.tuning_summary()
    for sweep in study.sweeps:  # drawn from the optimizer's own search space
        space = get_optimizer(sweep.optimizer).search_space
        for point in sweep.hyperparameter_points():
            for name, value in point.items():
                if name in space:
                    assert value in space[name].values if isinstance(space[name], Choice) \
                        else space[name].low <= value <= space[name].high
    runs = Counter(c.optimizer for c in study.run_configs())
    assert set(runs.values()) == {3 * 2}  # configurations × problems (one seed)


def test_tuning_protocol_refuses_hand_picked_points():
    table = {**TUNED, "optimizers": {**TUNED["optimizers"],
                                     "adam": {"grid": {"lr": [1e-3, 1e-2]}}}}
    with pytest.raises(StudyError, match=r"optimizers\.adam\.grid.*\[tuning\]"):
        parse_study(table)
    too_few = {**TUNED, "optimizers": {"sgn": {"ranges": {"line_search": {}}}}}
    with pytest.raises(StudyError, match="distinct"):  # a boolean axis has two values
        parse_study(too_few)


def test_unequal_hand_picked_budgets_are_reported():
    study = parse_study({"problems": ["synthetic-linreg"],
                         "optimizers": {"sgd": {"grid": {"lr": [0.01, 0.1, 1.0]}}, "sgn": {}}})
    assert "UNEQUAL" in study.tuning_summary() and "sgd 3, sgn 1" in study.tuning_summary()


def test_budget_fraction_scales_each_problems_own_budget():
    study = parse_study({**TUNED, "budget": {"fraction": 0.5}})
    steps = {c.problem: c.max_steps for c in study.run_configs()}
    assert steps == {name: get_problem(name).budget.max_steps // 2 for name in TUNED["problems"]}
    with pytest.raises(StudyError, match="fraction"):
        parse_study({**TUNED, "budget": {"fraction": 0.5, "max_steps": 10}})


def test_quick_study_tunes_every_optimizer_equally_including_second_order():
    study = load_study(ROOT / "studies" / "quick.toml")
    counts = configurations(study)
    assert {"sgd", "adam", "sgn", "kflr"} <= set(counts)
    assert len(set(counts.values())) == 1 and study.tuning is not None
    assert study.threads == 1
    adam = {p["lr"] for s in study.sweeps if s.optimizer == "adam"
            for p in s.hyperparameter_points()}
    for name in study.problems:  # every learned target was set by one of the study's Adam lrs
        provenance = get_problem(name).target.provenance
        if "Tuned Adam" in provenance:
            assert any(f"lr={lr:.3g}" in provenance for lr in adam), (name, provenance)


def test_sgn_defaults_keep_a_damping_floor_and_the_paper_preset_keeps_the_paper():
    sgn, paper = get_optimizer("sgn"), get_optimizer("sgn-paper")
    assert sgn.defaults["damping_min"] == 0.1 and sgn.defaults["damping"] >= 0.1
    assert (paper.defaults["damping"], paper.defaults["damping_min"]) == (1e-4, 1e-6)
    assert "damping_min" in sgn.search_space


def test_study_executor_key_is_the_sweeps_default(tmp_path, capsys):
    from curvebench.cli import main

    study = tmp_path / "study.toml"
    study.write_text('problems = ["synthetic-linreg"]\nexecutor = "process"\n'
                     '[optimizers.sgd]\n', encoding="utf-8")
    assert main(["sweep", str(study), "--out", str(tmp_path / "o"), "--dry-run",
                 "--workers", "2"]) == 0
    assert "(process, threads=1 workers/machine=2 code=" in capsys.readouterr().err
    assert main(["sweep", str(study), "--out", str(tmp_path / "o"), "--dry-run",
                 "--executor", "serial"]) == 0
    assert "(serial, threads=1 workers/machine=1 code=" in capsys.readouterr().err
    study.write_text('problems = ["synthetic-linreg"]\nexecutor = "mpi"\n[optimizers.sgd]\n',
                     encoding="utf-8")
    assert main(["sweep", str(study), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    assert "executor" in capsys.readouterr().err
