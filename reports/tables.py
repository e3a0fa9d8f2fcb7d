"""The numbers behind every report figure, as pandas DataFrames (also exported as CSV).

Tables here are shared by the HTML site, ``curvebench report --format md`` and
``curvebench show`` (see :func:`study_tables` and :func:`render_tables`), so the terminal, the
Markdown and the web page show the same values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from tabulate import tabulate

from curvebench import metrics
from curvebench.records import RunRecord
from curvebench.reports.study import Study
from curvebench.timing import PHASES

__all__ = [
    "GROUP",
    "run_summary",
    "leaderboard",
    "leaderboard_display",
    "best_arms",
    "curve_bands",
    "phase_breakdown",
    "phase_breakdown_display",
    "default_vs_tuned_display",
    "diagnostic_columns",
    "heatmap_table",
    "HEATMAP_MAX_VALUES",
    "provenance",
    "study_tables",
    "render_tables",
    "tables_text",
    "format_interval",
]

#: One leaderboard row: an optimizer at one batch size on one problem.
GROUP = list(metrics.GROUP)

TableFormat = Literal["text", "md"]


def run_summary(study: Study) -> pd.DataFrame:
    """One row per run, the same columns as ``curvebench run`` prints."""
    from curvebench.cli import summary_rows

    headers, rows = summary_rows(list(study.records))
    return pd.DataFrame(rows, columns=headers)


def leaderboard(study: Study, *, n_bootstrap: int = 1000) -> pd.DataFrame:
    """Per problem × optimizer × batch size: time to target with CIs, final metric, robustness.

    Columns of :func:`curvebench.metrics.steps_to_target_summary`, plus ``robustness``
    (:func:`curvebench.metrics.robustness`), ``target`` (``metric ≥ value``) and
    ``best_final`` (the best configuration's median over seeds of the final value of the target
    metric, best in the target's direction).
    """
    runs = study.runs
    if runs.empty:
        return pd.DataFrame(columns=[*GROUP, "n_runs"])
    summary = metrics.steps_to_target_summary(runs, n_bootstrap=n_bootstrap)
    robust = metrics.robustness(runs)[[*GROUP, "robustness", "swept"]]
    table = summary.merge(robust, on=GROUP, how="left")
    finals = []
    for keys, group in runs.groupby(GROUP, sort=False):
        metric = group["target_metric"].iloc[0]
        column = f"final_{metric}"
        direction = _direction(study, group)
        if column not in group:
            best = math.nan
        else:
            per_arm = group.groupby("arm")[column].median()
            best = per_arm.min() if direction == "min" else per_arm.max()
        sign = "≤" if direction == "min" else "≥"
        finals.append((*keys, f"{metric} {sign} {group['target_value'].iloc[0]:g}", best))
    table = table.merge(pd.DataFrame(finals, columns=[*GROUP, "target", "best_final"]),
                        on=GROUP, how="left")
    return table.sort_values(GROUP, kind="stable").reset_index(drop=True)


def _direction(study: Study, group: pd.DataFrame) -> str:
    key = group["key"].iloc[0]
    for record in study.records:
        if record.config.key() == key:
            return str(record.target.get("direction", "min"))
    return "min"


def format_interval(value: float, low: float, high: float, spec: str = ".4g") -> str:
    """``"120 [95, 160]"``; ``"not reached"`` for ``+∞``; open ends as ``∞``."""
    if not np.isfinite(value):
        return "not reached" if value == np.inf else "—"
    ends = [format(v, spec) if np.isfinite(v) else ("∞" if v == np.inf else "?")
            for v in (low, high)]
    return f"{value:{spec}} [{ends[0]}, {ends[1]}]"


def _fmt(value: object, spec: str = ".4g") -> str:
    if value is None:
        return "—"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "not reached" if value > 0 else "-∞"
        return format(float(value), spec)
    return str(value)


def leaderboard_display(table: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard with formatted strings (one column per shown quantity)."""
    if table.empty or "best_steps" not in table:
        return pd.DataFrame(columns=["problem", "optimizer"])
    rows = []
    for row in table.itertuples(index=False):
        rows.append({
            "problem": row.problem,
            "optimizer": row.optimizer,
            "batch": int(row.batch_size),
            "configs": int(row.n_configs),
            "runs": int(row.n_runs),
            "reached": f"{row.reached_fraction:.0%}",
            "best steps→target [95% CI]": format_interval(
                row.best_steps, row.best_steps_low, row.best_steps_high),
            "best s→target [95% CI]": format_interval(
                row.best_seconds, row.best_seconds_low, row.best_seconds_high, ".3g"),
            "median steps over configs": _fmt(row.median_steps),
            "target": row.target,
            "best final value": _fmt(row.best_final),
            "robustness": _fmt(row.robustness, ".0%") if np.isfinite(row.robustness) else "—",
            "best hyperparameters": row.best_hyperparameters or "defaults",
        })
    return pd.DataFrame(rows)


def best_arms(runs: pd.DataFrame) -> pd.DataFrame:
    """The best configuration (``arm``) of every problem × optimizer × batch size.

    The best configuration has the smallest median over seeds of steps to target (a run that
    did not reach the target counts ``+∞``, as in :mod:`curvebench.metrics`); ties are broken
    by the smaller median final train loss, then by the hyperparameter values: the one
    definition of :func:`curvebench.metrics.best_configuration`, which the leaderboard uses too.

    Returns:
        One row per group: the ``GROUP`` columns, ``arm``, ``n_seeds``, ``median_steps``.
    """
    if runs.empty:
        return pd.DataFrame(columns=[*GROUP, "arm", "n_seeds", "median_steps"])
    hp_columns = metrics.hyperparameter_columns(runs)
    frame = runs.assign(
        _steps=runs["steps_to_target"].fillna(np.inf),
        _final=runs.get("final_train_loss", pd.Series(np.nan, index=runs.index)).fillna(np.inf),
        _order=[metrics.configuration_order(dict(zip(hp_columns, values, strict=True)))
                for values in runs[hp_columns].itertuples(index=False, name=None)],
    )
    per_arm = frame.groupby([*GROUP, "arm"], sort=True).agg(
        n_seeds=("seed", "size"), median_steps=("_steps", "median"), _final=("_final", "median"),
        _order=("_order", "first")).reset_index()
    chosen = [group.index[metrics.best_configuration(group["median_steps"], group["_final"],
                                                     group["_order"])]
              for _, group in per_arm.groupby(GROUP, sort=True)]
    return per_arm.loc[chosen].drop(columns=["_final", "_order"]).reset_index(drop=True)


def curve_bands(curves: pd.DataFrame, *, x: str, y: str, points: int = 150,
                log_x: bool = False) -> pd.DataFrame:
    """Median and interquartile band over seeds of ``y`` against ``x``, per configuration.

    Each run's curve is linearly interpolated onto a common grid of ``points`` values of ``x``
    (from the smallest to the largest ``x`` of the configuration's runs, log-spaced with
    ``log_x``); a run contributes only inside its own ``x`` range, so ``n`` says how many seeds
    a point rests on.

    Returns:
        Columns ``arm, x, median, q25, q75, n`` (only points with ``n ≥ 1``).
    """
    out = []
    if curves.empty or x not in curves or y not in curves:
        return pd.DataFrame(columns=["arm", "x", "median", "q25", "q75", "n"])
    for arm, group in curves.groupby("arm", sort=True):
        valid = group[np.isfinite(group[x]) & np.isfinite(group[y])]
        if log_x:
            valid = valid[valid[x] > 0]
        if valid.empty:
            continue
        low, high = valid[x].min(), valid[x].max()
        if log_x:
            grid = np.geomspace(low, high, points) if high > low else np.array([low])
        else:
            grid = np.linspace(low, high, points) if high > low else np.array([low])
        stacked = []
        for _, run in valid.groupby("key", sort=False):
            xs, ys = run[x].to_numpy(), run[y].to_numpy()
            order = np.argsort(xs, kind="stable")
            xs, ys = xs[order], ys[order]
            stacked.append(np.interp(grid, xs, ys, left=np.nan, right=np.nan))
        matrix = np.vstack(stacked)
        n = np.isfinite(matrix).sum(axis=0)
        keep = n > 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            q25, median, q75 = np.nanquantile(matrix[:, keep], [0.25, 0.5, 0.75], axis=0)
        out.append(pd.DataFrame({"arm": arm, "x": grid[keep], "median": median, "q25": q25,
                                 "q75": q75, "n": n[keep]}))
    if not out:
        return pd.DataFrame(columns=["arm", "x", "median", "q25", "q75", "n"])
    return pd.concat(out, ignore_index=True)


def phase_breakdown(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean seconds per step in each timed phase, per configuration (runs with steps only).

    Phases come in the order of :data:`curvebench.timing.PHASES`, then any others by name.

    ``seconds_per_step(phase) = Σ_runs phase seconds / Σ_runs steps``.

    Returns:
        One row per ``arm``, one column per phase, plus ``total`` and ``gradient_equivalents
        per step``.
    """
    present = {c.removeprefix("phase.") for c in runs.columns if c.startswith("phase.")}
    phases = [f"phase.{p}" for p in (*[p for p in PHASES if p in present],
                                     *sorted(present - set(PHASES)))]
    ran = runs[runs["steps_run"] > 0]
    if ran.empty or not phases:
        return pd.DataFrame(columns=["arm"])
    sums = ran.groupby("arm")[[*phases, "steps_run", "gradient_equivalents"]].sum(min_count=1)
    table = pd.DataFrame(index=sums.index)
    for phase in phases:
        table[phase.removeprefix("phase.")] = sums[phase].fillna(0.0) / sums["steps_run"]
    table["total"] = table.sum(axis=1)
    table["gradient_equivalents_per_step"] = sums["gradient_equivalents"] / sums["steps_run"]
    return table.reset_index()


def phase_breakdown_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`phase_breakdown` in milliseconds per step, three significant digits."""
    shown = pd.DataFrame({"configuration": table["arm"]})
    for column in table.columns:
        if column == "arm":
            continue
        if column == "gradient_equivalents_per_step":
            shown["gradient-equivalent passes per step"] = table[column].map(_fmt)
        else:
            shown[f"{column} (ms)"] = (table[column] * 1e3).map(lambda v: _fmt(v, ".3g"))
    return shown


def default_vs_tuned_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`curvebench.metrics.default_vs_tuned` with formatted values; a gain of ``+∞``
    (the defaults never reach the target but a tuned configuration does) reads ``∞``."""
    def gain(value: float) -> str:
        return "∞" if value == np.inf else _fmt(value, ".3g")

    rows = []
    for row in table.itertuples(index=False):
        rows.append({
            "problem": row.problem, "optimizer": row.optimizer, "batch": int(row.batch_size),
            "defaults run": "yes" if row.has_default else "no",
            "steps (defaults)": _fmt(row.default_steps), "steps (tuned)": _fmt(row.tuned_steps),
            "steps gain": gain(row.steps_gain),
            "s (defaults)": _fmt(row.default_seconds, ".3g"),
            "s (tuned)": _fmt(row.tuned_seconds, ".3g"), "seconds gain": gain(row.seconds_gain),
            "tuned hyperparameters": _fmt(row.tuned_hyperparameters),
        })
    return pd.DataFrame(rows)


#: History columns that are not optimizer diagnostics.
_NOT_DIAGNOSTICS = {"step", "seconds", "loss", "gradient_equivalents", "key", "arm"}


def diagnostic_columns(curves: pd.DataFrame) -> list[str]:
    """Per-step optimizer diagnostics present in ``curves`` (``step_info`` values such as
    damping or step size, and ``count_cg_iterations`` unless ``cg_iterations`` is reported
    as well), with at least one finite value."""
    names = []
    for column in curves.columns:
        if column in _NOT_DIAGNOSTICS:
            continue
        if column.startswith("count_") and column != "count_cg_iterations":
            continue
        if column.startswith("count_") and column.removeprefix("count_") in curves:
            continue  # the optimizer reports the value itself; its counter is the same
        if np.isfinite(pd.to_numeric(curves[column], errors="coerce")).any():
            names.append(column)
    return sorted(names)


#: A heatmap axis with more distinct values than this (sampled designs) is binned.
HEATMAP_MAX_VALUES = 10


def heatmap_table(runs: pd.DataFrame, *, rows: str, columns: str,
                  max_values: int = HEATMAP_MAX_VALUES) -> pd.DataFrame:
    """Reached fraction and median steps to target over a 2-D grid of two run columns.

    Every run with both values set falls into one cell; the cell's ``reached_fraction`` is the
    fraction of its runs that reached the target (over seeds and all other hyperparameters) and
    ``median_steps`` the median steps to target of those that did. An axis with more than
    ``max_values`` distinct values (random or quasi-random samples) is cut into
    ``max_values`` equal bins (in log space when all values are positive), each labelled by its
    geometric (or arithmetic) centre.

    Returns:
        Columns ``rows, columns`` (the two values or bin centres), ``runs``,
        ``reached_fraction``, ``median_steps``.
    """
    frame = runs.dropna(subset=[rows, columns])
    if frame.empty:
        return pd.DataFrame(columns=[rows, columns, "runs", "reached_fraction", "median_steps"])
    frame = frame.assign(**{name: _binned(pd.to_numeric(frame[name]), max_values)
                            for name in (rows, columns) if frame[name].nunique() > max_values})
    reached = frame["steps_to_target"].notna()
    table = frame.assign(_reached=reached).groupby([rows, columns]).agg(
        runs=("seed", "size"), reached_fraction=("_reached", "mean"),
        median_steps=("steps_to_target", "median"))
    return table.reset_index()


def _binned(values: pd.Series, bins: int) -> pd.Series:
    log = bool((values > 0).all())
    coordinates = np.log(values) if log else values
    edges = np.linspace(coordinates.min(), coordinates.max(), bins + 1)
    index = np.clip(np.searchsorted(edges, coordinates, side="right") - 1, 0, bins - 1)
    centres = (edges[:-1] + edges[1:]) / 2
    return pd.Series(np.exp(centres[index]) if log else centres[index], index=values.index)


def provenance(study: Study) -> pd.DataFrame:
    """Distinct environments of the study's runs: versions, device, git sha, with run counts
    and first/last start times."""
    rows = []
    for record in study.records:
        env = record.environment
        rows.append({
            "curvebench": env.get("curvebench"), "git sha": env.get("git_sha"),
            "python": env.get("python"), "torch": env.get("torch"), "numpy": env.get("numpy"),
            "device": env.get("device"), "device name": env.get("device_name"),
            "threads": env.get("threads"), "dtype": env.get("dtype"),
            "platform": env.get("platform"), "started_at": record.started_at,
        })
    if not rows:
        return pd.DataFrame(columns=["runs"])
    frame = pd.DataFrame(rows).astype(object).where(lambda f: f.notna(), "—").astype(str)
    keys = [c for c in frame.columns if c != "started_at"]
    table = frame.groupby(keys, sort=True).agg(
        runs=("started_at", "size"), first_run=("started_at", "min"),
        last_run=("started_at", "max"))
    return table.reset_index()


def study_tables(study: Study) -> list[tuple[str, pd.DataFrame]]:
    """The tables shown by ``curvebench show`` and ``curvebench report --format md``:
    the per-run summary and the leaderboard of every problem, as formatted strings."""
    tables: list[tuple[str, pd.DataFrame]] = [("Runs", run_summary(study))]
    board = leaderboard_display(leaderboard(study))
    for problem in study.problems():
        part = board[board["problem"] == problem].drop(columns="problem")
        tables.append((f"Leaderboard: {problem}", part))
    return tables


def render_tables(tables: Sequence[tuple[str, pd.DataFrame]], *, fmt: TableFormat) -> str:
    """Render titled tables for the terminal (``"text"``) or as Markdown (``"md"``)."""
    blocks = []
    for title, table in tables:
        cells = table.astype(str).values.tolist()
        headers = [str(c) for c in table.columns]
        if fmt == "md":
            cells = [[_md_cell(c) for c in row] for row in cells]
            headers = [_md_cell(c) for c in headers]
        body = tabulate(cells, headers=headers, tablefmt="github" if fmt == "md" else "simple",
                        disable_numparse=True)
        if fmt == "md":
            blocks.append(f"## {_md_cell(title)}\n\n{body}")
        else:
            blocks.append(f"{title}\n{'=' * len(title)}\n{body}")
    return "\n\n".join(blocks) + "\n"


def _md_cell(text: str) -> str:
    """Escape a user-supplied string for Markdown: HTML markup shows as text, pipes stay in
    their cell."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|"))


def tables_text(records: Sequence[RunRecord], *, fmt: TableFormat) -> str:
    """``curvebench show`` (``fmt="text"``) and ``report --format md`` (``fmt="md"``) output:
    :func:`study_tables` of ``records`` rendered by :func:`render_tables`."""
    return render_tables(study_tables(Study.from_records(records)), fmt=fmt)
