"""Developer tasks: `nox` runs the default sessions (tests, lint, typecheck)."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["tests", "lint", "typecheck"]

PYTHON = "3.11"


def _install_dev(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite against the embedded API (pass pytest options after --)."""
    _install_dev(session)
    session.run("pytest", *(session.posargs or ("tests",)))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy --strict."""
    _install_dev(session)
    session.run("mypy", "--strict", "trio_worker")
