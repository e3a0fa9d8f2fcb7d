"""Tests of curvebench.study: parsing, expansion and one-line errors for malformed files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from curvebench.cli import main
from curvebench.optimizers import OPTIMIZERS
from curvebench.problems import PROBLEMS
from curvebench.study import StudyError, load_study

STUDIES = Path(__file__).resolve().parent.parent / "studies"

VALID = """
name = "t"
problems = ["synthetic-linreg", "digits-logreg"]
seeds = [0, 3]
batch_sizes = [32, 64]
eval_every = 5
[budget]
max_steps = 25
[optimizers.sgd]
fixed = { momentum = 0.5 }
grid = { lr = { low = 1e-3, high = 10.0, n = 5 }, nesterov = [false, true] }
[optimizers.adam]
sample = { method = "sobol", n = 4, seed = 7, ranges = { lr = { low = 1e-4, high = 1e-1 } } }
include_default = true
"""


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_study_expands_into_run_configs(tmp_path):
    study = load_study(write(tmp_path, VALID))
    assert study.name == "t" and study.problems == ("synthetic-linreg", "digits-logreg")
    sgd, adam = study.sweeps
    assert sgd.design == "grid" and len(sgd.points) == 10
    lrs = sorted({p["lr"] for p in sgd.hyperparameter_points()})
    assert lrs == pytest.approx(list(np.geomspace(1e-3, 10, 5)))
    assert all(p["momentum"] == 0.5 for p in sgd.hyperparameter_points())
    assert adam.design == "sobol" and adam.points[0] == ()  # the defaults come first
    sampled = [p["lr"] for p in adam.hyperparameter_points()[1:]]
    assert len(sampled) == 4 and all(1e-4 <= lr <= 1e-1 for lr in sampled)
    configs = study.run_configs()
    assert len(configs) == 2 * 2 * (10 + 5) * 2  # problems × batches × points × seeds
    assert len(set(configs)) == len(configs)
    assert {c.max_steps for c in configs} == {25} and {c.eval_every for c in configs} == {5}
    assert {c.batch_size for c in configs} == {32, 64} and {c.seed for c in configs} == {0, 3}


def test_quasi_random_samples_are_seeded(tmp_path):
    def lrs(seed: int, method: str = "sobol") -> list[float]:
        text = VALID.replace("seed = 7", f"seed = {seed}").replace('"sobol"', f'"{method}"')
        return [p.get("lr") for p in load_study(write(tmp_path, text)).sweeps[1].
                hyperparameter_points()]

    assert lrs(7) == lrs(7)
    assert lrs(7) != lrs(8)
    assert lrs(7, "halton") != lrs(7)
    # log-uniform: the samples' log-mean is near the middle of the range
    halton = np.log10([v for v in lrs(1, "halton") if v is not None])
    assert abs(halton.mean() - (-2.5)) < 0.75


def test_sample_defaults_to_the_optimizers_search_space(tmp_path):
    text = """
problems = ["synthetic-linreg"]
[optimizers.sgd]
sample = { method = "halton", n = 8 }
"""
    sweep = load_study(write(tmp_path, text)).sweeps[0]
    space = OPTIMIZERS.get("sgd").search_space
    points = sweep.hyperparameter_points()
    assert len(points) == 8 and set(points[0]) == set(space)
    for point in points:
        assert space["lr"].low <= point["lr"] <= space["lr"].high
        assert space["momentum"].low <= point["momentum"] <= space["momentum"].high


def test_default_design_and_duplicates(tmp_path):
    text = """
problems = ["synthetic-linreg"]
[optimizers.sgd]
include_default = true
points = [{ lr = 0.1 }, { lr = 0.1, momentum = 0.9 }, { lr = 0.2 }]
[optimizers.adam]
"""
    sgd, adam = load_study(write(tmp_path, text)).sweeps
    assert sgd.points == ((), (("lr", 0.2),))  # lr=0.1, momentum=0.9 are sgd's defaults
    assert adam.design == "default" and adam.points == ((),)


def test_integer_ranges_round_and_deduplicate(tmp_path):
    text = """
problems = ["synthetic-linreg"]
[optimizers.sgd]
grid = { lr = { low = 1.0, high = 3.0, n = 9, scale = "linear", integer = true } }
"""
    # sgd's lr is a float: integer grid values are converted, duplicates removed
    points = load_study(write(tmp_path, text)).sweeps[0].hyperparameter_points()
    assert [p["lr"] for p in points] == [1.0, 2.0, 3.0]


MALFORMED = [
    ("unknown top-level key", 'problemz = ["synthetic-linreg"]\n[optimizers.sgd]\n', "problemz"),
    ("unknown optimizer key", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\ngird = {}\n',
     "optimizers.sgd.gird"),
    ("seeds not a list", 'problems = ["synthetic-linreg"]\nseeds = "0"\n[optimizers.sgd]\n',
     "seeds"),
    ("negative seed", 'problems = ["synthetic-linreg"]\nseeds = [-1]\n[optimizers.sgd]\n',
     "seeds[0]"),
    ("float steps", 'problems = ["synthetic-linreg"]\n[budget]\nmax_steps = 1.5\n'
                    '[optimizers.sgd]\n', "budget.max_steps"),
    ("empty budget", 'problems = ["synthetic-linreg"]\n[budget]\n[optimizers.sgd]\n', "budget"),
    ("empty problems", "problems = []\n[optimizers.sgd]\n", "problems"),
    ("missing problems", "[optimizers.sgd]\n", "problems"),
    ("unknown problem", 'problems = ["digits-mpl"]\n[optimizers.sgd]\n', "problems[0]"),
    ("unknown optimizer", 'problems = ["synthetic-linreg"]\n[optimizers.sdg]\n',
     "optimizers.sdg"),
    ("no optimizers", 'problems = ["synthetic-linreg"]\n[optimizers]\n', "optimizers"),
    ("empty grid", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\ngrid = {}\n',
     "optimizers.sgd.grid"),
    ("empty grid axis", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\ngrid = { lr = [] }\n',
     "optimizers.sgd.grid.lr"),
    ("unknown hyperparameter", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                               "grid = { lrr = [0.1] }\n", "optimizers.sgd.grid.lrr"),
    ("wrong hyperparameter type", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                                  'fixed = { nesterov = "maybe" }\n',
     "optimizers.sgd.fixed.nesterov"),
    ("grid value type", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                        'grid = { lr = [0.1, "fast"] }\n', "optimizers.sgd.grid.lr[1]"),
    ("range without n", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                        "grid = { lr = { low = 0.1, high = 1.0 } }\n", "optimizers.sgd.grid.lr.n"),
    ("inverted range", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                       "grid = { lr = { low = 1.0, high = 0.1, n = 3 } }\n",
     "optimizers.sgd.grid.lr"),
    ("empty points", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\npoints = []\n',
     "optimizers.sgd.points"),
    ("zero samples", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                     'sample = { method = "sobol", n = 0 }\n', "optimizers.sgd.sample.n"),
    ("unknown method", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                       'sample = { method = "lhs", n = 4 }\n', "optimizers.sgd.sample.method"),
    ("two designs", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\npoints = [{}]\n'
                    "grid = { lr = [0.1] }\n", "optimizers.sgd.grid"),
    ("fixed and swept", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\nfixed = { lr = 1.0 }\n'
                        "grid = { lr = [0.1] }\n", "optimizers.sgd.fixed.lr"),
    ("bad dtype", 'problems = ["synthetic-linreg"]\ndtype = "float16"\n[optimizers.sgd]\n',
     "dtype"),
    ("negative lr", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                    "points = [{ lr = -1.0 }]\n", "optimizers.sgd point 0"),
    ("invalid TOML", 'problems = ["synthetic-linreg"\n', "invalid TOML"),
    ("infinite point", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                       "points = [{ lr = inf }]\n", "optimizers.sgd.points[0].lr"),
    ("infinite grid value", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                            "grid = { lr = [0.1, -inf] }\n", "optimizers.sgd.grid.lr[1]"),
    ("overflowing fixed value", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                                "fixed = { momentum = 1e400 }\n",
     "optimizers.sgd.fixed.momentum"),
    ("batch size above the training set", 'problems = ["synthetic-linreg"]\n'
     "batch_sizes = [64, 4096]\n[optimizers.sgd]\n", "batch_sizes"),
    ("huge grid axis", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                       "grid = { lr = { n = 100000000 } }\n", "optimizers.sgd.grid.lr.n"),
    ("huge grid product", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                          "grid = { lr = { n = 3000 }, momentum = { low = 0.1, high = 0.9, "
                          "n = 3000, scale = \"linear\" }, weight_decay = { low = 0.1, high = 0.9, "
                          "n = 3000, scale = \"linear\" } }\n", "optimizers.sgd.grid"),
    ("huge sample", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                    'sample = { method = "sobol", n = 1000000000 }\n',
     "optimizers.sgd.sample.n"),
    ("huge study", 'problems = ["synthetic-linreg"]\nseeds = [' + ", ".join(map(str, range(
        400))) + ']\n[optimizers.sgd]\ngrid = { lr = { n = 300 } }\n', "runs (problems"),
    ("huge seed", 'problems = ["synthetic-linreg"]\nseeds = [0, 9223372036854775807]\n'
                  "[optimizers.sgd]\n", "seeds[1]"),
    ("a million threads", 'problems = ["synthetic-linreg"]\nthreads = 1000000\n'
                          "[optimizers.sgd]\n", "threads"),
    ("nan point", 'problems = ["synthetic-linreg"]\n[optimizers.sgd]\n'
                  "points = [{ lr = nan }]\n", "optimizers.sgd.points[0].lr"),
]


@pytest.mark.parametrize(("case", "text", "key"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_study_exits_2_naming_key_and_file_before_running(tmp_path, capsys, case,
                                                                      text, key):
    path = write(tmp_path, text, name="bad study.toml")
    out = tmp_path / "results"
    status = main(["sweep", str(path), "--out", str(out)])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured.err
    assert len(lines) == 1, captured.err
    assert str(path) in lines[0] and key in lines[0], lines[0]
    assert not out.exists()  # nothing ran, nothing was written


def test_study_error_is_one_line(tmp_path):
    with pytest.raises(StudyError) as error:
        load_study(write(tmp_path, 'problems = ["x"]\n[optimizers.sgd]\n'))
    assert "\n" not in str(error.value)
    with pytest.raises(StudyError, match="cannot read"):
        load_study(tmp_path / "missing.toml")


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_studies_parse_and_use_registered_names(path):
    study = load_study(path)
    configs = study.run_configs()
    assert configs
    assert {c.problem for c in configs} <= set(PROBLEMS.names())
    assert all(math.isfinite(c.max_steps or 1) for c in configs)
    study.check_buildable()
