"""Developer tasks: `nox` runs the default sessions (tests, lint, typecheck)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["tests", "tests_cold", "lint", "typecheck"]

PYTHON = "3.11"

# The throwaway PostgreSQL server (stdlib only) is shared with the fleet benchmark.
sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
from _postgres import PostgresUnavailable, postgres_server  # noqa: E402


def _install_dev(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite against the embedded API (pass pytest options after --)."""
    _install_dev(session)
    session.run("pytest", *(session.posargs or ("tests",)))


@nox.session(python=PYTHON)
def tests_cold(session: nox.Session) -> None:
    """The worker's engine-run tests with warm start off, so the cold path stays covered.

    The default suite forks engine runs from the warm-start zygote; the tests
    whose runs go through the engine run again here with a fresh interpreter
    per run (other commands always start cold).
    """
    _install_dev(session)
    session.run(
        "pytest",
        *(session.posargs or ("tests/worker/test_process_worker.py",)),
        env={"TRIO_WORKER_WARM_START": "0"},
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff, and the import layers with import-linter."""
    session.install("ruff==0.17.6", "import-linter>=2", "-e", ".")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check the package and the custom-worker examples with mypy --strict."""
    _install_dev(session)
    session.run("mypy", "--strict", "trio_worker")
    # The example uses only public names; it must type-check as a user's code would.
    session.run(
        "mypy", "--strict", "-p", "inline_worker", env={"MYPYPATH": "examples/inline_worker"}
    )
    session.run("mypy", "--strict", "examples/porting/nice_worker.py")


# -- nox -s prefect --------------------------------------------------------------------------
#
# Prefect 3.9.x pins a certifi newer than the package index here offers, so it is
# installed --no-deps plus its other requirements (certifi unpinned); 3.8.8 installs
# normally. The newest version also refreshes the contract data on request.
PREFECT_VERSIONS = ["3.8.8", "3.9.1"]
#: Which database each Prefect server runs on: users who outgrow one machine run
#: Prefect on PostgreSQL, so the newest version runs the suite on both.
PREFECT_DATABASES = [(version, "sqlite") for version in PREFECT_VERSIONS] + [
    (PREFECT_VERSIONS[-1], "postgres")
]
PREFECT_NO_DEPS = {"3.9.1": {"certifi"}}
#: 3.8.8 allows any fastapi<1, but its server fails to import with fastapi>=0.151
#: (``Body(min_items=...)``); 3.9 pins <0.151 itself.
PREFECT_CONSTRAINTS = {"3.8.8": ["fastapi<0.151"]}
PREFECT_CONTRACT_VERSION = "3.9.1"
#: The Prefect server of this version runs with CSRF protection on.
CSRF_PROTECTED_VERSION = "3.9.1"
SERVER_START_SECONDS = 120.0


def _install_prefect(session: nox.Session, version: str) -> None:
    unpinned = PREFECT_NO_DEPS.get(version)
    if unpinned is None:
        session.install(f"prefect=={version}", *PREFECT_CONSTRAINTS.get(version, []))
        return
    session.install("--no-deps", f"prefect=={version}")
    listed = session.run(
        "python",
        "-c",
        "import importlib.metadata as m, json; print(json.dumps(m.requires('prefect')))",
        silent=True,
    )
    requirements = []
    for raw in json.loads(str(listed).strip().splitlines()[-1]):
        requirement = Requirement(raw)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        requirement.marker = None
        if requirement.name in unpinned:
            requirement.specifier = SpecifierSet()
        requirements.append(str(requirement))
    session.install(*requirements)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_health(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(
                f"prefect server exited with {server.returncode}:\n{log.read_text()}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(
        f"prefect server not healthy after {SERVER_START_SECONDS} s:\n{log.read_text()}"
    )


def _stop(server: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def _database(session: nox.Session, database: str) -> Iterator[dict[str, str]]:
    """Yield the server env that points Prefect at ``database`` (a fresh PostgreSQL or SQLite).

    Missing PostgreSQL binaries are installed when root (apt-get); otherwise the
    session is skipped with the reason, except in CI (``CI`` set), where it fails.
    """
    if database == "sqlite":
        yield {}
        return
    started = time.monotonic()
    try:
        with postgres_server(install=True) as pg:
            pg.create_database("prefect")
            session.log(
                f"PostgreSQL ({pg.bin_dir}) ready at {pg.host}:{pg.port}"
                f" in {time.monotonic() - started:.0f} s"
            )
            yield {"PREFECT_API_DATABASE_CONNECTION_URL": pg.sqlalchemy_url("prefect")}
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            session.error(f"PostgreSQL is needed in CI: {exc}")
        session.skip(f"no PostgreSQL: {exc}")


@nox.session(python=PYTHON, default=False)
@nox.parametrize(
    ("prefect", "database"),
    PREFECT_DATABASES,
    ids=[f"{version}-{database}" for version, database in PREFECT_DATABASES],
)
def prefect(session: nox.Session, prefect: str, database: str) -> None:
    """Run the interop suite against a real Prefect server on SQLite or PostgreSQL
    (`-- --refresh-contract` saves its responses to tests/data/prefect_contract/; other
    args go to pytest)."""
    started = time.monotonic()
    _install_prefect(session, prefect)
    _install_dev(session)
    session.log(
        f"installed Prefect {prefect} and trio-worker in {time.monotonic() - started:.0f} s"
    )
    args = list(session.posargs)
    refresh = "--refresh-contract" in args and database == "sqlite"
    args = [a for a in args if a != "--refresh-contract"] or ["tests/interop"]
    with (
        tempfile.TemporaryDirectory(prefix="trio-worker-prefect-") as tmp,
        _database(session, database) as database_env,
    ):
        home = Path(tmp)
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        server_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
            "PREFECT_HOME": str(home / "server"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            **database_env,
        }
        if prefect == CSRF_PROTECTED_VERSION:
            # One version runs with CSRF protection on: every client must fetch tokens.
            server_env["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] = "true"
        log = home / "server.log"
        prefect_bin = str(Path(str(session.bin)) / "prefect")
        with log.open("wb") as out:
            server = subprocess.Popen(
                [prefect_bin, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=server_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            _wait_for_health(url, server, log)
            session.log(
                f"prefect server {prefect} on {database} healthy at {url}"
                f" ({time.monotonic() - started:.0f} s)"
            )
            env = {
                "PREFECT_API_URL": url,
                "PREFECT_HOME": str(home / "client"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
            if refresh and prefect == PREFECT_CONTRACT_VERSION:
                env["TRIO_WORKER_REFRESH_CONTRACT"] = "1"
            session.run("pytest", "-m", "prefect", f"--api={url}", *args, env=env)
        finally:
            _stop(server)
            if server.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL, None):
                session.warn(f"prefect server exited with {server.returncode}")
        session.log(f"prefect {prefect} on {database}: {time.monotonic() - started:.0f} s in all")


#: The Prefect release the benchmark compares against (3.9.x needs --no-deps here, see
#: ../shared/prefect-api-subset.md). FastAPI >= 0.155 removed ``min_items``, which
#: Prefect 3.8.8's server still passes to ``Body()``, so it is pinned below that.
BENCH_PREFECT = ("prefect==3.8.8", *PREFECT_CONSTRAINTS["3.8.8"])


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Benchmark trio-worker against Prefect's worker and task worker (flags after -- go to
    bench_worker.py, e.g. --quick)."""
    session.install("-e", ".")
    args = list(session.posargs)
    try:
        session.install(*BENCH_PREFECT, silent=True)
    except Exception:  # nox raises its own failure type; any failure means "no Prefect"
        session.warn(
            f"could not install {' '.join(BENCH_PREFECT)}: the Prefect half of the benchmark"
            " is skipped (trio-worker alone is measured)"
        )
        if "--prefect" in args:
            session.error("--prefect needs Prefect, which could not be installed")
        args += ["--workers", "trio"]
    session.run("python", "benchmarks/bench_worker.py", *args)
    # Warm start: schedule-to-user-code latency and PSS per run, warm vs cold vs Prefect.
    warm_args = ["--runs", "5", "--concurrent", "5"] if "--quick" in args else ["--docs"]
    session.run("python", "benchmarks/bench_warm_start.py", *warm_args)
    # Background task runs, next to Prefect's task worker on a real Prefect server.
    task_args = [] if "--workers" in args else ["--prefect"]
    session.run("python", "benchmarks/bench_task_worker.py", *task_args)


@nox.session(python=PYTHON, default=False)
def fleet(session: nox.Session) -> None:
    """Benchmark fleets of workers on a PostgreSQL-backed Prefect server (flags after -- go
    to benchmarks/bench_fleet.py, e.g. --runs 300 --scenarios trio,prefect)."""
    _install_prefect(session, PREFECT_CONTRACT_VERSION)
    session.install("-e", ".")
    session.run("python", "benchmarks/bench_fleet.py", *session.posargs)


@nox.session(python=PYTHON, default=False)
def task_fleet(session: nox.Session) -> None:
    """Benchmark fleets of task workers (ours and Prefect's) on a PostgreSQL-backed Prefect
    server (flags after -- go to benchmarks/bench_task_fleet.py, e.g. --workers 1)."""
    _install_prefect(session, PREFECT_CONTRACT_VERSION)
    session.install("-e", ".")
    session.run("python", "benchmarks/bench_task_fleet.py", *session.posargs)


@nox.session(python=PYTHON, default=False)
def docs(session: nox.Session) -> None:
    """Build the documentation site strictly: a broken link or missing snippet fails."""
    session.install("-e", ".[docs]")
    # The hooks and the CLI reference import trio_worker; material's banner is noise.
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})


# `.ci/run` runs the default sessions (the list above): the docs must build there too.
nox.options.sessions.append("docs")
