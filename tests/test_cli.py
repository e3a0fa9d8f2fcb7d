"""Command line: list/run/show, resume, and every user error exits 2 with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from curvebench.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_registries(capsys):
    from curvebench.optimizers import OPTIMIZERS
    from curvebench.problems import PROBLEMS

    code, out, _ = _run(capsys, "list")
    assert code == 0
    for name in PROBLEMS.names() + OPTIMIZERS.names():
        assert name in out


def test_run_product_resume_and_show(tmp_path, capsys):
    out_dir = tmp_path / "results"
    args = ["run", "--problem", "digits-logreg,synthetic-linreg", "--optimizer", "sgd,adam",
            "--seed", "0,1", "--steps", "3", "--out", str(out_dir)]
    code, out, _ = _run(capsys, *args)
    assert code == 0 and "8 run(s) stored" in out
    files = sorted(out_dir.glob("run-*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert len(files) == 8
    code, out, _ = _run(capsys, *args)
    assert code == 0 and "0 run(s) stored" in out and "8 already stored" in out
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    code, out, _ = _run(capsys, "show", str(out_dir))
    assert code == 0 and "status" in out and "Leaderboard" in out
    runs_table = out.split("Leaderboard")[0]
    assert runs_table.count("digits-logreg") == 4
    (out_dir / "run-ffffffffffffffff.json").write_text("{broken")
    code, out, err = _run(capsys, "show", str(out_dir))
    assert code == 0 and "skipped unreadable run-ffffffffffffffff.json" in err


def test_hyperparameters_are_recorded(tmp_path, capsys):
    code, out, _ = _run(capsys, "run", "--problem", "digits-logreg", "--optimizer", "sgd",
                        "--hp", "lr=0.05", "--hp", "momentum=0", "--steps", "2", "--threads", "1",
                        "--out", str(tmp_path))
    assert code == 0 and "lr=0.05" in out and "momentum=0" in out
    from curvebench.store import RunStore

    (record,) = RunStore(tmp_path).scan()[0]
    assert record.environment["threads"] == 1


BAD_INPUTS = {
    "unknown problem": (["--problem", "digits-mpl"], "unknown problem 'digits-mpl' (did you mean"),
    "unknown optimizer": (["--optimizer", "adamm"], "unknown optimizer 'adamm' (did you mean"),
    "unknown hyperparameter": (["--hp", "learning_rate=0.1"], "no hyperparameter 'learning_rate'"),
    "ill-typed hyperparameter": (["--hp", "lr=fast"], "expects float"),
    "malformed hyperparameter": (["--hp", "lr"], "expected NAME=VALUE"),
    "negative learning rate": (["--hp", "lr=-0.1"], "Invalid learning rate"),
    "infinite learning rate": (["--hp", "lr=inf"], "'lr' must be finite"),
    "overflowing learning rate": (["--hp", "lr=1e400"], "'lr' must be finite"),
    "negative infinite momentum": (["--hp", "momentum=-inf"], "'momentum' must be finite"),
    "zero steps": (["--steps", "0"], "must be positive"),
    "negative batch size": (["--batch-size", "-4"], "must be positive"),
    "batch size above the training set": (["--batch-size", "5000"],
                                          "larger than the training set of 'digits-logreg'"),
    "bad seed": (["--seed", "x"], "seeds must be integers"),
    "huge seed": (["--seed", "99999999999999999999999"], "seeds must be between 0 and"),
    "seed past 32 bits": (["--seed", "0,4294967296"], "seeds must be between 0 and"),
    "a million threads": (["--threads", "1000000"], "at most 512 threads"),
    "zero threads": (["--threads", "0"], "must be positive"),
    "missing data dir": (["--data-dir", "{tmp}/nowhere"], "does not exist"),
    "cuda": (["--device", "cuda"], "CUDA was requested"),
    "unknown device": (["--device", "tpu"], "unknown device"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    extra, message = BAD_INPUTS[case]
    if case == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    options = {"--problem": "digits-logreg", "--optimizer": "sgd", "--steps": "2",
               "--out": str(tmp_path / "out")}
    for key, value in zip(extra[::2], extra[1::2], strict=True):
        options[key] = value.format(tmp=tmp_path)
    argv = ["run"]
    for key, value in options.items():
        argv += [key, value]
    if len(extra) == 1:
        argv += extra
    code, out, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "out").exists()


def test_dataset_missing_offline(tmp_path, capsys):
    code, _, err = _run(capsys, "run", "--problem", "mnist-2c2d", "--optimizer", "sgd",
                        "--offline", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train-images-idx3-ubyte.gz" in err and "--data-dir" in err
    assert not (tmp_path / "o").exists()


def test_results_dir_not_writable(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _run(capsys, "run", "--problem", "digits-logreg", "--optimizer", "sgd",
                        "--steps", "2", "--out", str(blocker / "results"))
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "x"


def test_show_missing_directory(tmp_path, capsys):
    code, _, err = _run(capsys, "show", str(tmp_path / "none"))
    assert code == 2 and "does not exist" in err


def test_console_entry_points():
    for command in (["curvebench", "--version"], [sys.executable, "-m", "curvebench", "--version"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.startswith("curvebench ")
    done = subprocess.run([sys.executable, "-m", "curvebench", "run", "--problem", "nope",
                           "--optimizer", "sgd"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
