"""``curvebench report --out``: the site is swapped in, and nothing it did not write is lost."""

from __future__ import annotations

import pytest

from curvebench.cli import main
from curvebench.reports.build import MANIFEST
from curvebench.store import RunStore
from tests.report_fixtures import synthetic_record


@pytest.fixture
def results(tmp_path):
    directory = tmp_path / "results"
    RunStore(directory).write(synthetic_record(problem="p", optimizer="o", seed=0,
                                               hyperparameters={"lr": 0.05}))
    return directory


def _report(capsys, *argv):
    code = main(["report", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_into_a_foreign_directory_is_refused_and_deletes_nothing(results, tmp_path,
                                                                        capsys):
    site = tmp_path / "x"
    (site / "data").mkdir(parents=True)
    (site / "data" / "a.csv").write_text("k")
    (site / "problem-mine.html").write_text("mine")
    code, out, err = _report(capsys, results, "--out", site)
    assert code == 2 and "not a curvebench report" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert sorted(p.name for p in site.rglob("*")) == ["a.csv", "data", "problem-mine.html"]
    code, _, _ = _report(capsys, results, "--out", site, "--force")
    assert code == 0 and (site / "index.html").is_file()
    assert (site / "data" / "a.csv").read_text() == "k"
    assert (site / "problem-mine.html").read_text() == "mine"


def test_rewriting_a_report_replaces_only_its_own_files(results, tmp_path, capsys,
                                                         monkeypatch):
    site = tmp_path / "site"
    assert _report(capsys, results, "--out", site)[0] == 0
    assert (site / MANIFEST).is_file()
    first = {p.relative_to(site) for p in site.rglob("*") if p.is_file()}
    (site / "data" / "mine.csv").write_text("keep")
    (site / "notes.txt").write_text("keep")
    stale = site / "data" / "stale-from-an-old-report.csv"
    stale.write_text("old")
    listed = (site / MANIFEST).read_text().replace('"files": [', '"files": [\n"data/'
                                                  'stale-from-an-old-report.csv",')
    (site / MANIFEST).write_text(listed)
    assert _report(capsys, results, "--out", site)[0] == 0
    second = {p.relative_to(site) for p in site.rglob("*") if p.is_file()}
    assert (site / "data" / "mine.csv").read_text() == "keep"
    assert (site / "notes.txt").read_text() == "keep"
    assert not stale.exists()  # the earlier report wrote it, this one does not
    assert first <= second
    assert not [p for p in tmp_path.iterdir() if ".building-" in p.name]  # temp dir removed

    # a build that fails half-way leaves the previous report as it was
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    from curvebench.reports import build

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build, "_index_body", broken)
    code, _, err = _report(capsys, results, "--out", site)
    assert code == 2 and "No space left" in err
    assert {p: p.read_bytes() for p in site.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if ".building-" in p.name]


def test_history_column_names_never_escape_or_break_the_site(tmp_path):
    from curvebench.reports.build import build_site
    from curvebench.reports.study import Study

    record = synthetic_record(problem="p", optimizer="o", seed=0, hyperparameters={"lr": 0.05},
                              curvature=True)
    steps = len(record.history["step"])
    odd = ["../../escape/a b", "x" * 300]
    history = {**record.history, **{name: [1.0] * steps for name in odd}}
    record = type(record)(**{**record.__dict__, "history": history})
    site = tmp_path / "site"
    built = build_site(Study.from_records([record]), out=site, n_bootstrap=20)
    assert not (tmp_path / "escape.csv").exists() and not list(tmp_path.glob("*.csv"))
    files = [p for p in site.rglob("*") if p.is_file()]
    assert all(p.parent in (site, site / "data", site / "img") for p in files)
    assert all(len(p.name) <= 120 and p.name.isascii() for p in files)
    assert len({p.name for p in built.data}) == len(built.data)  # distinct names stay distinct


def test_bidi_override_characters_are_shown_not_obeyed(tmp_path):
    from curvebench.reports.build import build_site
    from curvebench.reports.study import Study

    spoof = "sgd\N{RIGHT-TO-LEFT OVERRIDE}mada\N{POP DIRECTIONAL FORMATTING}"
    record = synthetic_record(problem="p\N{LEFT-TO-RIGHT ISOLATE}x", optimizer=spoof, seed=0,
                              hyperparameters={"lr": 0.05}, steps=30)
    site = build_site(Study.from_records([record]), out=tmp_path / "site", n_bootstrap=20)
    for page in site.pages:
        text = page.read_text(encoding="utf-8")
        assert "\N{RIGHT-TO-LEFT OVERRIDE}" not in text and "\N{LEFT-TO-RIGHT ISOLATE}" not in text
    problem_page = site.pages[1].read_text(encoding="utf-8")
    assert "sgd[U+202E]mada[U+202C]" in problem_page and "p[U+2066]x" in problem_page


@pytest.mark.parametrize("tie", ["same steps", "nothing reached"])
def test_leaderboard_and_loss_curves_pick_the_same_best_configuration_on_ties(tie):
    from curvebench import metrics
    from curvebench.reports import tables
    from curvebench.reports.study import Study

    records = []
    for lr, final in ((0.01, 0.9), (0.02, 0.5), (0.04, 0.7)):  # 0.02: same steps, lower loss
        for seed in (0, 1):
            record = synthetic_record(problem="p", optimizer="o", seed=seed, steps=30,
                                      hyperparameters={"lr": lr})
            reached = tie == "same steps"
            record = type(record)(**{
                **record.__dict__, "status": "reached" if reached else "budget",
                "steps_to_target": 20 if reached else None,
                "seconds_to_target": 0.02 if reached else None,
                "final": {**record.final, "train_loss": final}})
            records.append(record)
    study = Study.from_records(records)
    board = metrics.steps_to_target_summary(study.runs, n_bootstrap=10)
    (arm,) = tables.best_arms(study.runs)["arm"]
    assert arm == "o lr=0.02"
    if tie == "same steps":
        assert board["best_hyperparameters"].iloc[0] == "lr=0.02"
    (tuned,) = metrics.default_vs_tuned(study.runs, optimizer_specs={})["tuned_hyperparameters"]
    assert tuned in ("lr=0.02", "—")
