"""Report figures: seaborn-styled matplotlib figures written as PNG files (Agg backend).

Each function draws from a table of :mod:`curvebench.reports.tables` (the same numbers the
page links as CSV) and writes one PNG. Figures are built on :class:`matplotlib.figure.Figure`
directly (no pyplot state), inside seaborn style contexts; names from plugins pass through
:func:`literal` so that a ``$`` never starts math text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

__all__ = [
    "palette",
    "literal",
    "band_figure",
    "heatmap_figure",
    "sensitivity_figure",
    "scaling_figure",
    "cost_figure",
    "profile_figure",
    "DPI",
]

#: Resolution of the PNG files.
DPI = 96
_RC = {"axes.titlesize": 10,
       "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8}


@contextlib.contextmanager
def _style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"), \
            matplotlib.rc_context(_RC):
        yield


def literal(text: object) -> str:
    """``text`` as matplotlib draws it literally (dollar signs escaped, no math text)."""
    return str(text).replace("$", r"\$")


def _plain_ticks(axis, *, every_minor: bool = False) -> None:
    """Tick labels as plain numbers (``0.003``, ``64``) instead of powers; on a log axis minor
    ticks are labelled at 2× and 5× powers of ten only, or all of them with ``every_minor``
    (a range too narrow to hold two of those)."""
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))

    def minor(value: float, _: int) -> str:
        if value <= 0:
            return ""
        mantissa = round(value / 10 ** np.floor(np.log10(value)), 6)
        if every_minor:  # 9 crowds the power of ten above it
            return f"{value:.3g}" if mantissa != 9.0 else ""
        return f"{value:.3g}" if mantissa in (2.0, 5.0) else ""

    axis.set_minor_formatter(FuncFormatter(minor))


def palette(labels: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """A colour per label (colour-blind-safe cycle, stable in the order given); the cycle is
    ordered so that the first colours are far apart."""
    base = sns.color_palette("colorblind", 10)
    colours = [base[i] for i in (0, 3, 2, 4, 1, 7, 5, 9, 6, 8)]  # orange after vermillion
    if len(labels) > len(colours):
        colours = sns.color_palette("husl", len(labels))
    return {label: colours[i] for i, label in enumerate(labels)}


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def _legend_below(figure: Figure, axes) -> None:
    """One legend under the figure with every labelled line of ``axes`` (one or several)."""
    entries: dict[str, object] = {}
    for ax in np.atleast_1d(axes):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        labels = list(entries)
        longest = max(len(label) for label in labels)
        fits = max(1, int(figure.get_figwidth() * 12 / (longest + 6)))  # ~12 chars per inch
        figure.legend(list(entries.values()), labels, loc="outside lower center",
                      ncol=min(fits, len(labels)), frameon=False)


def band_figure(panels: Sequence[tuple[str, str, pd.DataFrame]], *, colours: Mapping[str, tuple],
                path: Path, ylabel: str | Sequence[str], log_y: bool = False,
                log_x: Sequence[bool] = (), targets: Sequence[tuple[float, str] | None] = (),
                counts: bool = False) -> Path:
    """Median lines with interquartile bands, one panel per ``(title, xlabel, bands)``.

    The median is drawn solid where all of a configuration's seeds are still running and
    dotted where some have stopped (reached the target, diverged or ran out of budget), so a
    median resting on fewer seeds is never mistaken for one over all of them.

    Args:
        panels: ``bands`` as returned by :func:`~curvebench.reports.tables.curve_bands`.
        colours: colour per configuration (``arm``).
        path: PNG file to write.
        ylabel: one label for all panels, or one per panel.
        log_y: logarithmic y axis where all values are positive.
        log_x: per panel, logarithmic x axis.
        targets: per panel, ``(value, label)`` of a horizontal target line, or None.
        counts: add a strip under each panel with the number of seeds still running.
    """
    labels = [ylabel] * len(panels) if isinstance(ylabel, str) else list(ylabel)
    with _style():
        figure = Figure(figsize=(3.6 * len(panels), 4.0 if counts else 3.2),
                        layout="constrained")
        grid = figure.subplots(2 if counts else 1, len(panels), squeeze=False, sharex="col",
                               **({"height_ratios": [4, 1]} if counts else {}))
        axes = grid[0]
        for i, (ax, (title, xlabel, bands)) in enumerate(zip(axes, panels, strict=True)):
            for arm, band in bands.groupby("arm", sort=True):
                colour = colours.get(arm)
                n = band["n"].to_numpy(dtype=float)
                median = band["median"].to_numpy(dtype=float)
                partial = n < n.max()
                ax.plot(band["x"], median, color=colour, linewidth=1.1, linestyle=":")
                ax.plot(band["x"], np.where(partial, np.nan, median), color=colour,
                        label=literal(arm), linewidth=1.4)
                if len(band) > 1 and (band["q75"] > band["q25"]).any():
                    ax.fill_between(band["x"], band["q25"], band["q75"], color=colour,
                                    alpha=0.2, linewidth=0)
                if counts:  # down to 0 where the last seed stopped
                    running = band.get("running", band["n"]).to_numpy(dtype=float)
                    grid[1][i].step([*band["x"], band["x"].iloc[-1]], [*running, 0],
                                    where="post", color=colour, linewidth=1.2)
            values = bands["median"].to_numpy(dtype=float) if len(bands) else np.array([])
            target = targets[i] if i < len(targets) else None
            if target is not None:
                values = np.append(values, target[0])
            if log_y and len(values) and np.nanmin(values) > 0:
                ax.set_yscale("log")
                spread = np.nanmax(values) / np.nanmin(values)
                if spread < 30:  # less than 1.5 decades
                    _plain_ticks(ax.yaxis, every_minor=spread < 4)
            if target is not None:
                ax.axhline(target[0], color="0.25", linestyle="--", linewidth=1.0,
                           label=literal(target[1]))
            if i < len(log_x) and log_x[i]:
                ax.set_xscale("log")
            ax.set_title(literal(title))
            ax.set_ylabel(literal(labels[i]))
            if counts:
                strip = grid[1][i]
                top = int(bands.get("running", bands["n"]).max()) if len(bands) else 1
                strip.set_ylim(0, top + 0.5)
                strip.set_yticks(sorted({0, top}))
                strip.set_ylabel("seeds\nrunning", fontsize=7)
                strip.set_xlabel(literal(xlabel))
            else:
                ax.set_xlabel(literal(xlabel))
        _legend_below(figure, axes)
        return _save(figure, path)


def heatmap_figure(table: pd.DataFrame, *, rows: str, columns: str, facet: str,
                   path: Path, row_label: str, column_label: str) -> Path:
    """Reached fraction per cell (colour), annotated with median steps to target, one panel
    per value of ``facet`` (the optimizer)."""
    facets = sorted(table[facet].unique())
    with _style():
        figure = Figure(figsize=(3.8 * len(facets), 3.4), layout="constrained")
        axes = figure.subplots(1, len(facets), squeeze=False)[0]
        for ax, name in zip(axes, facets, strict=True):
            part = table[table[facet] == name]
            colour = part.pivot(index=rows, columns=columns, values="reached_fraction")
            steps = part.pivot(index=rows, columns=columns, values="median_steps")
            notes = steps.map(lambda v: "–" if not np.isfinite(v) else f"{v:.0f}")
            sns.heatmap(colour.sort_index(ascending=False),
                        annot=notes.loc[colour.sort_index(ascending=False).index],
                        fmt="", vmin=0, vmax=1, cmap="viridis", ax=ax, cbar=ax is axes[-1],
                        cbar_kws={"label": "fraction of runs reaching target"},
                        annot_kws={"fontsize": 9})
            ax.set_title(literal(name))
            ax.set_xlabel(literal(column_label))
            ax.set_ylabel(literal(row_label))
            ax.set_xticklabels([_short(t.get_text()) for t in ax.get_xticklabels()], rotation=45)
            ax.set_yticklabels([_short(t.get_text()) for t in ax.get_yticklabels()], rotation=0)
        return _save(figure, path)


def _short(text: str) -> str:
    try:
        return f"{float(text):.3g}"
    except ValueError:
        return text


def sensitivity_figure(table: pd.DataFrame, *, colours: Mapping[str, tuple], path: Path,
                       hyperparameter: str) -> Path:
    """Steps to target relative to the best value against the hyperparameter, per optimizer
    (from :func:`curvebench.metrics.lr_sensitivity`); unreached values are marked at the top."""
    with _style():
        figure = Figure(figsize=(5.2, 3.4), layout="constrained")
        ax = figure.subplots()
        finite = table["relative_steps"].replace(np.inf, np.nan)
        ceiling = max(float(np.nanmax(finite)) * 1.5, 3.0) if finite.notna().any() else 3.0
        for label, part in table.groupby("label", sort=True):
            part = part.sort_values("value")
            y = part["relative_steps"].to_numpy(dtype=float)
            reached = np.isfinite(y)
            colour = colours.get(label)
            ax.plot(part["value"][reached], y[reached], marker="o", color=colour,
                    label=literal(label),
                    linewidth=1.4, markersize=4)
            if (~reached).any():
                ax.scatter(part["value"][~reached], np.full((~reached).sum(), ceiling),
                           marker="x", color=colour)
        ax.axhline(ceiling, color="0.6", linewidth=0.8, linestyle=":")
        ax.text(0.01, ceiling, " not reached", transform=ax.get_yaxis_transform(),
                fontsize=7, va="bottom", color="0.4")
        ax.set_xscale("log")
        _plain_ticks(ax.xaxis)
        values = sorted(float(v) for v in table["value"].unique() if v > 0)
        if 0 < len(values) <= 8:  # label exactly the values tried, when they fit
            ax.set_xticks(values)
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0.9, ceiling * 1.08)
        ax.set_xlabel(literal(hyperparameter))
        ax.set_ylabel("steps to target / best")
        _legend_below(figure, ax)
        return _save(figure, path)


def scaling_figure(table: pd.DataFrame, *, colours: Mapping[str, tuple], path: Path) -> Path:
    """Steps to target against batch size per optimizer (tuned per batch size), with the
    perfect-scaling line of each (from :func:`curvebench.metrics.batch_size_scaling`)."""
    with _style():
        figure = Figure(figsize=(5.2, 3.4), layout="constrained")
        ax = figure.subplots()
        for name, part in table.groupby("optimizer", sort=True):
            part = part.sort_values("batch_size")
            colour = colours.get(name)
            steps = part["steps"].replace(np.inf, np.nan)
            ax.plot(part["batch_size"], steps, marker="o", color=colour, label=literal(name),
                    linewidth=1.4, markersize=4)
            ax.plot(part["batch_size"], part["perfect_steps"], color=colour, linestyle="--",
                    linewidth=0.9, alpha=0.7)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _plain_ticks(ax.xaxis)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(sorted(table["batch_size"].unique()))
        _plain_ticks(ax.yaxis)
        ax.set_xlabel("batch size")
        ax.set_ylabel("steps to target (tuned)")
        ax.set_title("dashed: perfect scaling from the smallest batch that reaches the target",
                     fontsize=8)
        _legend_below(figure, ax)
        return _save(figure, path)


def cost_figure(table: pd.DataFrame, *, phases: Sequence[str], path: Path) -> Path:
    """Stacked horizontal bars: mean seconds per step in each phase, per configuration."""
    with _style():
        height = 0.9 + 0.38 * len(table)
        figure = Figure(figsize=(6.4, height), layout="constrained")
        ax = figure.subplots()
        colours = sns.color_palette("Set2", max(len(phases), 1))
        left = np.zeros(len(table))
        labels = [literal(arm) for arm in table["arm"]]
        for colour, phase in zip(colours, phases, strict=False):
            values = table[phase].fillna(0.0).to_numpy(dtype=float) * 1e3
            ax.barh(labels, values, left=left, color=colour, label=literal(phase))
            left += values
        ax.invert_yaxis()
        ax.set_xlabel("milliseconds per step")
        figure.legend(loc="outside right upper", fontsize=7, frameon=False)
        return _save(figure, path)


def profile_figure(profiles: Mapping[str, pd.DataFrame], *, colours: Mapping[str, tuple],
                   path: Path) -> Path:
    """Performance profiles ``ρ_s(τ)`` (one panel per measure: steps, seconds)."""
    with _style():
        figure = Figure(figsize=(3.8 * len(profiles), 3.2), layout="constrained")
        axes = figure.subplots(1, len(profiles), squeeze=False)[0]
        for ax, (measure, table) in zip(axes, profiles.items(), strict=True):
            for number, name in enumerate(table.columns):
                ax.step(table.index, table[name], where="post", color=colours.get(name),
                        label=literal(name), linewidth=1.6,
                        linestyle=("-", "--", "-.", ":")[number % 4])
            ax.set_xscale("log")
            _plain_ticks(ax.xaxis)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("τ (factor of the fastest)")
            ax.set_ylabel("fraction of problems")
            ax.set_title(f"time to target in {measure}")
        _legend_below(figure, axes)
        return _save(figure, path)
