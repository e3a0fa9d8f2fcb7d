"""Study metrics over a runs DataFrame: time-to-target, robustness, sensitivity, profiles, scaling.

Every function takes the DataFrame of :func:`curvebench.store.runs_dataframe` (one row per run;
columns ``problem``, ``optimizer``, ``seed``, ``batch_size``, ``status``, ``steps_to_target``,
``seconds_to_target``, ``hp.<name>``, ``final_<metric>``, ...) and returns a new DataFrame.

Conventions shared by all functions:

* A *group* is one ``problem × optimizer × batch_size``.
* A *configuration* is one assignment of the ``hp.<name>`` columns inside a group; its runs
  differ only in ``seed``.
* A run that did not reach the target within its budget (``steps_to_target`` is NaN: status
  ``budget``, ``diverged`` or ``error``) counts as **+∞** steps and seconds to target. Medians are
  taken with these infinities, so a configuration's median is finite exactly when more than half
  of its seeds reached the target (for an even number of seeds: when the two middle order
  statistics are finite). ``np.inf`` in an output means "not reached".
* The *median over seeds* of a configuration is its score; the *best* configuration of a group is
  the one with the smallest score (ties broken by the order of the hyperparameter values).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from curvebench.formatting import configuration_label
from curvebench.spaces import Choice, LogUniform, Uniform

__all__ = [
    "GROUP",
    "hyperparameter_columns",
    "best_configuration",
    "config_medians",
    "configuration_order",
    "steps_to_target_summary",
    "robustness",
    "lr_sensitivity",
    "default_vs_tuned",
    "performance_profiles",
    "batch_size_scaling",
    "critical_batch_size",
]

#: The columns that define a group.
GROUP: tuple[str, ...] = ("problem", "optimizer", "batch_size")

Measure = Literal["steps", "seconds"]


def hyperparameter_columns(df: pd.DataFrame) -> list[str]:
    """The ``hp.<name>`` columns of ``df``, sorted."""
    return sorted(c for c in df.columns if c.startswith("hp."))


def config_medians(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: the median over seeds of steps and seconds to target.

    For configuration ``c`` with seeds ``s = 1..n`` and steps-to-target ``T_{c,s}`` (``+∞`` when
    not reached), ``median_steps = median_s T_{c,s}``; likewise ``median_seconds``.
    ``reached_fraction = |{s : T_{c,s} < ∞}| / n``.

    Args:
        df: runs DataFrame.

    Returns:
        Columns ``problem, optimizer, batch_size``, the ``hp.<name>`` columns that are set for
        the group, ``n_seeds``, ``reached_fraction``, ``median_steps``, ``median_seconds``,
        ``hyperparameters`` (a ``name=value`` string). Hyperparameter columns not used by an
        optimizer are NaN.
    """
    table = _config_table(df)
    return table.drop(columns=["_steps", "_seconds", "_final", "_order"])


def steps_to_target_summary(
    df: pd.DataFrame,
    *,
    confidence: float = 0.95,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Best and median steps- and seconds-to-target per problem × optimizer × batch size.

    With ``m_c = median_s T_{c,s}`` the median over seeds of configuration ``c``:

    * ``best_steps = min_c m_c`` (the tuned optimizer), attained by ``c* = argmin_c m_c``;
    * ``median_steps = median_c m_c`` (a typical configuration of the sweep);
    * ``best_steps_low, best_steps_high``: percentile-bootstrap confidence interval of
      ``median_s T_{c*,s}`` over seeds: ``n_bootstrap`` resamples of ``c*``'s seeds drawn with
      replacement by ``numpy.random.default_rng(seed)``, the median of each resample, and the
      ``(1-confidence)/2`` and ``(1+confidence)/2`` empirical quantiles (``inverted_cdf``, i.e.
      order statistics, so ``+∞`` never becomes NaN). The interval accounts for seed noise only,
      not for the selection of ``c*``.
    * the same for seconds (``best_seconds`` has its own argmin ``c*``).

    Args:
        df: runs DataFrame.
        confidence: coverage of the interval, in ``(0, 1)``.
        n_bootstrap: number of bootstrap resamples.
        seed: seed of the bootstrap generator (results are reproducible).

    Returns:
        One row per group: ``problem, optimizer, batch_size, n_configs, n_runs,
        reached_fraction`` (of all runs), ``best_steps, best_steps_low, best_steps_high,
        median_steps, best_seconds, best_seconds_low, best_seconds_high, median_seconds,
        best_hyperparameters`` (of the steps argmin).

    Raises:
        ValueError: ``confidence`` outside ``(0, 1)`` or ``n_bootstrap < 1``.

    References:
        Efron & Tibshirani 1993, *An Introduction to the Bootstrap* (percentile interval).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    quantiles = ((1 - confidence) / 2, (1 + confidence) / 2)
    table = _config_table(df)
    rows = []
    for key, configs in _groups(table):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _stable_hash(key)]))
        runs = np.concatenate(configs["_steps"].to_list())
        row: dict[str, Any] = {**key, "n_configs": len(configs), "n_runs": len(runs),
                               "reached_fraction": float(np.isfinite(runs).mean())}
        for measure in ("steps", "seconds"):
            medians = configs[f"median_{measure}"].to_numpy(dtype=float)
            best = _best(configs, measure)
            low, high = _bootstrap_median(configs[f"_{measure}"].iloc[best], rng=rng,
                                          n_bootstrap=n_bootstrap, quantiles=quantiles)
            row[f"best_{measure}"] = float(medians[best])
            row[f"best_{measure}_low"] = low
            row[f"best_{measure}_high"] = high
            row[f"median_{measure}"] = float(np.median(medians))
            if measure == "steps":
                row["best_hyperparameters"] = (configs["hyperparameters"].iloc[best]
                                               if math.isfinite(medians[best]) else "—")
        rows.append(row)
    columns = [*GROUP, "n_configs", "n_runs", "reached_fraction",
               "best_steps", "best_steps_low", "best_steps_high", "median_steps",
               "best_seconds", "best_seconds_low", "best_seconds_high", "median_seconds",
               "best_hyperparameters"]
    return pd.DataFrame(rows, columns=columns)


def robustness(
    df: pd.DataFrame,
    *,
    optimizer_specs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Fraction of the swept hyperparameter space (by log volume) that reaches the target.

    A configuration ``c``'s success is ``r_c = reached_fraction`` (the fraction of its seeds that
    reached the target within budget; 0 or 1 with one seed). Robustness of a group is the
    volume-weighted mean ``R = Σ_c w_c r_c / Σ_c w_c``.

    Weights ``w_c``. The *swept* dimensions are the ``hp.<name>`` columns with more than one
    value in the group; each gets a *scale*: ``log`` for a ``LogUniform``/``IntLogUniform``
    search space in the optimizer's spec (or, without a spec entry, for numeric values that are
    all positive and span more than a factor of 10), ``linear`` for ``Uniform`` (or other
    numeric values), ``categorical`` for ``Choice``, booleans and strings. Coordinates are
    ``log(v)``, ``v`` or the category index.

    * **Grid** (the configurations are the full Cartesian product of the per-dimension value
      sets): ``w_c = Π_d ℓ_d(c_d)``, where ``ℓ_d(v)`` is the length of ``v``'s 1-D Voronoi cell
      among the sorted values ``x_1 < … < x_n`` of dimension ``d`` in its coordinates:
      ``ℓ(x_i) = (x_{i+1} - x_{i-1}) / 2``, with the end cells mirrored
      (``ℓ(x_1) = x_2 - x_1``, ``ℓ(x_n) = x_n - x_{n-1}``) and ``ℓ = 1`` for categorical
      dimensions. So a uniform log-grid weighs all its points equally, and a non-uniform grid
      weighs each point by the log-interval it represents; the space measured is the grid's
      hull widened by half a spacing at each end.
    * **Samples** (anything else, e.g. Sobol/Halton draws in two or more dimensions):
      ``w_c = 1`` — the Monte-Carlo estimate of the volume fraction, unbiased for points drawn
      uniformly in the log/linear coordinates of the space. (In one dimension a set of samples
      is always a "grid" and gets Voronoi weights, which is the better estimator there.)

    A group with one configuration has ``R = r_c``.

    Args:
        df: runs DataFrame.
        optimizer_specs: ``name -> OptimizerSpec`` (or the records' description of it,
            :class:`curvebench.records.RecordedOptimizer`) giving each hyperparameter's scale;
            names not in it, or ``None``, follow the value rule above. Metrics never read the
            live registry: a report of old runs does not change when the code does.

    Returns:
        One row per group: ``problem, optimizer, batch_size, n_configs, swept`` (comma-separated
        names), ``design`` (``grid`` or ``samples``), ``robustness`` in ``[0, 1]``,
        ``reached_configs`` (configurations with ``r_c > 0``).

    References:
        Gargiani, Zanelli, Diehl & Hutter 2020, "On the promise of the stochastic generalized
        Gauss-Newton method for training DNNs" (SGN's robustness to its hyperparameters);
        Schmidt, Schneider & Hennig 2021 (Crowded Valley) on tuning budgets.
    """
    table = _config_table(df)
    rows = []
    for key, configs in _groups(table):
        spec = _spec(key["optimizer"], optimizer_specs)
        columns = [c for c in hyperparameter_columns(configs) if configs[c].notna().any()]
        swept = [c for c in columns if configs[c].nunique(dropna=False) > 1]
        sizes = [configs[c].nunique(dropna=False) for c in swept]
        grid = len(swept) <= 1 or len(configs) == math.prod(sizes)
        weights = np.ones(len(configs))
        if grid:
            for column in swept:
                scale = _scale(spec, column.removeprefix("hp."), configs[column])
                weights *= _voronoi_lengths(configs[column], scale)
        success = configs["reached_fraction"].to_numpy(dtype=float)
        rows.append({**key, "n_configs": len(configs),
                     "swept": ",".join(c.removeprefix("hp.") for c in swept),
                     "design": "grid" if grid else "samples",
                     "robustness": float(np.sum(weights * success) / np.sum(weights)),
                     "reached_configs": int(np.sum(success > 0))})
    columns = [*GROUP, "n_configs", "swept", "design", "robustness", "reached_configs"]
    return pd.DataFrame(rows, columns=columns)


def lr_sensitivity(
    df: pd.DataFrame,
    *,
    hyperparameter: str = "lr",
    tolerance: float = 2.0,
) -> pd.DataFrame:
    """Steps-to-target against the learning rate, relative to the best learning rate.

    For each group and each value ``η`` of ``hp.<hyperparameter>``, ``S(η) = min_c m_c`` over
    the configurations with that value (a profile over the other hyperparameters; ``m_c`` is the
    median over seeds). With ``η* = argmin_η S(η)``:

    * ``relative_steps = S(η) / S(η*)`` (``+∞`` when ``η`` never reaches the target; NaN for
      every row when no ``η`` does);
    * ``log10_ratio = log10(η / η*)``;
    * ``within_tolerance = relative_steps ≤ tolerance``;
    * ``width_decades``: per group, ``log10(η_hi / η_lo)`` where ``[η_lo, η_hi]`` is the
      contiguous run of swept values (in sorted order) containing ``η*`` that are all within
      tolerance — 0 when only ``η*`` is; NaN when no value reaches the target. A run that ends
      at the edge of the sweep is a lower bound on the true width.

    Args:
        df: runs DataFrame.
        hyperparameter: name of the learning-rate hyperparameter (without ``hp.``).
        tolerance: factor of the best steps still counted as "as good", ``≥ 1``.

    Returns:
        One row per group and ``η``: ``problem, optimizer, batch_size, value, best_value,
        log10_ratio, steps, relative_steps, within_tolerance, width_decades``. Groups without
        the hyperparameter are left out.

    Raises:
        ValueError: ``tolerance < 1``.
    """
    if not tolerance >= 1:
        raise ValueError(f"tolerance must be at least 1, got {tolerance}")
    column = f"hp.{hyperparameter}"
    table = _config_table(df)
    rows = []
    if column not in table.columns:
        return pd.DataFrame(rows, columns=_SENSITIVITY_COLUMNS)
    for key, configs in _groups(table):
        configs = configs[configs[column].notna()]
        if configs.empty:
            continue
        profile = configs.groupby(column, sort=True)["median_steps"].min()
        values = profile.index.to_numpy(dtype=float)
        steps = profile.to_numpy(dtype=float)
        best = int(np.argmin(steps))
        reached = math.isfinite(steps[best])
        relative = steps / steps[best] if reached else np.full(len(steps), np.nan)
        within = relative <= tolerance
        if reached:
            lo = hi = best
            while lo > 0 and within[lo - 1]:
                lo -= 1
            while hi < len(values) - 1 and within[hi + 1]:
                hi += 1
            width = float(np.log10(values[hi] / values[lo]))
        else:
            width = math.nan
        best_value = float(values[best]) if reached else math.nan
        for value, step, rel, ok in zip(values, steps, relative, within, strict=True):
            rows.append({**key, "value": float(value), "best_value": best_value,
                         "log10_ratio": float(np.log10(value / best_value)),
                         "steps": float(step), "relative_steps": float(rel),
                         "within_tolerance": bool(ok), "width_decades": width})
    return pd.DataFrame(rows, columns=_SENSITIVITY_COLUMNS)


def default_vs_tuned(
    df: pd.DataFrame,
    *,
    optimizer_specs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Gain of tuning over the optimizer's default hyperparameters (Crowded Valley).

    With ``m_c`` the median over seeds, ``d`` the configuration equal to the optimizer's
    defaults (``OptimizerSpec.defaults``; floats compared with relative tolerance 1e-9) and
    ``c*`` the best configuration: ``default_steps = m_d``, ``tuned_steps = m_{c*}`` and
    ``steps_gain = m_d / m_{c*} ≥ 1`` (``+∞`` when the defaults never reach the target but some
    configuration does; NaN when none does or the default configuration was not run); likewise
    for seconds.

    Args:
        df: runs DataFrame.
        optimizer_specs: ``name -> OptimizerSpec`` (or
            :class:`curvebench.records.RecordedOptimizer`, from the records) for the defaults;
            a group without one (or ``None``) has no default configuration (NaN gains).

    Returns:
        One row per group: ``problem, optimizer, batch_size, has_default, default_steps,
        tuned_steps, steps_gain, default_seconds, tuned_seconds, seconds_gain,
        tuned_hyperparameters``.

    References:
        Schmidt, Schneider & Hennig 2021, "Descending through a crowded valley —
        benchmarking deep learning optimizers" (ICML).
    """
    table = _config_table(df)
    rows = []
    for key, configs in _groups(table):
        spec = _spec(key["optimizer"], optimizer_specs)
        is_default = np.zeros(len(configs), dtype=bool)
        if spec is not None:
            is_default = np.array([_matches(row, spec.defaults) for _, row in configs.iterrows()])
        row: dict[str, Any] = {**key, "has_default": bool(is_default.any())}
        for measure in ("steps", "seconds"):
            medians = configs[f"median_{measure}"].to_numpy(dtype=float)
            best = _best(configs, measure)
            tuned = float(medians[best])
            default = float(medians[np.argmax(is_default)]) if is_default.any() else math.nan
            unknown = not math.isfinite(tuned) or math.isnan(default)
            gain = math.nan if unknown else default / tuned
            row[f"default_{measure}"] = default
            row[f"tuned_{measure}"] = tuned
            row[f"{measure}_gain"] = gain
            if measure == "steps":
                row["tuned_hyperparameters"] = (configs["hyperparameters"].iloc[best]
                                                if math.isfinite(tuned) else "—")
        rows.append(row)
    columns = [*GROUP, "has_default", "default_steps", "tuned_steps", "steps_gain",
               "default_seconds", "tuned_seconds", "seconds_gain", "tuned_hyperparameters"]
    return pd.DataFrame(rows, columns=columns)


def performance_profiles(
    df: pd.DataFrame,
    *,
    measure: Measure = "steps",
    taus: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Dolan–Moré performance profiles over problems, in steps or seconds to target.

    An *instance* ``p`` is a ``problem × batch_size``. The cost of optimizer ``s`` on ``p`` is
    its tuned time to target ``t_{p,s} = min_c m_c`` (best configuration, median over seeds;
    ``+∞`` when not reached or not run). With ``r_{p,s} = t_{p,s} / min_{s'} t_{p,s'}``
    (``+∞`` when no optimizer reaches the target on ``p``), the profile is

        ``ρ_s(τ) = |{p : r_{p,s} ≤ τ}| / |P|``,

    the fraction of instances optimizer ``s`` solves within a factor ``τ`` of the fastest.
    ``ρ_s(1)`` is the fraction of wins (ties count for every tied optimizer).

    Args:
        df: runs DataFrame.
        measure: ``"steps"`` (``steps_to_target``) or ``"seconds"`` (``seconds_to_target``).
        taus: the ``τ ≥ 1`` at which to evaluate; default 100 log-spaced values from 1 to
            ``max(4, largest finite ratio)``.

    Returns:
        Index ``tau`` (float, increasing), one column per optimizer (sorted), values in
        ``[0, 1]``.

    Raises:
        ValueError: unknown ``measure`` or a ``τ < 1``.

    References:
        Dolan & Moré 2002, "Benchmarking optimization software with performance profiles";
        Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms" (AlgoPerf).
    """
    if measure not in ("steps", "seconds"):
        raise ValueError(f"measure must be 'steps' or 'seconds', got {measure!r}")
    table = _config_table(df)
    optimizers = sorted(table["optimizer"].unique()) if len(table) else []
    if not optimizers:
        return pd.DataFrame(index=pd.Index([], name="tau", dtype=float))
    costs = (table.groupby(["problem", "batch_size", "optimizer"])[f"median_{measure}"].min()
             .unstack("optimizer").reindex(columns=optimizers).fillna(np.inf))
    times = costs.to_numpy(dtype=float)
    fastest = times.min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(np.isfinite(fastest) & np.isfinite(times), times / fastest, np.inf)
    if taus is None:
        finite = ratios[np.isfinite(ratios)]
        top = max(4.0, float(finite.max()) if finite.size else 1.0)
        tau_values = np.geomspace(1.0, top, 100)
    else:
        tau_values = np.asarray(sorted(float(t) for t in taus))
        if tau_values.size and tau_values[0] < 1:
            raise ValueError(f"performance-profile factors must be ≥ 1, got {tau_values[0]}")
    fractions = (ratios[None, :, :] <= tau_values[:, None, None] * (1 + 1e-12)).mean(axis=1)
    return pd.DataFrame(fractions, index=pd.Index(tau_values, name="tau"), columns=optimizers)


def batch_size_scaling(df: pd.DataFrame) -> pd.DataFrame:
    """Steps-to-target against batch size per problem × optimizer, with perfect scaling.

    For each batch size ``B``, ``S(B) = min_c m_c`` (tuned separately at every batch size, as in
    Shallue et al. 2018). With ``B_0`` the smallest batch size that reaches the target,
    perfect scaling is ``S_perfect(B) = S(B_0) · B_0 / B`` (doubling the batch halves the steps)
    and ``efficiency = S_perfect(B) / S(B)`` (1 = perfect scaling, ½ = one doubling too many in
    the flat regime). ``examples = S(B) · B`` is the number of training examples processed.

    Args:
        df: runs DataFrame.

    Returns:
        One row per ``problem × optimizer × batch_size``, sorted: ``problem, optimizer,
        batch_size, steps, seconds, examples, perfect_steps, efficiency,
        best_hyperparameters``; ``steps`` is ``+∞`` and efficiency 0 where the target is not
        reached; ``perfect_steps`` and ``efficiency`` are NaN when no batch size reaches it or
        for ``B < B_0``.

    References:
        Shallue et al. 2018/2019, "Measuring the effects of data parallelism on neural network
        training" (JMLR); Zhang et al. 2019, "Which algorithmic choices matter at which batch
        sizes?" (NeurIPS).
    """
    table = _config_table(df)
    rows = []
    for (problem, optimizer), curve in table.groupby(["problem", "optimizer"], sort=True):
        points = []
        for batch_size, configs in curve.groupby("batch_size", sort=True):
            medians = configs["median_steps"].to_numpy(dtype=float)
            best = _best(configs, "steps")
            points.append({"problem": problem, "optimizer": optimizer,
                           "batch_size": int(batch_size), "steps": float(medians[best]),
                           "seconds": float(configs["median_seconds"].min()),
                           "best_hyperparameters": (configs["hyperparameters"].iloc[best]
                                                    if math.isfinite(medians[best]) else "—")})
        reaching = [p for p in points if math.isfinite(p["steps"])]
        base = reaching[0] if reaching else None
        for point in points:
            point["examples"] = point["steps"] * point["batch_size"]
            if base is None or point["batch_size"] < base["batch_size"]:
                point["perfect_steps"] = point["efficiency"] = math.nan
            else:
                perfect = base["steps"] * base["batch_size"] / point["batch_size"]
                point["perfect_steps"] = perfect
                point["efficiency"] = perfect / point["steps"]  # 0 when not reached (∞ steps)
            rows.append(point)
    columns = ["problem", "optimizer", "batch_size", "steps", "seconds", "examples",
               "perfect_steps", "efficiency", "best_hyperparameters"]
    return pd.DataFrame(rows, columns=columns)


def critical_batch_size(df: pd.DataFrame, *, tolerance: float = 2.0) -> pd.DataFrame:
    """Estimate the critical batch size: where doubling the batch stops halving the steps.

    Estimator. With the curve of :func:`batch_size_scaling` (sorted batch sizes
    ``B_0 < B_1 < …`` from the smallest one that reaches the target), the critical batch size
    is the largest ``B_k`` such that every ``B_j ≤ B_k`` is within ``tolerance`` of perfect
    scaling from ``B_0``:

        ``B_crit = max{B_k : S(B_j) ≤ tolerance · S(B_0) · B_0 / B_j  for all j ≤ k}``,

    i.e. ``efficiency ≥ 1 / tolerance`` on the whole prefix. With ``tolerance = 2`` a curve that
    scales perfectly up to ``B`` and is flat beyond gets ``B_crit = 2B`` (one doubling into the
    flat regime costs exactly a factor 2), so the estimate is an upper bracket of the knee
    resolved to the measured grid. ``at_largest`` flags a ``B_crit`` equal to the largest
    batch size measured (a lower bound only: the grid ends before scaling stops).

    Args:
        df: runs DataFrame.
        tolerance: allowed factor above perfect scaling, ``> 1``.

    Returns:
        One row per ``problem × optimizer``: ``problem, optimizer, smallest_batch_size,
        steps_at_smallest, critical_batch_size, steps_at_critical, at_largest,
        n_batch_sizes``; ``critical_batch_size`` is NaN when no batch size reaches the target.

    Raises:
        ValueError: ``tolerance ≤ 1``.

    References:
        Shallue et al. 2019 (JMLR), regimes of perfect scaling, diminishing returns and maximal
        data parallelism; Zhang et al. 2019 (NeurIPS), critical batch size and its dependence
        on the optimizer (preconditioning raises it); McCandlish et al. 2018, "An empirical model
        of large-batch training".
    """
    if not tolerance > 1:
        raise ValueError(f"tolerance must be greater than 1, got {tolerance}")
    scaling = batch_size_scaling(df)
    rows = []
    for (problem, optimizer), curve in scaling.groupby(["problem", "optimizer"], sort=True):
        curve = curve.sort_values("batch_size")
        row: dict[str, Any] = {"problem": problem, "optimizer": optimizer,
                               "smallest_batch_size": math.nan, "steps_at_smallest": math.nan,
                               "critical_batch_size": math.nan, "steps_at_critical": math.nan,
                               "at_largest": False, "n_batch_sizes": len(curve)}
        scaled = curve[curve["efficiency"].notna()]
        if not scaled.empty:
            row["smallest_batch_size"] = int(scaled["batch_size"].iloc[0])
            row["steps_at_smallest"] = float(scaled["steps"].iloc[0])
            for _, point in scaled.iterrows():
                if point["efficiency"] < 1 / tolerance - 1e-12:
                    break
                row["critical_batch_size"] = int(point["batch_size"])
                row["steps_at_critical"] = float(point["steps"])
            row["at_largest"] = row["critical_batch_size"] == int(curve["batch_size"].max())
        rows.append(row)
    columns = ["problem", "optimizer", "smallest_batch_size", "steps_at_smallest",
               "critical_batch_size", "steps_at_critical", "at_largest", "n_batch_sizes"]
    return pd.DataFrame(rows, columns=columns)


_SENSITIVITY_COLUMNS = [*GROUP, "value", "best_value", "log10_ratio", "steps", "relative_steps",
                        "within_tolerance", "width_decades"]


def _to_target(runs: pd.DataFrame, column: str) -> np.ndarray:
    """Times to target with +∞ for runs that did not reach it."""
    values = pd.to_numeric(runs[column], errors="coerce").to_numpy(dtype=float)
    reached = pd.to_numeric(runs["steps_to_target"], errors="coerce").notna().to_numpy()
    return np.where(reached & ~np.isnan(values), values, np.inf)


def _config_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per-configuration rows with the per-seed times kept in ``_steps``/``_seconds``."""
    hp_columns = hyperparameter_columns(df)
    rows: list[dict[str, Any]] = []
    if len(df):
        for key, group in df.groupby(list(GROUP), sort=True):
            used = [c for c in hp_columns if group[c].notna().any()]
            swept = [c for c in used if group[c].nunique(dropna=False) > 1]
            parts = ([((), group)] if not used
                     else group.groupby(used, sort=True, dropna=False))
            for values, runs in parts:
                values = values if isinstance(values, tuple) else (values,)
                hps = dict(zip(used, values, strict=True))
                steps = _to_target(runs, "steps_to_target")
                seconds = _to_target(runs, "seconds_to_target")
                label = configuration_label({c: hps[c] for c in swept},
                                            empty="single config")
                rows.append({**dict(zip(GROUP, key, strict=True)), **hps,
                             "n_seeds": len(runs),
                             "reached_fraction": float(np.isfinite(steps).mean()),
                             "median_steps": float(np.median(steps)),
                             "median_seconds": float(np.median(seconds)),
                             "hyperparameters": label, "_steps": steps, "_seconds": seconds,
                             "_final": _median_final_loss(runs),
                             "_order": configuration_order(hps)})
    columns = [*GROUP, *hp_columns, "n_seeds", "reached_fraction", "median_steps",
               "median_seconds", "hyperparameters", "_steps", "_seconds", "_final", "_order"]
    return pd.DataFrame(rows, columns=columns)


def _median_final_loss(runs: pd.DataFrame) -> float:
    """Median over seeds of the final train loss (missing or NaN counts ``+∞``)."""
    if "final_train_loss" not in runs:
        return math.inf
    return float(np.median(runs["final_train_loss"].astype(float).fillna(np.inf)))


def configuration_order(hyperparameters: Mapping[str, Any]) -> str:
    """A canonical string of a configuration's hyperparameters, the last tie-breaker of
    :func:`best_configuration` (``hp.`` prefixes and unset values ignored)."""
    values = {str(k).removeprefix("hp."): v.item() if isinstance(v, np.generic) else v
              for k, v in hyperparameters.items()}
    items = sorted((k, v) for k, v in values.items()
                   if not (isinstance(v, float) and math.isnan(v)))
    return " ".join(f"{k}={v!r}" for k, v in items)


def best_configuration(medians: Sequence[float], final_losses: Sequence[float],
                       orders: Sequence[str]) -> int:
    """Position of the best configuration of one problem × optimizer × batch size.

    The one definition of "best" used by the tables, the leaderboard and the report's curves:
    the smallest median over seeds of time to target (``+∞`` when not reached); ties by the
    smaller median final train loss (``+∞`` when missing); then by
    :func:`configuration_order`, so the choice never depends on row order.

    Args:
        medians: per configuration, the median time to target (steps or seconds).
        final_losses: per configuration, the median final train loss.
        orders: per configuration, :func:`configuration_order` of its hyperparameters.
    """
    medians = np.asarray(medians, dtype=float)
    finals = np.nan_to_num(np.asarray(final_losses, dtype=float), nan=np.inf)
    keys = [(m if not math.isnan(m) else math.inf, f, o)
            for m, f, o in zip(medians, finals, orders, strict=True)]
    return min(range(len(keys)), key=keys.__getitem__)


def _best(configs: pd.DataFrame, measure: str) -> int:
    return best_configuration(configs[f"median_{measure}"], configs["_final"], configs["_order"])


def _groups(table: pd.DataFrame):
    """``(group key dict, configurations)`` per problem × optimizer × batch size."""
    if not len(table):
        return
    for key, configs in table.groupby(list(GROUP), sort=True):
        yield dict(zip(GROUP, key, strict=True)), configs.reset_index(drop=True)


def _stable_hash(key: Mapping[str, Any]) -> int:
    import zlib

    return zlib.crc32(repr(sorted((k, str(v)) for k, v in key.items())).encode())


def _bootstrap_median(values: np.ndarray, *, rng: np.random.Generator, n_bootstrap: int,
                      quantiles: tuple[float, float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    indices = rng.integers(0, len(values), size=(n_bootstrap, len(values)))
    medians = np.median(values[indices], axis=1)
    low, high = np.quantile(medians, quantiles, method="inverted_cdf")
    return float(low), float(high)


def _spec(name: str, specs: Mapping[str, Any] | None) -> Any | None:
    return None if specs is None else specs.get(name)


Scale = Literal["log", "linear", "categorical"]


def _scale(spec: Any | None, name: str, values: pd.Series) -> Scale:
    """The coordinate scale of one hyperparameter (see :func:`robustness`)."""
    space = getattr(spec, "search_space", {}).get(name) if spec is not None else None
    if isinstance(space, LogUniform):  # includes IntLogUniform
        return "log"
    if isinstance(space, Uniform):
        return "linear"
    if isinstance(space, Choice):
        return "categorical"
    present = values.dropna()
    if present.map(lambda v: isinstance(v, bool | str | np.bool_)).any():
        return "categorical"
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.isna().any():
        return "categorical"
    if (numbers > 0).all() and numbers.max() > 10 * numbers.min():
        return "log"
    return "linear"


def _voronoi_lengths(values: pd.Series, scale: Scale) -> np.ndarray:
    """Per-row length of the value's 1-D Voronoi cell (mirrored ends) in its coordinates."""
    if scale == "categorical":
        return np.ones(len(values))
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    unique = np.unique(numbers)
    coords = np.log(unique) if scale == "log" else unique
    if len(coords) == 1:
        lengths = np.ones(1)
    else:
        padded = np.concatenate([[2 * coords[0] - coords[1]], coords,
                                 [2 * coords[-1] - coords[-2]]])
        lengths = (padded[2:] - padded[:-2]) / 2
    return lengths[np.searchsorted(unique, numbers)]


def _matches(row: pd.Series, defaults: Mapping[str, Any]) -> bool:
    for name, default in defaults.items():
        column = f"hp.{name}"
        if column not in row.index or pd.isna(row[column]):
            continue
        value = row[column]
        if isinstance(default, float) and not isinstance(default, bool):
            if not math.isclose(float(value), default, rel_tol=1e-9, abs_tol=1e-300):
                return False
        elif value != default:
            return False
    return True
