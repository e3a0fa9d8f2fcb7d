"""Bad inputs beyond single flags: empty paths, empty studies, unreachable schedulers."""

from __future__ import annotations

import pytest

from curvebench.cli import main

TINY_STUDY = ('problems = ["synthetic-linreg"]\nseeds = [0]\n[budget]\nmax_steps = 2\n'
              "[optimizers.sgd]\n")


@pytest.mark.parametrize("command", ["run", "sweep", "report"])
def test_an_empty_out_is_refused_and_the_current_directory_left_alone(command, tmp_path,
                                                                      monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "s.toml").write_text(TINY_STUDY)
    (tmp_path / "results").mkdir()
    monkeypatch.chdir(work)
    argv = {"run": ["run", "--problem", "synthetic-linreg", "--optimizer", "sgd", "--steps",
                    "2"],
            "sweep": ["sweep", str(tmp_path / "s.toml")],
            "report": ["report", str(tmp_path / "results")]}[command]
    assert main([*argv, "--out", ""]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "must not be empty" in err and len(err.splitlines()) == 1
    assert list(work.iterdir()) == []


def test_a_study_with_only_incompatible_pairs_exits_2_and_creates_nothing(tmp_path, capsys):
    study = tmp_path / "s.toml"
    study.write_text('problems = ["digits-cnn"]\n[budget]\nmax_steps = 2\n[optimizers.kfra]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no runs" in err and "kfra on digits-cnn" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_an_unreachable_dask_scheduler_leaves_no_out_behind(tmp_path, capsys, monkeypatch):
    distributed = pytest.importorskip("dask.distributed")

    def unreachable(address, **kwargs):  # what Client raises after its connect timeout
        raise OSError(f"Timed out trying to connect to {address} after 20 s")

    monkeypatch.setattr(distributed, "Client", unreachable)
    study = tmp_path / "s.toml"
    study.write_text(TINY_STUDY)
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out), "--executor", "dask", "--scheduler",
                 "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to the Dask scheduler" in err.splitlines()[-1]
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("k")  # a directory that was there before is never removed
    assert main(["sweep", str(study), "--out", str(out), "--executor", "dask", "--scheduler",
                 "tcp://127.0.0.1:9"]) == 2
    assert (out / "keep.txt").read_text() == "k"


def test_a_diverged_runs_final_metrics_are_not_those_of_step_0():
    import math

    from curvebench.harness import run
    from curvebench.problems import Budget

    record = run(problem="synthetic-linreg", optimizer="sgd", hyperparameters={"lr": 1e3},
                 budget=Budget(max_steps=40), eval_every=20)
    assert record.status == "diverged" and 0 < record.steps_run < 20
    assert record.evaluations["step"][-1] == 0  # only the initial evaluation happened
    for metric in ("train_loss", "test_loss"):
        assert math.isnan(record.final[metric]), record.final
    assert record.final["minibatch_loss"] == record.history["loss"][-1] or math.isnan(
        record.final["minibatch_loss"])
