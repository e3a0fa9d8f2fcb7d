"""Build the static report site of a study: ``index.html`` and one page per problem.

Layout of the output directory::

    index.html                 leaderboards, performance profiles, provenance, definitions
    problem-<slug>.html        curves, robustness, sensitivity, scaling, cost, diagnostics
    img/*.png                  figures (Agg backend, seaborn style)
    data/*.csv                 the numbers behind every figure and table; data/runs.csv
    asv/                       copy of the asv HTML, when one is given or found, made offline
                               (its CDN scripts and styles replaced by bundled copies)

Everything is relative and static (no scripts, no network), so the directory opens offline and
can be published as it is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from curvebench import metrics
from curvebench.formatting import target_label
from curvebench.reports import asv_offline, figures, tables
from curvebench.reports import html as h
from curvebench.reports.study import GRADIENT_EQUIVALENTS_DEFINITION, Study, timing_conditions

__all__ = ["Site", "build_site", "check_site_target", "SiteTargetError", "HEATMAP_AXES",
           "MANIFEST", "file_stem", "problem_slug", "find_asv_html"]

#: The list of files a report wrote, kept in its directory: what a later report may replace.
MANIFEST = ".curvebench-report.json"

#: Robustness maps: pairs of run columns (rows, columns) drawn as heatmaps when both vary.
HEATMAP_AXES: tuple[tuple[str, str], ...] = (
    ("hp.lr", "hp.damping"),
    ("hp.cg_iterations", "batch_size"),
)
#: The learning-rate hyperparameter of the 1-D sensitivity plot.
LEARNING_RATE = "lr"
_CI = ("Best steps/seconds to target: the best configuration's median over seeds (a run that "
       "does not reach the target counts as infinitely slow), with a 95% percentile-bootstrap "
       "interval over its seeds. Robustness: the volume-weighted fraction of the swept "
       "hyperparameter space that reaches the target (see curvebench.metrics).")


_ASV_OFFLINE = ("The asv pages use copies of their scripts and stylesheets bundled with "
                "curvebench (asv/vendor/, with their licenses), so they need no network; they "
                "read their data with requests that browsers refuse to pages opened as files, "
                "so open them through a local web server (python -m http.server, in this "
                "folder).")
_ASV_LEFT_OUT = ("The asv benchmark pages are left out of this report: they load scripts or "
                 "stylesheets from the network that curvebench has no bundled copy of, and "
                 "would not work offline: ")

#: Sections of a problem page: (anchor, title).
_PROBLEM_SECTIONS = (("summary", "Summary"), ("loss", "Training loss"),
                     ("evaluation", "Evaluation metrics"), ("robustness", "Robustness"),
                     ("scaling", "Batch-size scaling"), ("cost", "Cost per step"),
                     ("diagnostics", "Curvature diagnostics"), ("runs", "All runs"))


@dataclass(frozen=True)
class Site:
    """What :func:`build_site` wrote.

    Attributes:
        out: the output directory.
        pages: HTML files, index first.
        images: PNG files.
        data: CSV files.
        missing: one line per piece of the report that could not be drawn, and why.
    """

    out: Path
    pages: tuple[Path, ...]
    images: tuple[Path, ...]
    data: tuple[Path, ...]
    missing: tuple[str, ...] = field(default_factory=tuple)


def problem_slug(name: str) -> str:
    """A file-name-safe, unique slug: lower-case ASCII words plus a short hash of the name."""
    words = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "problem"
    return f"{words}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def file_stem(name: str, *, limit: int = 100) -> str:
    """A safe file-name stem for ``name`` (built from history column names, which are data).

    Keeps ASCII letters, digits, ``.``, ``_`` and ``-``; anything else (``/``, spaces,
    non-ASCII) becomes ``-``. A changed or longer-than-``limit`` name gets a short hash of the
    original, so distinct names stay distinct and every name fits a file system.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "file"
    if stem != name or len(stem) > limit:
        stem = f"{stem[:limit - 9].rstrip('.-')}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return stem


def find_asv_html(start: Path) -> Path | None:
    """The asv HTML output (``.asv/html`` with an ``index.html``) in ``start`` or a parent."""
    for folder in (start, *start.parents):
        candidate = folder / ".asv" / "html"
        if (candidate / "index.html").is_file():
            return candidate
    return None


class _Writer:
    """Collects the files of the site as they are written."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.images: list[Path] = []
        self.data: list[Path] = []
        self.missing: list[str] = []
        (out / "img").mkdir(parents=True, exist_ok=True)
        (out / "data").mkdir(parents=True, exist_ok=True)

    def csv(self, frame: pd.DataFrame, name: str) -> str:
        name = file_stem(name)
        path = self.out / "data" / f"{name}.csv"
        frame.to_csv(path, index=False)
        self.data.append(path)
        return f"data/{name}.csv"

    def image(self, draw: Callable[[Path], Path], name: str) -> str:
        name = file_stem(name)
        path = self.out / "img" / f"{name}.png"
        self.images.append(draw(path))
        return f"img/{name}.png"

    def note_missing(self, where: str, text: str) -> str:
        self.missing.append(f"{where}: {text}")
        return h.missing(text)


def build_site(study: Study, *, out: Path | str, asv_html: Path | None = None,
               n_bootstrap: int = 1000, force: bool = False) -> Site:
    """Write the report of ``study`` to ``out``.

    The site is built in a temporary directory beside ``out`` and swapped in (see
    :func:`_swap_in`): a new ``out`` appears complete or not at all, and nothing the report did
    not write is ever deleted. ``out`` must be absent, empty or a previous report (it holds the
    manifest :data:`MANIFEST`) unless ``force``.

    Args:
        study: the runs.
        out: output directory.
        asv_html: asv's HTML output directory to copy into ``out/asv`` and link.
        n_bootstrap: bootstrap resamples of the confidence intervals.
        force: write into a non-empty directory that is not a previous report (its other
            files are kept; files with the names the report writes are replaced).

    Returns:
        The files written and what was missing.

    Raises:
        SiteTargetError: see :func:`check_site_target`.
    """
    final = Path(out)
    check_site_target(final, force=force)
    final.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.building-"))
    try:
        site = _write_site(study, out=out, asv_html=asv_html, n_bootstrap=n_bootstrap)
        _swap_in(out, final)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    moved = lambda paths: tuple(final / p.relative_to(out) for p in paths)  # noqa: E731
    return Site(out=final, pages=moved(site.pages), images=moved(site.images),
                data=moved(site.data), missing=site.missing)


class SiteTargetError(ValueError):
    """``--out`` holds files that are not a previous report (one-line message)."""


def check_site_target(out: Path, *, force: bool = False) -> None:
    """Refuse to write a report into a non-empty directory that is not a previous report.

    Raises:
        SiteTargetError: ``out`` is a file, or a non-empty directory without the manifest of
            a previous report and ``force`` is false.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise SiteTargetError(f"--out {str(out)!r} exists and is not a directory")
    if force or (out / MANIFEST).is_file():
        return
    try:
        empty = next(out.iterdir(), None) is None
    except OSError as error:
        raise SiteTargetError(f"--out {str(out)!r} cannot be read: "
                              f"{error.strerror or error}") from None
    if not empty:
        raise SiteTargetError(f"--out {str(out)!r} is a non-empty directory that is not a "
                              "curvebench report; choose another directory or pass --force "
                              "(files the report does not write are kept)")


def _previous_files(out: Path) -> set[str]:
    """Files (relative POSIX paths) the previous report in ``out`` wrote, from its manifest."""
    try:
        listed = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {str(p) for p in listed if isinstance(p, str) and ".." not in Path(p).parts
            and not Path(p).is_absolute()}


def _swap_in(built: Path, out: Path) -> None:
    """Move the site built in ``built`` into ``out``.

    A new ``out`` is one rename. Otherwise each file replaces its namesake atomically, files
    that the previous report wrote (its manifest) and this one does not are removed, and every
    other file is left untouched; the manifest is written last.
    """
    new = sorted(p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file())
    (built / MANIFEST).write_text(json.dumps({"files": new}, indent=1), encoding="utf-8")
    if not out.exists():
        built.rename(out)
        return
    old = _previous_files(out)
    for name in new:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(built / name, target)
    for name in sorted(old - set(new)):
        path = out / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
            _remove_empty_parents(path.parent, out)
    os.replace(built / MANIFEST, out / MANIFEST)


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _write_site(study: Study, *, out: Path, asv_html: Path | None, n_bootstrap: int) -> Site:
    writer = _Writer(out)
    problems = study.problems()
    slugs = {name: problem_slug(name) for name in problems}
    nav = [("index.html", "Overview")] + [(f"problem-{slugs[p]}.html", p) for p in problems]
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    footer = f"curvebench report, generated {generated}; {len(study.records)} runs."
    board = tables.leaderboard(study, n_bootstrap=n_bootstrap)
    glance = _Glance(methods=tables.method_table(board, study.runs),
                     findings=tables.stall_diagnostics(study))

    asv_href = None
    if asv_html is not None and (Path(asv_html) / "index.html").is_file():
        copy = asv_offline.copy_offline(Path(asv_html), out / "asv")
        if copy.unresolved:  # not offline: leave it out and say so
            shutil.rmtree(copy.target)
            writer.note_missing("asv", _ASV_LEFT_OUT + "; ".join(copy.unresolved))
        else:
            asv_href = "asv/index.html"

    pages = [out / "index.html"]
    for problem in problems:
        body = _problem_body(study, problem, board, glance, writer, slug=slugs[problem])
        path = out / f"problem-{slugs[problem]}.html"
        path.write_text(h.page(title=f"{problem} · curvebench report", heading=problem, nav=nav,
                               body=body, footer=footer), encoding="utf-8")
        pages.append(path)
    index = _index_body(study, board, glance, writer, slugs=slugs, asv_href=asv_href)
    pages[0].write_text(h.page(title="curvebench report", heading="curvebench report", nav=nav,
                               body=index, footer=footer), encoding="utf-8")
    return Site(out=out, pages=tuple(pages), images=tuple(writer.images),
                data=tuple(writer.data), missing=tuple(writer.missing))


@dataclass(frozen=True)
class _Glance:
    """What the headline reads: every method per problem instance, fastest first
    (:func:`tables.method_table`), and the stall findings (:func:`tables.stall_diagnostics`)."""

    methods: pd.DataFrame
    findings: pd.DataFrame

    def problem(self, problem: str) -> _Glance:
        return _Glance(methods=self.methods[self.methods["problem"] == problem],
                       findings=self.findings[self.findings["problem"] == problem])


_HEADLINE = ("Per problem: the method that reaches the target first in optimizer steps and in "
             "measured seconds (its best configuration's median over seeds, with a 95% "
             "bootstrap interval over those seeds; 'beyond the intervals' means the runner-up's "
             "interval does not overlap), the most robust method (the largest fraction of its "
             "swept hyperparameter space reaching the target) and the measured cost of a step "
             "(× the cheapest method's step on the same problem).")


def _headline(study: Study, glance: _Glance, *, slugs: dict[str, str]) -> list[str]:
    """The first section of the overview: the answer, then the numbers behind it."""
    methods = glance.methods
    if methods.empty:
        return [h.missing("No runs yet: there is no answer to give.")]
    runs = study.runs
    parts = [h.paragraph(" ".join(tables.overall_summary(runs, methods)), css="lead")]
    board = tables.headline(methods)
    problems = [name for name in slugs for _ in range(
        methods[methods["problem"] == name]["batch_size"].nunique())]
    links = {i: f"problem-{slugs[name]}.html" for i, name in enumerate(problems)}
    parts.append(h.table(tables.headline_display(board), links=links))
    parts.append(h.paragraph(_HEADLINE + " Seconds were measured with "
                             + timing_conditions(runs) + "."))
    parts.extend(_stall_notes(glance.findings, overview=True))
    mixed = methods["timing"].nunique() > 1  # else stated once above
    for label, rows in tables.instances(methods):
        parts.append(f"<h3>{h.escape(label)}: every method, fastest first</h3>")
        parts.append(h.table(tables.methods_display(rows, timing=mixed)))
    return parts


def _stall_notes(findings: pd.DataFrame, *, overview: bool) -> list[str]:
    """A diagnostics note saying, in plain words, what made methods stall: on a problem page
    one line per method and finding; on the overview one line per kind of finding, naming the
    problems and methods (so it stays short with many methods)."""
    if findings.empty:
        return []
    several = findings.groupby("problem")["batch_size"].nunique()

    def where(problem: str, batch_size: int) -> str:
        return f" (batch {batch_size})" if several[problem] > 1 else ""

    items = []
    if not overview:
        items = [f"{row.optimizer}{where(row.problem, row.batch_size)}: {row.finding}"
                 for row in findings[findings["kind"] != "unreached"].itertuples(index=False)]
        unreached = findings[findings["kind"] == "unreached"]
        for (problem, batch_size), rows in unreached.groupby(["problem", "batch_size"]):
            items.append(f"{', '.join(rows['optimizer'])}{where(problem, batch_size)}: no run "
                         "reached the target.")
    else:
        for kind, text in tables.STALL_KINDS.items():
            rows = findings[findings["kind"] == kind]
            if rows.empty:
                continue
            listed = []
            for (problem, batch_size), part in rows.groupby(["problem", "batch_size"]):
                methods = ", ".join(
                    str(r.optimizer) if kind == "unreached"
                    else f"{r.optimizer} ({r.flagged} of {r.runs} runs)"
                    for r in part.itertuples(index=False))
                listed.append(f"{problem}{where(problem, batch_size)}: {methods}")
            items.append(text.format(cg=tables.STALL_CG_RESIDUAL) + ". " + "; ".join(listed)
                         + ".")
    return [h.notes("Diagnostics: where methods stall, from the runs' per-step history "
                    "(damping, CG residuals, status).", items)]


def _index_body(study: Study, board: pd.DataFrame, glance: _Glance, writer: _Writer, *,
                slugs: dict[str, str], asv_href: str | None) -> str:
    parts = [h.section("At a glance", *_headline(study, glance, slugs=slugs), anchor="glance")]
    runs = study.runs
    overview = [h.paragraph(
        f"{len(study.records)} runs on {len(slugs)} problem(s) with "
        f"{runs['optimizer'].nunique() if len(runs) else 0} optimizer(s).", css="")]
    if study.unreadable:
        rows = pd.DataFrame([(u.path.name, "duplicate" if u.duplicate else "unreadable",
                              u.reason) for u in study.unreadable],
                            columns=["file", "kind", "reason"])
        overview.append(writer.note_missing(
            "index", f"{len(study.unreadable)} stored file(s) could not be read, or repeat a "
            "run counted from another file, and are left out of this report:"))
        overview.append(h.table(rows))
    if not study.records:
        overview.append(writer.note_missing("index", "The results directory holds no readable "
                                            "runs: there is nothing to report yet."))
    else:
        overview.append(h.download("All runs", writer.csv(study.runs, "runs")))
    if asv_href:
        overview.append(f"<p>Micro-benchmarks: {h.link(asv_href, 'asv benchmark pages')}</p>")
        overview.append(h.paragraph(_ASV_OFFLINE))
    overview.extend(h.missing(line.removeprefix("asv: ")) for line in writer.missing
                    if line.startswith("asv: "))
    overview.extend(h.paragraph(note) for note in study.notes)
    parts.append(h.section("Study", *overview, anchor="study"))

    board_parts = [h.paragraph(_CI)]
    display = tables.leaderboard_display(board)
    for problem, slug in slugs.items():
        rows = display[display["problem"] == problem].drop(columns="problem")
        board_parts.append(f"<h3>{h.link(f'problem-{slug}.html', problem)}</h3>")
        board_parts.append(h.table(rows))
        if len(rows) and not np.isfinite(board[board["problem"] == problem]["best_steps"]).any():
            board_parts.append(writer.note_missing(
                problem, "No run on this problem reached the target, so there is no time to "
                "target to compare."))
    if len(board):
        board_parts.append(h.download("All leaderboards", writer.csv(board, "leaderboard")))
    parts.append(h.section("Leaderboards", *board_parts, anchor="leaderboards"))
    compared = tables.backend_comparison(study, board)
    if len(compared):
        parts.append(h.section(
            "Backends side by side",
            h.paragraph("The same optimizer on the same problem and batch size, run by each "
                        "backend: best steps and seconds to target (bootstrap intervals over "
                        "seeds) and the measured cost of a step, divided by the reference "
                        "backend's (torch where it ran)."),
            h.table(tables.backend_comparison_display(compared),
                    csv=writer.csv(compared, "backends")), anchor="backends"))

    parts.append(h.section("Performance profiles", *_profiles(study, writer),
                           anchor="profiles"))
    if len(runs):
        tuned = metrics.default_vs_tuned(runs, optimizer_specs=study.optimizers)
        parts.append(h.section(
            "Default versus tuned hyperparameters",
            h.paragraph("Steps to target with the optimizers' defaults (as the runs recorded "
                        "them) against the best "
                        "configuration of the study; gain = default / tuned (Schmidt et al. "
                        "2021)."),
            h.table(tables.default_vs_tuned_display(tuned),
                    csv=writer.csv(tuned, "default-vs-tuned")), anchor="tuning"))
    prov = tables.provenance(study)
    parts.append(h.section(
        "Provenance",
        h.paragraph("Where and with what the runs ran; one row per distinct environment."),
        h.table(prov, csv=writer.csv(prov, "provenance") if len(prov) else None),
        anchor="provenance"))
    parts.append(h.section("Definitions", h.paragraph(GRADIENT_EQUIVALENTS_DEFINITION),
                           h.paragraph(_CI), anchor="definitions"))
    return "\n".join(parts)


def _profiles(study: Study, writer: _Writer) -> list[str]:
    runs = study.runs
    if runs.empty or runs["steps_to_target"].notna().sum() == 0:
        return [writer.note_missing("performance profiles", "No run reached its target, so "
                                    "there are no performance profiles.")]
    profiles = {m: metrics.performance_profiles(runs, measure=m) for m in ("steps", "seconds")}
    optimizers = sorted(runs["optimizer"].unique())
    colours = figures.palette(optimizers)
    src = writer.image(lambda p: figures.profile_figure(profiles, colours=colours, path=p),
                       "performance-profiles")
    links = [writer.csv(t.reset_index(), f"performance-profile-{m}")
             for m, t in profiles.items()]
    instances = runs.groupby(["problem", "batch_size"]).ngroups
    parts = [h.figure(src=src, alt="performance profiles", csv=links, caption=(
        f"Dolan–Moré profiles over {instances} problem × batch-size instance(s): the fraction "
        "of instances an optimizer solves within a factor τ of the fastest (tuned, median over "
        "seeds)."))]
    table = tables.profile_table(runs)
    parts.append(h.paragraph("The same profiles read at a few factors τ, one row per method, "
                             "most wins first: the fraction of instances solved within τ× the "
                             "fastest (τ = 1: wins, a tie counting for each tied method)."))
    parts.append(h.table(table.assign(**{c: table[c].map(lambda v: f"{v:.0%}")
                                         for c in table.columns if c != "method"}),
                         csv=writer.csv(table, "performance-profile-table")))
    if instances < 2:
        parts.append(writer.note_missing("performance profiles", "Only one problem instance: "
                                         "the profile is a single win/loss step."))
    return parts


def _problem_body(study: Study, problem: str, board: pd.DataFrame, glance: _Glance,
                  writer: _Writer, *, slug: str) -> str:
    runs = study.problem_runs(problem)
    best = tables.best_arms(runs)
    arms = best["arm"].tolist()
    colours = figures.palette(arms)
    best_keys = runs[runs["arm"].isin(arms)]["key"].tolist()
    history = study.curves(best_keys, source="history")
    evaluations = study.curves(best_keys, source="evaluations")
    seeds = int(best["n_seeds"].max()) if len(best) else 0
    parts = []

    display = tables.leaderboard_display(board[board["problem"] == problem])
    mine = glance.problem(problem)
    summary = []
    for row in tables.headline(mine.methods).to_dict("records"):
        summary.append(h.paragraph(
            f"{row['instance']}, target {row['target']}. Fastest in steps: "
            f"{row['fastest in steps']}. Fastest in seconds ({row['timing']}): "
            f"{row['fastest in seconds']}. Most robust: {row['most robust']}. Cost per step: "
            f"{row['cost per step']}.", css="lead"))
    summary.extend(_stall_notes(mine.findings, overview=False))
    summary.append(h.table(display.drop(columns="problem", errors="ignore")))
    statuses = runs["status"].value_counts().to_dict()
    summary.append(h.paragraph(f"{len(runs)} runs: " + ", ".join(
        f"{n} {s}" for s, n in sorted(statuses.items())) + ". Curves below show each "
        "optimizer's best configuration (smallest median steps to target over seeds, ties by "
        "final train loss): " + "; ".join(arms) + "."))
    if not runs["steps_to_target"].notna().any():
        summary.append(writer.note_missing(problem, "No run reached the target: times to "
                                           "target read 'not reached'."))
    if seeds == 1:
        summary.append(writer.note_missing(problem, "One seed per configuration: curves have "
                                           "no spread band and intervals are a single point."))
    failed = runs[runs["status"].isin(["error", "diverged"])]
    if len(failed):
        summary.append(h.paragraph("Runs that failed or diverged:"))
        summary.append(h.table(failed[["optimizer", "configuration", "seed", "status",
                                       "steps_run", "error"]]))
    parts.append(h.contents(_PROBLEM_SECTIONS))
    parts.append(h.section("Summary", *summary, anchor="summary"))
    target = _Target.of(study, runs)
    parts.append(h.section("Training loss", *_convergence(
        history, colours, writer, slug, problem, target=target,
        timing=timing_conditions(runs[runs["arm"].isin(arms)])), anchor="loss"))
    parts.append(h.section("Evaluation metrics", *_evaluation(evaluations, colours, writer,
                                                               slug, problem, target=target),
                           anchor="evaluation"))
    parts.append(h.section("Robustness", *_robustness(study, runs, writer, slug, problem),
                           anchor="robustness"))
    parts.append(h.section("Batch-size scaling", *_scaling(runs, writer, slug, problem),
                           anchor="scaling"))
    parts.append(h.section("Cost per step", *_cost(runs[runs["arm"].isin(arms)], writer, slug,
                                                   problem), anchor="cost"))
    parts.append(h.section("Curvature diagnostics", *_diagnostics(history, colours, writer,
                                                                  slug, problem),
                           anchor="diagnostics"))
    all_runs = tables.run_summary(Study.from_records(
        [r for r in study.records if r.config.problem == problem]))
    parts.append(h.section("All runs", h.table(all_runs, csv=writer.csv(
        runs, f"{slug}-runs")), anchor="runs"))
    return "\n".join(parts)


@dataclass(frozen=True)
class _Target:
    """A problem's target as its records state it."""

    metric: str
    value: float
    direction: str

    @classmethod
    def of(cls, study: Study, runs: pd.DataFrame) -> _Target | None:
        if runs.empty or pd.isna(runs["target_value"].iloc[0]):
            return None
        key = runs["key"].iloc[0]
        record = next(r for r in study.records if r.config.key() == key)
        return cls(metric=str(record.target.get("metric")),
                   value=float(record.target["value"]),
                   direction=str(record.target.get("direction", "min")))

    def line(self, metric: str) -> tuple[float, str] | None:
        """The target line on a panel of ``metric`` (accuracy panels show the error)."""
        if metric != self.metric:
            return None
        if metric.endswith("accuracy"):
            return 1.0 - self.value, f"target: error ≤ {1.0 - self.value:.3g}"
        label = target_label(metric.replace("_", " "), self.direction, self.value, ".3g")
        return self.value, f"target: {label}"


_SEEDS_CAPTION = ("Solid: the median over all seeds of the configuration; dotted: some seeds "
                  "have stopped (at the target, diverged or out of budget) and the median rests "
                  "on those still running, counted in the strip under each panel. Dashed grey: "
                  "the target.")


def _convergence(history: pd.DataFrame, colours, writer: _Writer, slug: str,
                 problem: str, *, target: _Target | None, timing: str) -> list[str]:
    if history.empty or "loss" not in history:
        return [writer.note_missing(problem, "No per-step history was recorded (no run took a "
                                    "step).")]
    threads = timing.split(";")[0]
    axes = [("step", "steps", False), ("seconds", f"seconds (measured, {threads})", False),
            ("gradient_equivalents", "gradient-equivalent passes", False)]
    line = target.line("train_loss") if target is not None else None
    panels, links = [], []
    for column, label, log_x in axes:
        bands = tables.curve_bands(history, x=column, y="loss", log_x=log_x)
        links.append(writer.csv(bands, f"{slug}-loss-vs-{column.replace('_', '-')}"))
        panels.append((f"loss vs {label}", label, bands))
    src = writer.image(lambda p: figures.band_figure(
        panels, colours=colours, path=p, ylabel="mini-batch loss", log_y=True,
        log_x=[a[2] for a in axes], targets=[line] * len(panels), counts=True),
        f"{slug}-loss")
    return [h.figure(src=src, alt=f"loss curves of {problem}", csv=links, caption=(
        "Mini-batch training loss (log scale): median over seeds (line) and interquartile "
        "range (band), against optimizer steps, measured training seconds "
        f"({timing}) and gradient-equivalent passes. " + _SEEDS_CAPTION
        + (" The target is on the train loss over fixed training examples, which the "
           "mini-batch loss only estimates." if line else "")
        + " " + GRADIENT_EQUIVALENTS_DEFINITION))]


def _evaluation(evaluations: pd.DataFrame, colours, writer: _Writer, slug: str,
                problem: str, *, target: _Target | None) -> list[str]:
    metrics_present = [m for m in ("train_loss", "test_loss", "test_accuracy")
                       if m in evaluations and np.isfinite(evaluations[m]).any()]
    if evaluations.empty or not metrics_present:
        return [writer.note_missing(problem, "No finite evaluation values were recorded.")]
    panels, links, lines, labels = [], [], [], []
    for metric in metrics_present:
        shown = evaluations
        label = metric.replace("_", " ")
        if metric.endswith("accuracy"):  # as an error rate, so the log axis opens up near 1
            shown = evaluations.assign(**{metric: 1.0 - evaluations[metric]})
            label = label.replace("accuracy", "error (1 − accuracy)")
        bands = tables.curve_bands(shown, x="step", y=metric)
        links.append(writer.csv(bands, f"{slug}-eval-{metric.replace('_', '-')}"))
        panels.append((label, "steps", bands))
        lines.append(target.line(metric) if target is not None else None)
        labels.append(label)
    src = writer.image(lambda p: figures.band_figure(
        panels, colours=colours, path=p, ylabel=labels, log_y=True, targets=lines,
        counts=True), f"{slug}-evaluation")
    return [h.figure(src=src, alt=f"evaluation metrics of {problem}", csv=links, caption=(
        "Full-split evaluations on log scales (train loss on up to 10,000 training examples, "
        "test loss, and test error = 1 − accuracy, so the region near the target is "
        "readable): median over seeds and interquartile range. " + _SEEDS_CAPTION))]


def _robustness(study: Study, runs: pd.DataFrame, writer: _Writer, slug: str,
                problem: str) -> list[str]:
    parts = []
    for rows, columns in HEATMAP_AXES:
        row_name, column_name = rows.removeprefix("hp."), columns.removeprefix("hp.")
        tables_by_optimizer = []
        for optimizer, group in runs.groupby("optimizer", sort=True):
            if rows not in group or columns not in group:
                continue
            if group[rows].nunique() < 2 or group[columns].nunique() < 2:
                continue
            cells = tables.heatmap_table(group, rows=rows, columns=columns)
            tables_by_optimizer.append(cells.assign(optimizer=optimizer))
        if not tables_by_optimizer:
            parts.append(writer.note_missing(problem, f"No {row_name} × {column_name} map: no "
                                             f"optimizer here was run at two or more values "
                                             f"of both {row_name} and {column_name}."))
            continue
        cells = pd.concat(tables_by_optimizer, ignore_index=True)
        name = f"{slug}-map-{row_name}-{column_name}".replace("_", "-")
        src = writer.image(lambda p, c=cells, r=rows, k=columns: figures.heatmap_figure(
            c, rows=r, columns=k, facet="optimizer", path=p, row_label=r.removeprefix("hp."),
            column_label=k.removeprefix("hp.")), name)
        parts.append(h.figure(src=src, alt=f"{row_name} by {column_name} map",
                              csv=[writer.csv(cells, name)], caption=(
            f"{row_name} × {column_name}: colour is the fraction of runs in the cell that "
            "reached the target (over seeds and all other hyperparameters); the number is "
            "their median steps to target (– where none did). An axis with more than "
            f"{tables.HEATMAP_MAX_VALUES} values (sampled designs) is binned.")))

    sensitivity = metrics.lr_sensitivity(runs, hyperparameter=LEARNING_RATE)
    if len(sensitivity):
        counts = sensitivity.groupby(["optimizer", "batch_size"])["value"].transform("nunique")
        sensitivity = sensitivity[counts >= 2]
    if sensitivity.empty:
        parts.append(writer.note_missing(problem, "No learning-rate sensitivity: no optimizer "
                                         "here was run at two or more learning rates."))
    else:
        several = sensitivity["batch_size"].nunique() > 1
        labelled = sensitivity.assign(label=[
            f"{o} bs={b}" if several else str(o)
            for o, b in zip(sensitivity["optimizer"], sensitivity["batch_size"], strict=True)])
        colours = figures.palette(sorted(labelled["label"].unique()))
        name = f"{slug}-lr-sensitivity"
        src = writer.image(lambda p: figures.sensitivity_figure(
            labelled, colours=colours, path=p, hyperparameter=LEARNING_RATE), name)
        parts.append(h.figure(src=src, alt="learning-rate sensitivity",
                              csv=[writer.csv(sensitivity, name)], caption=(
            "Steps to target at each learning rate (best over the other hyperparameters, "
            "median over seeds) divided by the best learning rate's; crosses: not reached.")))
        widths = sensitivity.groupby(["optimizer", "batch_size"])["width_decades"].first()
        parts.append(h.table(widths.reset_index().rename(
            columns={"width_decades": "decades within 2× of best"})))
    robust = metrics.robustness(runs, optimizer_specs=study.optimizers)
    parts.append(h.paragraph("Robustness (fraction of the swept space reaching the target):"))
    parts.append(h.table(robust, csv=writer.csv(robust, f"{slug}-robustness")))
    return parts


def _scaling(runs: pd.DataFrame, writer: _Writer, slug: str, problem: str) -> list[str]:
    sizes = runs.groupby("optimizer")["batch_size"].nunique()
    if sizes.empty or sizes.max() < 2:
        return [writer.note_missing(problem, "No batch-size scaling: every optimizer here was "
                                    "run at a single batch size.")]
    scaling = metrics.batch_size_scaling(runs[runs["optimizer"].isin(sizes[sizes >= 2].index)])
    critical = metrics.critical_batch_size(runs[runs["optimizer"].isin(sizes[sizes >= 2].index)])
    colours = figures.palette(sorted(scaling["optimizer"].unique()))
    name = f"{slug}-batch-scaling"
    src = writer.image(lambda p: figures.scaling_figure(scaling, colours=colours, path=p), name)
    parts = [h.figure(src=src, alt="batch-size scaling", csv=[writer.csv(scaling, name)],
                      caption="Steps to target against batch size, tuned at every batch size "
                              "(Shallue et al. 2019).")]
    parts.append(h.paragraph("Critical batch size (largest batch within 2× of perfect "
                             "scaling):"))
    parts.append(h.table(critical, csv=writer.csv(critical, f"{slug}-critical-batch")))
    if not np.isfinite(scaling["steps"]).any():
        parts.append(writer.note_missing(problem, "No batch size reached the target."))
    return parts


def _cost(runs: pd.DataFrame, writer: _Writer, slug: str, problem: str) -> list[str]:
    breakdown = tables.phase_breakdown(runs)
    if breakdown.empty:
        return [writer.note_missing(problem, "No phase timings were recorded.")]
    phases = [c for c in breakdown.columns
              if c not in ("arm", "total", "gradient_equivalents_per_step")]
    name = f"{slug}-cost"
    src = writer.image(lambda p: figures.cost_figure(breakdown, phases=phases, path=p), name)
    return [h.figure(src=src, alt="cost per step by phase", csv=[writer.csv(breakdown, name)],
                     caption="Mean measured seconds per step in each phase (forward, backward, "
                             "curvature, solve, update, line search), best configurations."),
            h.table(tables.phase_breakdown_display(breakdown))]


def _diagnostics(history: pd.DataFrame, colours, writer: _Writer, slug: str,
                 problem: str) -> list[str]:
    columns = tables.diagnostic_columns(history)
    if not columns:
        return [writer.note_missing(problem, "No curvature diagnostics: none of the optimizers "
                                    "shown reports per-step values such as damping, step size, "
                                    "CG iterations or residuals (first-order optimizers do "
                                    "not).")]
    panels, links = [], []
    for column in columns:
        bands = tables.curve_bands(history, x="step", y=column)
        label = (f"{column.removeprefix('count_')} (counted)" if column.startswith("count_")
                 else column).replace("_", " ")
        links.append(writer.csv(bands, f"{slug}-diag-{column.replace('_', '-')}"))
        panels.append((label, "steps", bands))
    rows = [panels[i:i + 3] for i in range(0, len(panels), 3)]
    parts = []
    for number, row in enumerate(rows):
        src = writer.image(lambda p, r=row: figures.band_figure(
            r, colours=colours, path=p, ylabel=[t for t, _, _ in r], log_y=True),
            f"{slug}-diagnostics-{number}")
        parts.append(h.figure(src=src, alt="curvature diagnostics", csv=links[3 * number:
                                                                              3 * number + 3],
                              caption="Per-step optimizer diagnostics of the best "
                                      "configurations: median over seeds and interquartile "
                                      "range (log scale where positive)."))
    return parts
