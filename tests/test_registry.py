"""Registries: discovery of package modules and entry points, duplicates, unknown names."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import pytest

from curvebench.registry import DuplicateNameError, Registry, UnknownNameError


@dataclass(frozen=True)
class Item:
    name: str


def test_entry_point_plugins_are_loaded(monkeypatch):
    registry: Registry[Item] = Registry(kind="thing", package="curvebench.problems",
                                        entry_point_group="curvebench.things")
    calls = []

    class FakeEntryPoint:
        def load(self):
            def register():
                calls.append(1)
                registry.register(Item("from-plugin"))
            return register

    real = importlib.metadata.entry_points

    def fake_entry_points(**kwargs):
        if kwargs.get("group") == "curvebench.things":
            return [FakeEntryPoint()]
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    assert "from-plugin" in registry.names()
    registry.names()
    assert calls == [1]  # discovery happens once


def test_duplicates_unknown_and_invalid_names():
    registry: Registry[Item] = Registry(kind="thing", package="curvebench.problems",
                                        entry_point_group="curvebench.nothing")
    registry.register(Item("alpha-one"))
    with pytest.raises(DuplicateNameError):
        registry.register(Item("alpha-one"))
    with pytest.raises(ValueError, match="no spaces or commas"):
        registry.register(Item("a,b"))
    with pytest.raises(UnknownNameError) as error:
        registry.get("alpha-on")
    assert str(error.value) == ("unknown thing 'alpha-on' (did you mean 'alpha-one'?); "
                                "known: alpha-one")


def test_a_broken_plugin_is_one_line_and_the_rest_works(tmp_path):
    """An installed entry point naming a missing module: one line on stderr, no traceback."""
    import os
    import subprocess
    import sys

    info = tmp_path / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[curvebench.optimizers]\nbroken = no_such_module_for_curvebench:register\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-m", "curvebench", "list"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "optimizer plugin 'broken'" in lines[0] and "no_such_module_for_curvebench" in lines[0]
    assert "sgd" in done.stdout and "digits-mlp" in done.stdout
