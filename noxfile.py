"""nox sessions: tests, lint, bench (``nox -s tests``).

torch is installed first, pinned. On Linux x86-64 the default package index serves the CUDA
build of that pin; set ``TORCH_CPU_INDEX`` to PyTorch's CPU wheel index (see README) to get the
CPU build in the sessions' fresh environments.
"""

import os

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"

TORCH = "torch==2.13.0"


def _install_torch(session: nox.Session) -> None:
    """The pinned torch, from ``$TORCH_CPU_INDEX`` when set (the CPU build), else the default."""
    index = os.environ.get("TORCH_CPU_INDEX")
    session.install(TORCH, *(["--index-url", index] if index else []))


@nox.session
def tests(session: nox.Session) -> None:
    """Unit, contract and end-to-end tests (pytest)."""
    _install_torch(session)
    session.install("-e", ".[dev]")
    session.install("--no-deps", "-r", "tests/requirements-reference.txt")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """asv suite against this environment (``nox -s bench -- --quick --dry-run`` to smoke-test)."""
    _install_torch(session)
    session.install("-e", ".[dev]")
    commit = session.run("git", "rev-parse", "HEAD", external=True, silent=True).strip()
    session.run("asv", "machine", "--yes")
    session.run("asv", "run", "--python=same", "--set-commit-hash", commit, "--show-stderr",
                *session.posargs)
