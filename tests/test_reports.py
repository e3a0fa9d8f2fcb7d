"""Static HTML reports, Markdown tables and data export (``curvebench report``)."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from curvebench.cli import main
from curvebench.reports import tables
from curvebench.reports.build import build_site, problem_slug
from curvebench.reports.study import Study, gradient_equivalents
from curvebench.store import RunStore
from tests.report_fixtures import HOSTILE, synthetic_record, synthetic_records


class _Links(HTMLParser):
    """Collects every src/href, every tag name and the visible text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.targets += [value for name, value in attrs if name in ("src", "href") and value]

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _check_self_contained(site: Path) -> None:
    """No scripts, no absolute or remote URL, every link and image a file of the site."""
    for page in site.glob("*.html"):
        parsed = _parse(page)
        assert "script" not in parsed.tags, page.name
        for target in parsed.targets:
            assert not re.match(r"^[a-z]+:", target) and not target.startswith("/"), target
            if target.startswith("#"):
                assert f'id="{target[1:]}"' in page.read_text(encoding="utf-8"), target
            else:
                assert (site / target).is_file(), f"{page.name}: dead link {target}"


@pytest.fixture(scope="module")
def study_site(tmp_path_factory) -> tuple[Study, Path]:
    study = Study.from_records(synthetic_records(problems=("synth-mlp",), seeds=(0, 1)))
    out = tmp_path_factory.mktemp("site")
    site = build_site(study, out=out, n_bootstrap=100)
    assert site.pages[0] == out / "index.html"
    return study, out


def test_gradient_equivalents_follow_the_stated_definition():
    history = {"step": [1, 2, 3], "count_forward_passes": [1, 2, float("nan")],
               "count_backward_passes": [1, 1, 1], "count_ggn_products": [0, 3, 5],
               "count_cg_iterations": [0, 3, 5]}  # CG counts through its GGN products only
    expected = np.cumsum([(1 + 1) / 2 + 0, (2 + 1) / 2 + 3, (0 + 1) / 2 + 5])
    np.testing.assert_allclose(gradient_equivalents(history), expected)
    assert gradient_equivalents({"step": []}).shape == (0,)


def test_curve_bands_are_median_and_quartiles_over_the_seeds_present():
    curves = pd.DataFrame({
        "key": ["a"] * 3 + ["b"] * 3 + ["c"] * 2,
        "arm": ["x"] * 8,
        "step": [1, 2, 3, 1, 2, 3, 1, 2],
        "loss": [1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 5.0, 6.0],
    })
    bands = tables.curve_bands(curves, x="step", y="loss", points=3)
    np.testing.assert_allclose(bands["x"], [1, 2, 3])
    np.testing.assert_allclose(bands["median"], [3.0, 4.0, 4.0])
    np.testing.assert_allclose(bands["q25"], [2.0, 3.0, 3.5])
    np.testing.assert_allclose(bands["q75"], [4.0, 5.0, 4.5])
    assert bands["n"].tolist() == [3, 3, 2]  # run "c" stopped at step 2
    late = pd.concat([curves, pd.DataFrame({"key": "d", "arm": "x", "step": [2, 3],
                                            "loss": [9.0, 9.0]})])  # a slow first step
    bands = tables.curve_bands(late, x="step", y="loss", points=3)
    assert bands["n"].tolist() == [3, 4, 3] and bands["running"].tolist() == [4, 4, 3]


def test_best_arm_is_the_smallest_median_with_unreached_as_infinite():
    runs = pd.DataFrame({
        "problem": "p", "optimizer": "o", "batch_size": 8, "seed": [0, 1, 2, 0, 1, 2],
        "arm": ["fast-but-flaky"] * 3 + ["steady"] * 3,
        "steps_to_target": [10, math.nan, math.nan, 50, 60, 70],
        "final_train_loss": [0.1] * 6,
    })
    best = tables.best_arms(runs)
    assert best["arm"].tolist() == ["steady"] and best["median_steps"].item() == 60


def test_site_has_every_section_and_is_self_contained(study_site):
    study, out = study_site
    _check_self_contained(out)
    pages = sorted(p.name for p in out.glob("problem-*.html"))
    assert pages == sorted(f"problem-{problem_slug(p)}.html" for p in study.problems())
    page = (out / pages[0]).read_text(encoding="utf-8")
    for heading in ("Training loss", "Evaluation metrics", "Robustness", "Batch-size scaling",
                    "Cost per step", "Curvature diagnostics", "All runs"):
        assert f"<h2>{heading}</h2>" in page
    for figure in ("loss", "evaluation", "map-lr-damping", "map-cg-iterations-batch-size",
                   "lr-sensitivity", "batch-scaling", "cost", "diagnostics-0"):
        assert f"-{figure}.png" in page, figure
    assert 'class="missing"' not in page  # the synthetic study has every axis
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "performance-profiles.png" in index and "Gradient-equivalent passes =" in index
    assert "0123456789abcdef" in index  # provenance: git sha of the runs
    for image in (out / "img").glob("*.png"):
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 5000


def test_every_figure_links_its_numbers(study_site):
    study, out = study_site
    page = out / f"problem-{problem_slug(study.problems()[0])}.html"
    figures = re.findall(r"<figure>(.*?)</figure>", page.read_text(encoding="utf-8"), re.S)
    assert len(figures) >= 8
    for figure in figures:
        csvs = re.findall(r'href="(data/[^"]+\.csv)"', figure)
        assert csvs, figure[:200]
        for csv in csvs:
            assert len(pd.read_csv(out / csv)) > 0, csv
    board = pd.read_csv(out / "data" / "leaderboard.csv")
    assert set(board["problem"]) == set(study.problems())
    assert (board["best_steps_low"] <= board["best_steps"]).all()


def test_leaderboard_interval_contains_the_best_median(study_site):
    study, _ = study_site
    board = tables.leaderboard(study, n_bootstrap=100)
    reached = board[np.isfinite(board["best_steps"])]
    assert len(reached)
    assert (reached["best_steps_low"] <= reached["best_steps"]).all()
    assert (reached["best_steps"] <= reached["best_steps_high"]).all()
    text = tables.leaderboard_display(board)["best steps→target [95% CI]"].iloc[0]
    assert re.fullmatch(r"[\d.]+ \[[\d.]+, [\d.∞]+\]|not reached", text)


def _hostile_spec():
    from curvebench.optimizers import OptimizerSpec, torch_optimizer_factory

    return OptimizerSpec(name=HOSTILE, description="an optimizer with a hostile name",
                         factory=torch_optimizer_factory(torch.optim.SGD),
                         defaults={"lr": 0.1})


def test_registered_hostile_optimizer_name_shows_as_text(tmp_path, capsys):
    from curvebench.optimizers import OPTIMIZERS, register_optimizer

    register_optimizer(_hostile_spec())
    try:
        results, site = tmp_path / "results", tmp_path / "site"
        assert main(["run", "--problem", "digits-logreg", "--optimizer", f"{HOSTILE},sgd",
                     "--steps", "5", "--out", str(results)]) == 0
        assert main(["report", str(results), "--out", str(site)]) == 0
        capsys.readouterr()
        assert main(["report", str(results), "--format", "md"]) == 0
    finally:
        OPTIMIZERS.unregister(HOSTILE)
    markdown = capsys.readouterr().out
    assert HOSTILE not in markdown and "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    _check_self_contained(site)
    for page in site.glob("*.html"):
        source = page.read_text(encoding="utf-8")
        assert "<script" not in source.lower(), page.name
    problem_page = next(site.glob("problem-*.html"))
    assert HOSTILE in "".join(_parse(problem_page).text)  # shown as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in problem_page.read_text(encoding="utf-8")


def test_hostile_problem_and_hyperparameter_names_are_escaped(tmp_path):
    record = synthetic_record(problem=f"p{HOSTILE}", optimizer=HOSTILE,
                              hyperparameters={HOSTILE: 1.0, "lr": 0.05}, seed=0)
    site = build_site(Study.from_records([record]), out=tmp_path, n_bootstrap=20)
    _check_self_contained(tmp_path)
    assert all(re.fullmatch(r"[a-z0-9.-]+", p.name) for p in tmp_path.rglob("*") if p.is_file())
    for page in site.pages:
        assert "<script" not in page.read_text(encoding="utf-8").lower()


def test_incomplete_study_says_what_is_missing(tmp_path):
    # One seed, no run reaches the target, no damping/CG/batch axes, one run that errored.
    records = [synthetic_record(problem="lonely", optimizer="sgd", seed=0, steps=30,
                                hyperparameters={"lr": lr}) for lr in (1e-4, 1e-3)]
    error = synthetic_record(problem="lonely", optimizer="adam", seed=0, steps=30,
                             hyperparameters={"lr": 1e-3}, status="error")
    error = type(error)(**{**error.__dict__, "steps_run": 0, "history": {"step": []},
                           "error": "RuntimeError: <b>boom</b>"})
    site = build_site(Study.from_records([*records, error]), out=tmp_path, n_bootstrap=20)
    _check_self_contained(tmp_path)
    page = next(tmp_path.glob("problem-*.html")).read_text(encoding="utf-8")
    for note in ("No run reached the target", "One seed per configuration",
                 "No lr × damping map", "No cg_iterations × batch_size map",
                 "No batch-size scaling", "No curvature diagnostics"):
        assert note in page, note
        assert any(note in line for line in site.missing)
    assert "RuntimeError: &lt;b&gt;boom&lt;/b&gt;" in page
    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "no performance profiles" in index


def test_empty_and_partly_unreadable_store(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    assert main(["report", str(results), "--out", str(tmp_path / "empty")]) == 0
    assert "nothing to report" in (tmp_path / "empty" / "index.html").read_text()
    RunStore(results).write(synthetic_record(problem="p", optimizer="o", seed=0,
                                             hyperparameters={"lr": 0.05}))
    (results / "run-ffffffffffffffff.json").write_text("{broken")
    assert main(["report", str(results), "--out", str(tmp_path / "site")]) == 0
    _, err = capsys.readouterr()
    assert "skipped unreadable run-ffffffffffffffff.json" in err
    index = (tmp_path / "site" / "index.html").read_text()
    assert "could not be read" in index and "run-ffffffffffffffff.json" in index


def test_markdown_report_has_the_tables_of_show(tmp_path, capsys):
    results = tmp_path / "results"
    records = synthetic_records(problems=("p1",), seeds=(0, 1), curvature_lrs=(0.3,),
                                dampings=(1e-3,), cg_iterations=(3,), batch_sizes=(128,))
    for record in records:
        RunStore(results).write(record)
    assert main(["report", str(results), "--format", "md"]) == 0
    markdown = capsys.readouterr().out
    loaded = Study.load(results)
    assert markdown == tables.tables_text(loaded.records, fmt="md")
    text = tables.tables_text(loaded.records, fmt="text")
    for title, table in tables.study_tables(loaded):
        assert f"## {title}" in markdown and title in text
        for value in table.astype(str).to_numpy().ravel():
            assert value in text and value.replace("|", "\\|") in markdown
    assert "best steps→target [95% CI]" in markdown
    out_file = tmp_path / "tables.md"
    assert main(["report", str(results), "--format", "md", "--out", str(out_file)]) == 0
    assert out_file.read_text() == markdown


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_run_dataframe_export(tmp_path, capsys, fmt):
    pytest.importorskip("pyarrow") if fmt == "parquet" else None
    results = tmp_path / "results"
    for record in synthetic_records(problems=("p1",), seeds=(0,), batch_sizes=(128,)):
        RunStore(results).write(record)
    for mode in ("fast", 2.0, True):  # one hyperparameter, three types across optimizers
        RunStore(results).write(synthetic_record(problem="p1", optimizer=f"o{mode}", seed=0,
                                                 hyperparameters={"lr": 0.05, "mode": mode}))
    out = tmp_path / f"runs.{fmt}"
    assert main(["report", str(results), "--format", fmt, "--out", str(out)]) == 0
    frame = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    expected = Study.load(results).runs
    assert sorted(frame["key"]) == sorted(expected["key"])
    assert {"problem", "optimizer", "status", "steps_to_target", "hp.lr",
            "gradient_equivalents"} <= set(frame.columns)


def test_asv_html_is_copied_and_linked(tmp_path):
    asv = tmp_path / "asv-html"
    asv.mkdir()
    (asv / "index.html").write_text("<html><body>asv</body></html>")
    results = tmp_path / "results"
    RunStore(results).write(synthetic_record(problem="p", optimizer="o", seed=0,
                                             hyperparameters={"lr": 0.05}))
    site = tmp_path / "site"
    assert main(["report", str(results), "--out", str(site), "--asv-html", str(asv)]) == 0
    assert (site / "asv" / "index.html").is_file()
    assert 'href="asv/index.html"' in (site / "index.html").read_text()


@pytest.mark.parametrize("argv, message", [
    (["report", "{missing}"], "does not exist"),
    (["report", "{results}", "--format", "csv"], "needs --out FILE"),
    (["report", "{results}", "--format", "csv", "--out", "{results}"], "is a directory"),
    (["report", "{results}", "--format", "pdf"], "invalid choice"),
    (["report", "{results}", "--asv-html", "{missing}"], "no asv index.html"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    results = tmp_path / "results"
    results.mkdir()
    paths = {"missing": str(tmp_path / "nope"), "results": str(results)}
    assert main([a.format(**paths) for a in argv]) == 2
    out, err = capsys.readouterr()
    assert message in err and err.count("\n") == 1 and out == ""


def test_problem_slugs_are_safe_and_distinct():
    names = ["digits-mlp", "Digits-MLP", HOSTILE, "../../etc", "", "ä"]
    slugs = [problem_slug(n) for n in names]
    assert len(set(slugs)) == len(slugs)
    assert all(re.fullmatch(r"[a-z0-9-]+", s) for s in slugs)


def test_heatmap_cells_count_runs_and_bin_sampled_axes():
    runs = pd.DataFrame({
        "hp.lr": [0.1, 0.1, 0.1, 1.0], "hp.damping": [1e-3, 1e-3, 1e-2, 1e-3],
        "seed": [0, 1, 0, 0], "steps_to_target": [10.0, math.nan, 30.0, math.nan]})
    cells = tables.heatmap_table(runs, rows="hp.lr", columns="hp.damping")
    cell = cells[(cells["hp.lr"] == 0.1) & (cells["hp.damping"] == 1e-3)].iloc[0]
    assert cell["runs"] == 2 and cell["reached_fraction"] == 0.5 and cell["median_steps"] == 10
    sampled = pd.DataFrame({"hp.lr": np.geomspace(1e-3, 1.0, 40), "hp.damping": 1.0,
                            "seed": 0, "steps_to_target": 5.0})
    cells = tables.heatmap_table(sampled, rows="hp.lr", columns="hp.damping", max_values=4)
    assert cells["runs"].tolist() == [10, 10, 10, 10]
    np.testing.assert_allclose(cells["hp.lr"], np.geomspace(1e-3, 1.0, 9)[1::2])


@pytest.fixture(scope="module")
def glance_site(tmp_path_factory) -> Path:
    """One problem where the curvature method wins in steps but costs 4× per step (so the
    first-order method wins in seconds), plus a method whose damping sits at its floor."""
    records = synthetic_records(problems=("synth-mlp",), seeds=(0, 1, 2), batch_sizes=(128,),
                                dampings=(1e-4,), cg_iterations=(10,))
    records += [synthetic_record(problem="synth-mlp", optimizer="sgn-stall", seed=seed,
                                 curvature=True, stall=True,
                                 hyperparameters={"lr": 0.03, "damping": 1e-3,
                                                  "damping_min": 1e-6})
                for seed in (0, 1, 2)]
    out = tmp_path_factory.mktemp("glance")
    build_site(Study.from_records(records), out=out, n_bootstrap=200)
    return out


def _section(page: Path, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>',
                      page.read_text(encoding="utf-8"), re.S)
    assert match, anchor
    return match.group(1)


def _rows(fragment: str) -> list[list[str]]:
    """The cells (as text) of the first table in an HTML fragment."""
    body = re.search(r"<tbody>(.*?)</tbody>", fragment, re.S).group(1)
    return [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_headline_names_the_winners_with_intervals(glance_site):
    index = glance_site / "index.html"
    assert index.read_text(encoding="utf-8").index('id="glance"') < \
        index.read_text(encoding="utf-8").index('id="study"')  # the first section
    glance = _section(index, "glance")
    [row] = _rows(glance)
    problem, target, steps, seconds, robust, cost = row
    assert problem == "synth-mlp" and target == "train_loss ≤ 0.3"
    interval = r"[\d.]+ \[[\d.]+, [\d.]+\]"
    assert re.match(rf"sgn-synth {interval}; (ahead of|intervals overlap) sgd-synth", steps)
    assert re.match(rf"sgd-synth {interval}; (ahead of|intervals overlap) ", seconds)
    assert re.match(r"sgn-\w+: 100% of the swept space", robust)
    assert re.match(r"sgd-synth [\d.]+ ms \(×1\); .*sgn-synth [\d.]+ ms \(×4\)", cost)
    assert "In steps to target, sgn-synth reaches it first on 1 of 1" in glance
    assert "In seconds to target, sgd-synth reaches it first on 1 of 1" in glance
    assert "threads: 2; load: not recorded" in glance


def test_method_table_is_sorted_and_scales_to_many_methods():
    records = [synthetic_record(problem="p", optimizer=f"method-{i:02d}", seed=seed,
                                hyperparameters={"lr": 0.05 * 4.0 ** -i})
               for i in range(25) for seed in (0, 1)]
    study = Study.from_records(records)
    methods = tables.method_table(tables.leaderboard(study, n_bootstrap=50), study.runs)
    steps = methods["best_steps"].to_numpy()
    assert len(methods) == 25 and (np.diff(steps[np.isfinite(steps)]) >= 0).all()
    [row] = tables.headline(methods).to_dict("records")
    assert row["steps_winner"] == "method-00"  # the best learning rate
    assert row["cost per step"].count(" ms ") <= 3  # cheapest and winners, not 25
    assert len(tables.methods_display(methods)) == 25


def test_curves_show_targets_and_how_many_seeds_remain(monkeypatch, tmp_path):
    from curvebench.reports import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda figure, path: drawn.append(figure) or path)
    curves = pd.DataFrame({"key": ["a"] * 4 + ["b"] * 2, "arm": ["x"] * 6,
                           "step": [1, 2, 3, 4, 1, 2], "loss": [4.0, 2, 1, 0.5, 4, 2]})
    bands = tables.curve_bands(curves, x="step", y="loss", points=4)
    figures.band_figure([("loss", "steps", bands)], colours={}, path=tmp_path / "f.png",
                        ylabel="loss", log_y=True, targets=[(0.7, "target")], counts=True)
    curve_axes, strip = drawn[0].axes
    assert curve_axes.get_yscale() == "log"
    lines = {line.get_label(): line for line in curve_axes.get_lines()}
    assert list(lines["target"].get_ydata()) == [0.7, 0.7]
    solid = lines["x"].get_ydata()  # all seeds: the first two points only
    assert np.isfinite(solid).tolist() == [True, True, False, False]
    assert list(strip.get_lines()[0].get_ydata()) == [2, 2, 1, 1, 0]


def test_problem_page_curves_have_targets_error_axis_and_threads(glance_site):
    page = next(glance_site.glob("problem-*.html")).read_text(encoding="utf-8")
    assert "Dashed grey: the target" in page and "seeds running" not in page  # in the figure
    assert "measured training seconds (threads: 2; load: not recorded)" in page
    accuracy = pd.read_csv(next((glance_site / "data").glob("*-eval-test-accuracy.csv")))
    for _, arm in accuracy.groupby("arm"):  # shown as the error, 1 − accuracy: it falls
        assert arm["median"].iloc[-1] < arm["median"].iloc[0]


def test_diagnostics_note_names_a_method_stuck_at_its_damping_floor(glance_site, study_site):
    page = next(glance_site.glob("problem-*.html")).read_text(encoding="utf-8")
    note = re.search(r'<div class="diagnostics">(.*?)</div>', page, re.S).group(1)
    assert "sgn-stall: damping sat at its floor (1e-06) for most of the run in 3 of 3" in note
    assert "sgn-stall: CG stopped far from solving the damped system in 3 of 3" in note
    assert "sgn-synth" not in note and "sgd-synth" not in note
    index = (glance_site / "index.html").read_text(encoding="utf-8")
    assert "Damping sat at its floor for most of the run" in index
    assert "synth-mlp: sgn-stall (3 of 3 runs)." in index
    _, healthy = study_site
    assert 'class="diagnostics"' not in (healthy / "index.html").read_text(encoding="utf-8")


def test_diagnostics_report_divergence_and_runs_that_never_reach():
    record = synthetic_record(problem="p", optimizer="o", seed=0, steps=20,
                              hyperparameters={"lr": 1e-4}, status="diverged")
    findings = tables.stall_diagnostics(Study.from_records([record]))
    assert findings["kind"].tolist() == ["diverged", "unreached"]
    assert findings["finding"].tolist() == [
        "diverged in 1 of 1 runs (non-finite or exploding loss).",
        "none of its 1 runs reached the target."]


def test_timing_conditions_say_threads_unknown_and_mixed():
    from curvebench.reports.study import timing_conditions

    def record(seed, threads):
        made = synthetic_record(problem="p", optimizer="o", seed=seed,
                                hyperparameters={"lr": 0.05})
        environment = {k: v for k, v in made.environment.items() if k != "threads"}
        if threads is not None:
            environment["threads"] = threads
        return type(made)(**{**made.__dict__, "environment": environment})

    runs = Study.from_records([record(0, None)]).runs
    assert timing_conditions(runs) == "threads: unknown; load: not recorded"
    runs = Study.from_records([record(0, 1), record(1, 2)]).runs
    assert timing_conditions(runs).startswith("threads: mixed 1, 2")


def test_asv_html_with_unbundled_cdn_assets_is_left_out_and_said(tmp_path):
    from curvebench.reports.asv_offline import ASSETS, VENDORED

    asv = tmp_path / "asv-html"
    asv.mkdir()
    bundled = '<script src="https://cdn.example.org/x/jquery-3.3.1.min.js" integrity="sha256-x">'
    (asv / "index.html").write_text(f"<html><head>{bundled}</script></head></html>")
    site = build_site(Study.from_records([synthetic_record(
        problem="p", optimizer="o", seed=0, hyperparameters={"lr": 0.05})]),
        out=tmp_path / "site", asv_html=asv, n_bootstrap=20)
    assert '<script src="vendor/jquery.min.js">' in (site.out / "asv/index.html").read_text()
    assert (site.out / "asv/vendor/jquery.min.js").read_bytes() == \
        (ASSETS / "jquery.min.js").read_bytes()
    assert all((ASSETS / name).is_file() for name in VENDORED.values())
    (asv / "index.html").write_text('<html><head><script src="//cdn.example.org/vue-9.js">'
                                    "</script></head></html>")
    site = build_site(Study.from_records([synthetic_record(
        problem="p", optimizer="o", seed=0, hyperparameters={"lr": 0.05})]),
        out=tmp_path / "site", asv_html=asv, n_bootstrap=20)
    assert not (site.out / "asv").exists()
    index = (site.out / "index.html").read_text()
    assert "asv benchmark pages are left out" in index and "vue-9.js" in index
    assert 'href="asv/index.html"' not in index


def test_profile_table_counts_wins_per_method_best_first(study_site):
    study, out = study_site
    table = tables.profile_table(study.runs).set_index("method")
    assert table.index.tolist() == ["sgn-synth", "sgd-synth"]  # fewer steps, 4× the cost
    assert table.loc["sgn-synth", "steps ≤ 1× best"] == 1.0
    assert table.loc["sgd-synth", "seconds ≤ 1× best"] == 1.0
    assert (table["solved"] == 1.0).all() and (table["steps ≤ 4× best"] == 1.0).all()
    assert "performance-profile-table.csv" in (out / "index.html").read_text(encoding="utf-8")


def test_headline_reads_the_records_only(monkeypatch):
    import curvebench.optimizers

    study = Study.from_records(synthetic_records(problems=("p",), seeds=(0, 1),
                                                 batch_sizes=(128,)))

    class Forbidden:
        def __getattr__(self, name):
            raise AssertionError("the headline consulted the live optimizer registry")

        def __contains__(self, name):
            raise AssertionError("the headline consulted the live optimizer registry")

    monkeypatch.setattr(curvebench.optimizers, "OPTIMIZERS", Forbidden())
    methods = tables.method_table(tables.leaderboard(study, n_bootstrap=20), study.runs)
    assert tables.headline(methods)["steps_winner"].tolist() == ["sgn-synth"]
    assert tables.overall_summary(study.runs, methods)
    assert tables.stall_diagnostics(study).empty
    assert len(tables.profile_table(study.runs)) == 2
