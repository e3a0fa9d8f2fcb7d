"""Tests of curvebench.metrics on constructed run tables with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from curvebench import metrics
from curvebench.optimizers import get_optimizer

INF = math.inf


def runs(rows: list[dict]) -> pd.DataFrame:
    """A runs table like ``runs_dataframe``: ``steps=None`` means the target was not reached."""
    table = []
    for row in rows:
        row = dict(row)
        steps = row.pop("steps")
        seconds = row.pop("seconds", None if steps is None else steps / 100)
        table.append({
            "problem": row.pop("problem", "p"), "optimizer": row.pop("optimizer", "sgd"),
            "batch_size": row.pop("batch_size", 32), "seed": row.pop("seed", 0),
            "status": "budget" if steps is None else "reached",
            "steps_to_target": np.nan if steps is None else float(steps),
            "seconds_to_target": np.nan if seconds is None else float(seconds),
            **{f"hp.{k}": v for k, v in row.items()},
        })
    return pd.DataFrame(table)


def test_config_medians_count_unreached_seeds_as_infinite():
    df = runs([{"lr": 0.1, "seed": 0, "steps": 10}, {"lr": 0.1, "seed": 1, "steps": 20},
               {"lr": 0.1, "seed": 2, "steps": None},
               {"lr": 1.0, "seed": 0, "steps": 5}, {"lr": 1.0, "seed": 1, "steps": None},
               {"lr": 1.0, "seed": 2, "steps": None}])
    table = metrics.config_medians(df).set_index("hp.lr")
    assert table.loc[0.1, "median_steps"] == 20  # median of 10, 20, ∞
    assert table.loc[1.0, "median_steps"] == INF  # median of 5, ∞, ∞
    assert table.loc[0.1, "reached_fraction"] == pytest.approx(2 / 3)
    assert table.loc[0.1, "n_seeds"] == 3
    assert table.loc[0.1, "hyperparameters"] == "lr=0.1"


def test_summary_best_median_and_bootstrap_interval():
    rows = []
    for lr, seeds in [(0.01, [None, None, None]), (0.1, [10, 20, 30]), (1.0, [40, 40, 40])]:
        rows += [{"lr": lr, "seed": s, "steps": v} for s, v in enumerate(seeds)]
    df = runs(rows)
    summary = metrics.steps_to_target_summary(df, n_bootstrap=2000, seed=3)
    row = summary.iloc[0]
    assert row["best_steps"] == 20 and row["best_hyperparameters"] == "lr=0.1"
    assert row["median_steps"] == 40  # median of ∞, 20, 40
    assert row["n_configs"] == 3 and row["n_runs"] == 9
    assert row["reached_fraction"] == pytest.approx(6 / 9)
    # Medians of resamples of {10, 20, 30} are 10, 20 or 30; 10 and 30 each have probability
    # 7/27 per resample, far above the 2.5% tails: the 95% interval is exactly [10, 30].
    assert (row["best_steps_low"], row["best_steps_high"]) == (10, 30)
    assert (row["best_seconds"], row["best_seconds_low"], row["best_seconds_high"]) == \
        pytest.approx((0.2, 0.1, 0.3))
    again = metrics.steps_to_target_summary(df, n_bootstrap=2000, seed=3)
    pd.testing.assert_frame_equal(summary, again)


def test_summary_interval_collapses_for_identical_seeds_and_nothing_reached():
    df = runs([{"lr": 1.0, "seed": s, "steps": 40} for s in range(4)]
              + [{"optimizer": "adam", "lr": 1.0, "seed": s, "steps": None} for s in range(2)])
    summary = metrics.steps_to_target_summary(df).set_index("optimizer")
    assert tuple(summary.loc["sgd", ["best_steps_low", "best_steps_high"]]) == (40, 40)
    assert summary.loc["adam", "best_steps"] == INF
    assert summary.loc["adam", "best_steps_high"] == INF
    assert summary.loc["adam", "best_hyperparameters"] == "—"


@pytest.mark.parametrize("bad", [{"confidence": 1.0}, {"confidence": 0}, {"n_bootstrap": 0}])
def test_summary_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        metrics.steps_to_target_summary(runs([{"lr": 1.0, "steps": 1}]), **bad)


def test_robustness_uniform_log_grid_is_the_fraction_of_points():
    lrs = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    df = runs([{"lr": lr, "steps": 10 if lr in (0.1, 1.0) else None} for lr in lrs])
    row = metrics.robustness(df).iloc[0]
    assert row["robustness"] == pytest.approx(2 / 5)
    assert row["design"] == "grid" and row["swept"] == "lr" and row["reached_configs"] == 2


def test_robustness_weights_a_nonuniform_grid_by_log_voronoi_cells():
    # log10 coordinates -3, -2, -1, 1: mirrored cells 1, 1, 1.5, 2 (total 5.5).
    df = runs([{"lr": lr, "steps": 10 if lr == 10.0 else None} for lr in [1e-3, 1e-2, 1e-1, 10.0]])
    assert metrics.robustness(df)["robustness"].iloc[0] == pytest.approx(2 / 5.5)


def test_robustness_two_dimensional_grid_uses_the_specs_scales():
    # lr is LogUniform (equal cells), momentum Uniform: linear cells 0.5, 0.45, 0.4 of 1.35.
    rows = [{"lr": lr, "momentum": m, "steps": 10 if m == 0.9 else None}
            for lr in [0.01, 0.1, 1.0] for m in [0.0, 0.5, 0.9]]
    row = metrics.robustness(runs(rows), optimizer_specs={"sgd": get_optimizer("sgd")}).iloc[0]
    assert row["design"] == "grid" and row["swept"] == "lr,momentum"
    assert row["robustness"] == pytest.approx(0.4 / 1.35)


def test_robustness_samples_weigh_equally_and_seeds_count_fractionally():
    rows = [{"lr": 0.01, "momentum": 0.1, "steps": 10}, {"lr": 0.2, "momentum": 0.5, "steps": None},
            {"lr": 0.03, "momentum": 0.7, "steps": None},
            {"lr": 3.0, "momentum": 0.3, "seed": 0, "steps": 5},
            {"lr": 3.0, "momentum": 0.3, "seed": 1, "steps": None}]
    row = metrics.robustness(runs(rows)).iloc[0]
    assert row["design"] == "samples"
    assert row["robustness"] == pytest.approx((1 + 0 + 0 + 0.5) / 4)


def test_robustness_categorical_dimension_weighs_values_equally():
    rows = [{"lr": lr, "nesterov": n, "steps": 10 if n else None}
            for lr in [0.1, 1.0] for n in [False, True]]
    assert metrics.robustness(runs(rows))["robustness"].iloc[0] == pytest.approx(0.5)


def test_lr_sensitivity_relative_steps_and_width():
    steps = {1e-3: None, 1e-2: 300, 1e-1: 100, 1.0: 150, 10.0: None}
    rows = [{"lr": lr, "momentum": 0.9, "steps": s} for lr, s in steps.items()]
    rows.append({"lr": 0.1, "momentum": 0.0, "steps": 400})  # profile: best over momentum
    table = metrics.lr_sensitivity(runs(rows), tolerance=2.0)
    assert list(table["value"]) == list(steps)
    assert list(table["relative_steps"]) == [INF, 3.0, 1.0, 1.5, INF]
    assert list(table["within_tolerance"]) == [False, False, True, True, False]
    assert table["best_value"].iloc[0] == 0.1
    assert table["log10_ratio"].to_numpy() == pytest.approx([-2, -1, 0, 1, 2])
    assert table["width_decades"].iloc[0] == pytest.approx(1.0)
    wide = metrics.lr_sensitivity(runs(rows), tolerance=3.0)
    assert wide["width_decades"].iloc[0] == pytest.approx(2.0)


def test_lr_sensitivity_nothing_reached_and_bad_tolerance():
    table = metrics.lr_sensitivity(runs([{"lr": lr, "steps": None} for lr in [0.1, 1.0]]))
    assert table["relative_steps"].isna().all() and table["width_decades"].isna().all()
    with pytest.raises(ValueError):
        metrics.lr_sensitivity(runs([{"lr": 1.0, "steps": 1}]), tolerance=0.5)


def _sgd(lr: float, steps, **group) -> dict:
    return {"lr": lr, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0, "dampening": 0.0,
            "steps": steps, **group}


def test_default_vs_tuned_gain():
    rows = [_sgd(0.1, 200, problem="a"), _sgd(1.0, 50, problem="a"),
            _sgd(0.1, None, problem="b"), _sgd(1.0, 80, problem="b"),
            _sgd(0.5, 60, problem="c"), _sgd(1.0, 30, problem="c")]
    table = metrics.default_vs_tuned(runs(rows), optimizer_specs={"sgd": get_optimizer("sgd")})
    table = table.set_index("problem")
    assert table.loc["a", "has_default"]
    assert (table.loc["a", "default_steps"], table.loc["a", "tuned_steps"]) == (200, 50)
    assert table.loc["a", "steps_gain"] == 4.0
    assert table.loc["a", "tuned_hyperparameters"] == "lr=1"
    assert table.loc["b", "steps_gain"] == INF
    assert not table.loc["c", "has_default"] and math.isnan(table.loc["c", "steps_gain"])


def test_performance_profiles_known_fractions():
    # steps: A = (10, 20, ∞), B = (20, 10, 30) → ratios A = (1, 2, ∞), B = (2, 1, 1).
    rows = []
    for problem, a, b in [("p1", 10, 20), ("p2", 20, 10), ("p3", None, 30)]:
        rows += [{"problem": problem, "optimizer": "A", "lr": 0.1, "steps": a},
                 {"problem": problem, "optimizer": "B", "lr": 0.1, "steps": b,
                  "seconds": None if b is None else b / 10}]
    profile = metrics.performance_profiles(runs(rows), measure="steps", taus=[1, 1.5, 2, 100])
    assert list(profile.columns) == ["A", "B"]
    assert profile["A"].to_numpy() == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert profile["B"].to_numpy() == pytest.approx([2 / 3, 2 / 3, 1, 1])
    # seconds: A = (0.1, 0.2, ∞), B = (2, 1, 3): A wins both problems it solves by far.
    seconds = metrics.performance_profiles(runs(rows), measure="seconds", taus=[1, 10, 20])
    assert seconds["A"].to_numpy() == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert seconds["B"].to_numpy() == pytest.approx([1 / 3, 2 / 3, 1])
    default = metrics.performance_profiles(runs(rows))
    assert default.index[0] == 1 and default.index[-1] == pytest.approx(4)


def test_performance_profiles_reject_bad_arguments():
    df = runs([{"lr": 0.1, "steps": 1}])
    with pytest.raises(ValueError):
        metrics.performance_profiles(df, measure="epochs")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        metrics.performance_profiles(df, taus=[0.5, 1])


def _scaling_rows(optimizer: str, steps: dict[int, int | None]) -> list[dict]:
    rows = []
    for batch, s in steps.items():
        rows.append({"optimizer": optimizer, "batch_size": batch, "lr": 0.1, "steps": s})
        if s is not None:  # a worse configuration that the tuning must ignore
            rows.append({"optimizer": optimizer, "batch_size": batch, "lr": 1.0, "steps": 3 * s})
    return rows


def test_batch_size_scaling_and_critical_batch_size():
    rows = (_scaling_rows("knee", {32: 800, 64: 400, 128: 200, 256: 200, 512: 200})
            + _scaling_rows("perfect", {32: 800, 64: 400, 128: 200, 256: 100})
            + _scaling_rows("late", {32: None, 64: 400, 128: 300})
            + _scaling_rows("never", {32: None, 64: None}))
    scaling = metrics.batch_size_scaling(runs(rows))
    knee = scaling[scaling["optimizer"] == "knee"]
    assert list(knee["steps"]) == [800, 400, 200, 200, 200]
    assert list(knee["efficiency"]) == [1, 1, 1, 0.5, 0.25]
    assert list(knee["examples"]) == [800 * 32, 400 * 64, 200 * 128, 200 * 256, 200 * 512]
    assert list(knee["best_hyperparameters"]) == ["lr=0.1"] * 5
    late = scaling[scaling["optimizer"] == "late"]
    assert math.isnan(late["efficiency"].iloc[0]) and late["efficiency"].iloc[2] == 0.5 * 400 / 300

    critical = metrics.critical_batch_size(runs(rows)).set_index("optimizer")
    assert critical.loc["knee", "critical_batch_size"] == 256  # one doubling into the flat part
    assert not critical.loc["knee", "at_largest"]
    assert critical.loc["perfect", "critical_batch_size"] == 256
    assert critical.loc["perfect", "at_largest"]
    assert critical.loc["late", "smallest_batch_size"] == 64
    assert critical.loc["late", "critical_batch_size"] == 128
    assert math.isnan(critical.loc["never", "critical_batch_size"])
    strict = metrics.critical_batch_size(runs(rows), tolerance=1.5).set_index("optimizer")
    assert strict.loc["knee", "critical_batch_size"] == 128
    with pytest.raises(ValueError):
        metrics.critical_batch_size(runs(rows), tolerance=1.0)


def test_metrics_accept_an_empty_table():
    empty = runs([])
    for function in (metrics.steps_to_target_summary, metrics.robustness, metrics.lr_sensitivity,
                     metrics.default_vs_tuned, metrics.batch_size_scaling,
                     metrics.critical_batch_size):
        assert function(empty).empty
    assert metrics.performance_profiles(empty).empty


def test_metrics_on_real_records(tmp_path):
    from curvebench.harness import run
    from curvebench.problems import Budget
    from curvebench.store import runs_dataframe

    records = [run(problem="synthetic-linreg", optimizer="sgd", hyperparameters={"lr": lr},
                   budget=Budget(max_steps=5), seed=0) for lr in (0.01, 0.1)]
    df = runs_dataframe(records)
    assert len(metrics.steps_to_target_summary(df)) == 1
    assert metrics.robustness(df)["n_configs"].iloc[0] == 2
