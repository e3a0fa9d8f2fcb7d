"""Run store: atomic writes, resume, corrupt files reported and never touched."""

from __future__ import annotations

import json
import os

import pytest

from curvebench.harness import run
from curvebench.problems import Budget
from curvebench.store import RunStore, StoreError


@pytest.fixture(scope="module")
def record():
    return run(problem="digits-logreg", optimizer="sgd", budget=Budget(max_steps=3))


def test_write_load_and_dataframe(tmp_path, record):
    store = RunStore(tmp_path / "runs")
    path = store.write(record)
    assert path.name == f"run-{record.config.key()}.json"
    assert store.contains(record.config)
    assert json.loads(path.read_text())["schema_version"] == 1
    frame = store.dataframe()
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["problem"] == "digits-logreg" and row["optimizer"] == "sgd"
    assert row["hp.lr"] == record.config.hyperparameter_dict["lr"]
    assert row["status"] == record.status and row["counter.forward_passes"] == 3
    assert [p.name for p in tmp_path.joinpath("runs").iterdir()] == [path.name]  # no temp files


def test_existing_record_is_not_overwritten_without_force(tmp_path, record):
    store = RunStore(tmp_path)
    path = store.write(record)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        store.write(record)
    assert path.read_bytes() == before
    store.write(record, overwrite=True)


def test_write_is_atomic(tmp_path, record, monkeypatch):
    store = RunStore(tmp_path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.write(record)
    assert list(tmp_path.iterdir()) == []  # neither a partial record nor a temp file


def test_corrupt_file_reported_skipped_and_kept(tmp_path, record):
    store = RunStore(tmp_path)
    store.write(record)
    corrupt = tmp_path / "run-0000000000000000.json"
    corrupt.write_text('{"schema_version": 1, "config": ')
    wrong_schema = tmp_path / "run-1111111111111111.json"
    wrong_schema.write_text('{"schema_version": 99}')
    records, unreadable = store.scan()
    assert len(records) == 1
    assert {u.path.name for u in unreadable} == {corrupt.name, wrong_schema.name}
    assert all("\n" not in u.reason for u in unreadable)
    assert corrupt.read_text() == '{"schema_version": 1, "config": '


def test_unreadable_file_at_a_configs_path_is_never_replaced(tmp_path, record):
    store = RunStore(tmp_path)
    target = store.path_for(record.config)
    target.write_text("garbage")
    assert not store.contains(record.config)
    written = store.write(record)
    assert written != target and target.read_text() == "garbage"
    assert len(store.scan()[0]) == 1


def test_unwritable_directory_is_a_store_error(tmp_path, record):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="not writable"):
        RunStore(blocker / "runs").write(record)
