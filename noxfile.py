"""nox sessions: tests, lint, bench (``nox -s tests``)."""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"

TORCH = "torch==2.13.0"


@nox.session
def tests(session: nox.Session) -> None:
    """Unit, contract and end-to-end tests (pytest)."""
    session.install(TORCH, "-e", ".[dev]")
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
    session.install(TORCH, "-e", ".[dev]")
    commit = session.run("git", "rev-parse", "HEAD", external=True, silent=True).strip()
    session.run("asv", "machine", "--yes")
    session.run("asv", "run", "--python=same", "--set-commit-hash", commit, "--show-stderr",
                *session.posargs)
