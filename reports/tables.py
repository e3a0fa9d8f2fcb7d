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
from curvebench.formatting import format_interval, target_label
from curvebench.formatting import format_number as _fmt
from curvebench.records import PHASES, RunRecord
from curvebench.reports.study import Study

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
    "method_table",
    "methods_display",
    "instance_label",
    "instances",
    "headline",
    "headline_display",
    "overall_summary",
    "stall_diagnostics",
    "STALL_FLOOR_FRACTION",
    "STALL_CG_RESIDUAL",
    "STALL_KINDS",
    "profile_table",
    "PROFILE_FACTORS",
    "backend_comparison",
    "backend_comparison_display",
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
    (:func:`curvebench.metrics.robustness` from the records alone: each hyperparameter's scale
    from the search space the runs recorded, never from the live registry), ``target``
    (``metric ≥ value``) and ``best_final`` (the median over seeds of the final value of the
    target metric of the best configuration, the one :func:`best_arms` names by
    :func:`curvebench.metrics.best_configuration`, as ``best_hyperparameters`` does).
    """
    runs = study.runs
    if runs.empty:
        return pd.DataFrame(columns=[*GROUP, "n_runs"])
    summary = metrics.steps_to_target_summary(runs, n_bootstrap=n_bootstrap)
    robust = metrics.robustness(runs, optimizer_specs=study.optimizers)[
        [*GROUP, "robustness", "swept"]]
    table = summary.merge(robust, on=GROUP, how="left")
    finals = []
    best_arm = best_arms(runs).set_index(GROUP)["arm"]
    for keys, group in runs.groupby(GROUP, sort=False):
        metric = group["target_metric"].iloc[0]
        column = f"final_{metric}"
        direction = _direction(study, group)
        arm = group["arm"] == best_arm.loc[keys]
        best = float(group.loc[arm, column].median()) if column in group else math.nan
        target = target_label(metric, direction, group["target_value"].iloc[0])
        finals.append((*keys, target, best))
    table = table.merge(pd.DataFrame(finals, columns=[*GROUP, "target", "best_final"]),
                        on=GROUP, how="left")
    return table.sort_values(GROUP, kind="stable").reset_index(drop=True)


def _direction(study: Study, group: pd.DataFrame) -> str:
    key = group["key"].iloc[0]
    for record in study.records:
        if record.config.key() == key:
            return str(record.target.get("direction", "min"))
    return "min"


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
            "final value (best config)": _fmt(row.best_final),
            "robustness": _fmt(row.robustness, ".0%"),
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
    a point rests on, and ``running`` how many had not stopped yet (``x`` at most their last
    point: those that had not started yet, e.g. after a slow first step, count as running).

    Returns:
        Columns ``arm, x, median, q25, q75, n, running`` (only points with ``n ≥ 1``).
    """
    out = []
    if curves.empty or x not in curves or y not in curves:
        return pd.DataFrame(columns=["arm", "x", "median", "q25", "q75", "n", "running"])
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
        stacked, ends = [], []
        for _, run in valid.groupby("key", sort=False):
            xs, ys = run[x].to_numpy(), run[y].to_numpy()
            order = np.argsort(xs, kind="stable")
            xs, ys = xs[order], ys[order]
            stacked.append(np.interp(grid, xs, ys, left=np.nan, right=np.nan))
            ends.append(xs[-1])
        matrix = np.vstack(stacked)
        n = np.isfinite(matrix).sum(axis=0)
        running = (grid[None, :] <= np.asarray(ends)[:, None]).sum(axis=0)
        keep = n > 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            q25, median, q75 = np.nanquantile(matrix[:, keep], [0.25, 0.5, 0.75], axis=0)
        out.append(pd.DataFrame({"arm": arm, "x": grid[keep], "median": median, "q25": q25,
                                 "q75": q75, "n": n[keep], "running": running[keep]}))
    if not out:
        return pd.DataFrame(columns=["arm", "x", "median", "q25", "q75", "n", "running"])
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
    the per-run summary, the leaderboard of every problem and, when the runs come from several
    backends, the backends side by side (:func:`backend_comparison`), as formatted strings;
    then the notes on what the records do not say (:attr:`Study.notes`), if any."""
    tables: list[tuple[str, pd.DataFrame]] = [("Runs", run_summary(study))]
    raw = leaderboard(study)
    board = leaderboard_display(raw)
    compared = backend_comparison_display(backend_comparison(study, raw))
    for problem in study.problems():
        part = board[board["problem"] == problem].drop(columns="problem")
        tables.append((f"Leaderboard: {problem}", part))
        if len(compared) and (compared["problem"] == problem).any():
            tables.append((f"Backends side by side: {problem}",
                           compared[compared["problem"] == problem].drop(columns="problem")))
    if study.notes:
        tables.append(("Notes", pd.DataFrame({"note": list(study.notes)})))
    return tables


def backend_comparison(study: Study, board: pd.DataFrame | None = None) -> pd.DataFrame:
    """The same optimizer run by several backends, side by side.

    For each problem × optimizer × batch size that more than one backend ran: one row per
    backend with the :func:`leaderboard` times to target (best configuration, bootstrap
    intervals over seeds), the measured cost of a step ``seconds_per_step = Σ seconds /
    Σ steps_run`` over the group's runs, and ``step_ratio``, that cost divided by the
    reference backend's (``torch`` when it ran, else the first by name).

    Args:
        study: the runs (``runs`` has ``method`` and ``backend`` columns).
        board: :func:`leaderboard` of ``study``, if already computed.

    Returns:
        Columns ``problem, method, batch_size, backend, optimizer`` (the label, e.g.
        ``"adam [jax]"``), the leaderboard's ``best_*`` columns, ``seconds_per_step``,
        ``step_ratio``; empty when one backend ran everything.
    """
    columns = ["problem", "method", "batch_size", "backend", "optimizer", "best_steps",
               "best_steps_low", "best_steps_high", "best_seconds", "best_seconds_low",
               "best_seconds_high", "seconds_per_step", "step_ratio"]
    if not study.several_backends or study.runs.empty:
        return pd.DataFrame(columns=columns)
    board = leaderboard(study) if board is None else board
    methods = method_table(board, study.runs)
    labels = study.runs[[*GROUP, "method", "backend"]].drop_duplicates(GROUP)
    table = methods.merge(labels, on=GROUP, how="left")
    several = table.groupby(["problem", "method", "batch_size"])["backend"].transform("nunique")
    table = table[several > 1].copy()

    def reference(group: pd.DataFrame) -> float:
        backends = sorted(group["backend"])
        chosen = "torch" if "torch" in backends else backends[0]
        return float(group.loc[group["backend"] == chosen, "seconds_per_step"].iloc[0])

    ratios = []
    for _, group in table.groupby(["problem", "method", "batch_size"], sort=False):
        base = reference(group)
        ratios.append(group["seconds_per_step"] / base)
    table["step_ratio"] = pd.concat(ratios) if ratios else []
    return (table[columns].sort_values(["problem", "method", "batch_size", "backend"])
            .reset_index(drop=True))


def backend_comparison_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`backend_comparison` with formatted strings."""
    shown = [{"problem": row.problem, "optimizer": row.method, "batch": int(row.batch_size),
              "backend": row.backend,
              "best steps→target [95% CI]": format_interval(
                  row.best_steps, row.best_steps_low, row.best_steps_high),
              "best s→target [95% CI]": format_interval(
                  row.best_seconds, row.best_seconds_low, row.best_seconds_high, ".3g"),
              "ms/step": _fmt(row.seconds_per_step * 1e3, ".3g"),
              "step ÷ reference step": _fmt(row.step_ratio, ".3g")}
             for row in table.itertuples()]
    return pd.DataFrame(shown, columns=["problem", "optimizer", "batch", "backend",
                                        "best steps→target [95% CI]", "best s→target [95% CI]",
                                        "ms/step", "step ÷ reference step"])


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


def method_table(board: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Every method on every problem instance (problem × batch size), fastest first.

    The :func:`leaderboard` columns (times to target with bootstrap intervals over seeds,
    robustness) plus the measured cost of a step over all the group's runs,
    ``seconds_per_step = Σ seconds / Σ steps_run``, its ratio to the cheapest method of the
    instance (``cost_ratio``), ``gradient_equivalents_per_step`` likewise, and ``threads`` and
    ``load`` (:func:`~curvebench.reports.study.timing_conditions`) of the group's runs.

    Returns:
        One row per group, sorted by problem, batch size, best steps, best seconds, optimizer.
    """
    from curvebench.reports.study import timing_conditions

    if board.empty or "best_steps" not in board:
        return pd.DataFrame(columns=[*GROUP, "best_steps", "seconds_per_step"])
    ran = runs[runs["steps_run"] > 0]
    sums = ran.groupby(GROUP)[["seconds", "steps_run", "gradient_equivalents"]].sum()
    cost = pd.DataFrame({
        "seconds_per_step": sums["seconds"] / sums["steps_run"],
        "gradient_equivalents_per_step": sums["gradient_equivalents"] / sums["steps_run"],
    }).reset_index()
    conditions = [(*keys, timing_conditions(group))
                  for keys, group in runs.groupby(GROUP, sort=False)]
    table = board.merge(cost, on=GROUP, how="left").merge(
        pd.DataFrame(conditions, columns=[*GROUP, "timing"]), on=GROUP, how="left")
    cheapest = table.groupby(["problem", "batch_size"])["seconds_per_step"].transform("min")
    table["cost_ratio"] = table["seconds_per_step"] / cheapest
    return table.sort_values(["problem", "batch_size", "best_steps", "best_seconds",
                              "optimizer"], kind="stable").reset_index(drop=True)


def instance_label(problem: str, batch_size: int, *, several: bool) -> str:
    """``"digits-mlp"``, or ``"digits-mlp (batch 128)"`` where the problem ran at several."""
    return f"{problem} (batch {int(batch_size)})" if several else problem


def instances(methods: pd.DataFrame):
    """``(label, rows)`` per problem × batch size of :func:`method_table`."""
    sizes = methods.groupby("problem")["batch_size"].nunique()
    for (problem, batch), rows in methods.groupby(["problem", "batch_size"], sort=True):
        yield instance_label(problem, batch, several=sizes[problem] > 1), rows


def _race(rows: pd.DataFrame, measure: str) -> dict[str, object]:
    """The fastest method of one instance in ``measure`` and how clearly it leads."""
    spec = ".4g" if measure == "steps" else ".3g"
    value = rows[f"best_{measure}"].to_numpy(dtype=float)
    if not np.isfinite(value).any():
        return {"winner": None, "text": "no method reached the target"}
    order = np.argsort(value, kind="stable")
    first = rows.iloc[order[0]]
    tied = [rows.iloc[i]["optimizer"] for i in order if value[i] == value[order[0]]]

    def shown(row: pd.Series) -> str:
        return (f"{row['optimizer']} " + format_interval(
            row[f"best_{measure}"], row[f"best_{measure}_low"], row[f"best_{measure}_high"],
            spec))

    text = shown(first)
    if len(tied) > 1:
        text += f" (tied with {_names(tied[1:])})"
    elif len(order) > 1:
        second = rows.iloc[order[1]]
        if not np.isfinite(second[f"best_{measure}"]):
            text += "; no other method reached the target"
        elif first[f"best_{measure}_high"] < second[f"best_{measure}_low"]:
            text += f"; ahead of {shown(second)} beyond the intervals"
        else:
            text += f"; intervals overlap {shown(second)}"
    return {"winner": str(first["optimizer"]), "text": text}


#: Up to this many methods, the headline lists every method's cost per step.
_HEADLINE_COSTS = 6


def headline(methods: pd.DataFrame) -> pd.DataFrame:
    """Per problem instance: the fastest method to the target in steps and in seconds (best
    configuration, median over seeds, 95% bootstrap interval, and whether the interval
    separates it from the runner-up), the most robust method and the cheapest step.

    Args:
        methods: :func:`method_table`.

    Returns:
        Columns ``instance, target, steps_winner, seconds_winner, robust_winner`` (names, None
        when nobody qualifies) and the display texts ``fastest in steps``, ``fastest in
        seconds``, ``most robust``, ``cost per step`` and ``timing``.
    """
    rows = []
    for label, group in instances(methods):
        steps, seconds = _race(group, "steps"), _race(group, "seconds")
        robust = group[np.isfinite(group["robustness"])]
        top = robust[robust["robustness"] == robust["robustness"].max()] if len(robust) else robust
        if top.empty or top["robustness"].iloc[0] <= 0:
            robust_text, robust_winner = "no configuration reached the target", None
        else:
            robust_winner = ", ".join(map(str, top["optimizer"]))
            configs = "/".join(str(n) for n in sorted({int(n) for n in top["n_configs"]}))
            robust_text = (f"{_names(top['optimizer'])}: {top['robustness'].iloc[0]:.0%} of the "
                           f"swept space reaches the target ({configs} configuration(s) "
                           f"{'each' if len(top) > 1 else 'swept'})")
        priced = group[np.isfinite(group["seconds_per_step"])].sort_values("seconds_per_step")
        if len(priced) > _HEADLINE_COSTS:  # the cheapest and the winners; the rest below
            shown = {priced["optimizer"].iloc[0], steps["winner"], seconds["winner"]}
            priced = priced[priced["optimizer"].isin(shown)]
        cost_text = "; ".join(
            f"{r.optimizer} {r.seconds_per_step * 1e3:.3g} ms (×{r.cost_ratio:.2g})"
            for r in priced.itertuples()) or "—"
        rows.append({"instance": label, "target": group["target"].iloc[0],
                     "steps_winner": steps["winner"], "seconds_winner": seconds["winner"],
                     "robust_winner": robust_winner,
                     "fastest in steps": steps["text"], "fastest in seconds": seconds["text"],
                     "most robust": robust_text, "cost per step": cost_text,
                     "timing": "; ".join(sorted(set(group["timing"].dropna())))})
    return pd.DataFrame(rows)


def headline_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`headline` as shown on the page."""
    return table[["instance", "target", "fastest in steps", "fastest in seconds", "most robust",
                  "cost per step"]].rename(columns={"instance": "problem"})


def overall_summary(runs: pd.DataFrame, methods: pd.DataFrame) -> list[str]:
    """One or two sentences over all problem instances: who wins most often in steps and in
    seconds (Dolan–Moré profiles at τ = 1, ties counted for each; and within 2× of the
    fastest), and which method is most robust on average."""
    instances = runs.groupby(["problem", "batch_size"]).ngroups if len(runs) else 0
    if not instances or not runs["steps_to_target"].notna().any():
        return ["No method reached the target on any problem: there is no winner yet."]
    sentences = []
    for measure in ("steps", "seconds"):
        profile = metrics.performance_profiles(runs, measure=measure, taus=[1.0, 2.0])
        wins, near = profile.iloc[0] * instances, profile.iloc[1] * instances
        best = wins[wins == wins.max()].index.tolist()
        close = near[near == near.max()].index.tolist()
        tie = " (a tie counts for each tied method)" if profile.iloc[0].sum() > 1 + 1e-9 \
            else ""
        sentences.append(
            f"In {measure} to target, {_names(best)} reach{'es' if len(best) == 1 else ''} it "
            f"first on {wins.max():.0f} of {instances} problem instance(s){tie}"
            f"; {_names(close)} {'is' if len(close) == 1 else 'are'} within 2× of the fastest "
            f"on {near.max():.0f} of {instances}.")
    robust = methods.groupby("optimizer")["robustness"].mean().dropna()
    if len(robust) and robust.max() > 0:
        top = robust[robust == robust.max()].index.tolist()
        unequal = methods.groupby(["problem", "batch_size"])["n_configs"].nunique().max() > 1
        sentences.append(
            f"Most robust on average: {_names(top)} ({robust.max():.0%} of the swept "
            "hyperparameter space reaches the target, mean over instances)."
            + (" The methods were tuned over different numbers of configurations, so "
               "robustness and tuned times are not on an equal footing." if unequal else ""))
    return sentences


def _names(names: Sequence[str], *, limit: int = 4) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``; past ``limit`` names,
    ``"a, b, c and 5 more"``."""
    names = [str(n) for n in names]
    if len(names) > limit:
        return ", ".join(names[:limit - 1]) + f" and {len(names) - limit + 1} more"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def methods_display(rows: pd.DataFrame, *, timing: bool = True) -> pd.DataFrame:
    """One instance's rows of :func:`method_table` as shown on the page (fastest first);
    ``timing=False`` leaves out the timing conditions (when the page states them once)."""
    shown = []
    for row in rows.itertuples(index=False):
        shown.append({
            "method": row.optimizer,
            "steps→target [95% CI]": format_interval(row.best_steps, row.best_steps_low,
                                                     row.best_steps_high),
            "s→target [95% CI]": format_interval(row.best_seconds, row.best_seconds_low,
                                                 row.best_seconds_high, ".3g"),
            "runs reaching": f"{row.reached_fraction:.0%} of {int(row.n_runs)}",
            "configs": int(row.n_configs),
            "robustness": _fmt(row.robustness, ".0%"),
            "ms/step": _fmt(row.seconds_per_step * 1e3, ".3g"),
            "× cheapest step": _fmt(row.cost_ratio, ".2g"),
            "gradient-equivalents/step": _fmt(row.gradient_equivalents_per_step, ".3g"),
            **({"timing": row.timing} if timing else {}),
        })
    return pd.DataFrame(shown)


#: A run "sits at its damping floor" when the damping is at the floor on more than this
#: fraction of its steps.
STALL_FLOOR_FRACTION = 0.5
#: Each kind of :func:`stall_diagnostics` finding, in plain words.
STALL_KINDS: dict[str, str] = {
    "damping_floor": "Damping sat at its floor for most of the run: the damped model was "
                     "trusted as if exact, so steps can over-fit the mini-batch (a higher "
                     "damping floor may help)",
    "cg_residual": "CG stopped far from solving the damped system (median relative residual "
                   "above {cg:g}; more CG iterations or more damping may help)",
    "diverged": "Diverged (non-finite or exploding loss)",
    "error": "Failed with an error",
    "unreached": "No run reached the target",
}
#: CG "stops far from the solution" when the median relative residual over steps exceeds this.
STALL_CG_RESIDUAL = 0.5


def _damping_at_floor(record: RunRecord) -> tuple[float, float] | None:
    """``(floor, fraction of steps at it)`` of one run's damping, or None without damping.

    The floor is the run's ``damping_min`` hyperparameter when it has one; otherwise the
    smallest damping of the run, when that is a hundredth of the first step's or less (a
    damping that fell as far as it could and stayed there)."""
    values = np.asarray(record.history.get("damping", ()), dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    floor = record.config.hyperparameter_dict.get("damping_min")
    if not isinstance(floor, int | float) or isinstance(floor, bool):
        floor = float(values.min())
        if floor > values[0] / 100:
            return float(floor), 0.0
    at_floor = values <= float(floor) * (1 + 1e-6) + 1e-300
    return float(floor), float(at_floor.mean())


def stall_diagnostics(study: Study) -> pd.DataFrame:
    """Plain-words findings about methods that stall, from the runs' per-step history.

    Per problem × optimizer × batch size, over all its runs:

    * damping at its floor (:func:`_damping_at_floor`) on more than
      :data:`STALL_FLOOR_FRACTION` of the steps: the damped model is trusted as if exact and
      steps can over-fit the mini-batch;
    * median CG relative residual ``‖(G+λI)d + g‖ / ‖g‖`` over steps above
      :data:`STALL_CG_RESIDUAL`: the linear solve stops far from its solution;
    * runs that diverged or failed;
    * no run reaching the target.

    Returns:
        Columns ``problem, optimizer, batch_size, kind`` (``damping_floor``, ``cg_residual``,
        ``diverged``, ``error``, ``unreached``), ``flagged`` (runs it applies to), ``runs``
        and ``finding`` (the sentence; one row per finding).
    """
    groups: dict[tuple, list[RunRecord]] = {}
    for record in study.records:
        config = record.config
        groups.setdefault((config.problem, config.optimizer, config.batch_size), []).append(record)
    rows = []
    for key, records in sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))):
        n = len(records)
        stuck = [found for found in map(_damping_at_floor, records)
                 if found is not None and found[1] > STALL_FLOOR_FRACTION]
        if stuck:
            levels = sorted({f"{f:.3g}" for f, _ in stuck})
            rows.append((*key, "damping_floor", len(stuck), n, (
                f"damping sat at its floor ({', '.join(levels)}) for most of the run in "
                f"{len(stuck)} of {n} runs (median {np.median([s for _, s in stuck]):.0%} of "
                "the steps): the damped model was trusted as if exact, so steps can over-fit "
                "the mini-batch; a higher damping floor may help.")))
        residuals = []
        for record in records:
            values = np.asarray(record.history.get("cg_relative_residual", ()), dtype=float)
            values = values[np.isfinite(values)]
            if values.size:
                residuals.append(float(np.median(values)))
        high = [v for v in residuals if v > STALL_CG_RESIDUAL]
        if high:
            rows.append((*key, "cg_residual", len(high), n, (
                f"CG stopped far from solving the damped system in {len(high)} of {n} runs "
                f"(median relative residual {np.median(high):.2g}, above "
                f"{STALL_CG_RESIDUAL:g}): more CG iterations or more damping may help.")))
        diverged = sum(r.status == "diverged" for r in records)
        if diverged:
            rows.append((*key, "diverged", diverged, n, f"diverged in {diverged} of {n} runs "
                                                         "(non-finite or exploding loss)."))
        failed = sum(r.status == "error" for r in records)
        if failed:
            rows.append((*key, "error", failed, n,
                         f"failed with an error in {failed} of {n} runs."))
        if not any(r.steps_to_target is not None for r in records):
            rows.append((*key, "unreached", n, n, f"none of its {n} runs reached the target."))
    return pd.DataFrame(rows, columns=[*GROUP, "kind", "flagged", "runs", "finding"])


#: The factors τ of the fastest at which :func:`profile_table` reads the profiles.
PROFILE_FACTORS = (1.0, 2.0, 4.0)


def profile_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Performance profiles read at a few factors, one row per method, best first: the
    fraction of problem instances each method solves within ``τ ∈`` :data:`PROFILE_FACTORS`
    of the fastest, in steps and in seconds (:func:`curvebench.metrics.performance_profiles`;
    ``τ = 1`` counts wins, a tie for each tied method), and at any factor (``solved``).

    Returns:
        Columns ``method``, ``steps ≤ τ×best`` and ``seconds ≤ τ×best`` per factor,
        ``solved``; sorted by wins in steps, then in seconds, then solved.
    """
    columns: dict[str, pd.Series] = {}
    for measure in ("steps", "seconds"):
        profile = metrics.performance_profiles(runs, measure=measure,
                                               taus=[*PROFILE_FACTORS, 1e300])
        for tau, row in zip(PROFILE_FACTORS, profile.iloc[:-1].itertuples(index=False),
                            strict=True):
            columns[f"{measure} ≤ {tau:g}× best"] = pd.Series(row, index=profile.columns)
        if measure == "steps":
            columns["solved"] = profile.iloc[-1]
    table = pd.DataFrame(columns)
    order = ["steps ≤ 1× best", "seconds ≤ 1× best", "solved"]
    table = table.sort_values(order, ascending=False, kind="stable")
    return table.rename_axis("method").reset_index()
