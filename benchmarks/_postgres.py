"""A throwaway PostgreSQL server for the interop suite and the fleet benchmark.

Prefect users who outgrow SQLite run Prefect's server on PostgreSQL, so that is
what ``nox -s prefect`` (database ``postgres``) and ``bench_fleet.py`` run
against. This module starts a real ``postgres`` from the machine's binaries
(Debian's ``/usr/lib/postgresql/<version>/bin``, or whatever ``initdb`` is on
the PATH), as a non-root user (PostgreSQL refuses to run as root), with its
data directory and unix socket in a temporary folder, listening on loopback
only at a free port, and removes everything when done. Standard library only,
so both the noxfile and the benchmarks can import it.

    with postgres_server() as pg:
        url = pg.sqlalchemy_url("prefect")   # postgresql+asyncpg://...
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "find_bin_dir", "postgres_server"]

#: The user the server runs as when we are root (Debian's package creates it).
SERVICE_USER = "postgres"
#: Superuser name inside the throwaway cluster.
SUPERUSER = "postgres"
START_SECONDS = 60.0
#: A throwaway cluster for tests: durability buys nothing there, speed does.
_NOT_DURABLE = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
STOP_SECONDS = 20.0


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be run here; the message says why and what to install."""


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway server: loopback host, port, its folder and the postmaster's pid."""

    host: str
    port: int
    folder: Path
    bin_dir: Path
    pid: int

    def sqlalchemy_url(self, database: str) -> str:
        """The URL Prefect's ``PREFECT_API_DATABASE_CONNECTION_URL`` takes."""
        return f"postgresql+asyncpg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        """Create database ``name`` (owned by the superuser)."""
        _run(
            [
                str(self.bin_dir / "createdb"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                name,
            ],
            as_user=None,
        )


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``: the newest Debian version, or PATH."""
    candidates = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda p: _version_key(p.parent.name),
    )
    for bin_dir in reversed(candidates):
        if (bin_dir / "postgres").exists():
            return bin_dir
    initdb = shutil.which("initdb")
    if initdb is not None and (Path(initdb).parent / "postgres").exists():
        return Path(initdb).parent
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def install_with_apt() -> None:
    """Install Debian's ``postgresql`` package (root only); raise when that is impossible."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresUnavailable(
            "PostgreSQL's server binaries (initdb, postgres) are not installed and this user "
            "cannot install them: run `apt-get install -y postgresql` as root"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)


def _service_user() -> str | None:
    """Who runs the server: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root but there is no {SERVICE_USER!r} user to run PostgreSQL as"
            " (PostgreSQL refuses to run as root); install Debian's postgresql package"
        ) from None
    return SERVICE_USER


def _run(args: list[str], *, as_user: str | None) -> None:
    done = subprocess.run(
        args,
        user=as_user,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(bin_dir: Path, port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    isready = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"postgres exited with {server.returncode}:\n{log.read_text()}")
        if subprocess.run(isready, check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"postgres not ready after {START_SECONDS:.0f} s:\n{log.read_text()}")


def _stop(server: subprocess.Popen[bytes]) -> None:
    # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, exit cleanly.
    for sig in (signal.SIGINT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        try:
            server.wait(timeout=STOP_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def postgres_server(
    *, install: bool = False, max_connections: int = 300, durable: bool = False
) -> Iterator[PostgresServer]:
    """Run a fresh PostgreSQL cluster for the duration of the ``with`` block.

    Args:
        install: install Debian's package with apt-get when the binaries are missing
            (root only).
        max_connections: the server's connection limit (a fleet of Prefect server
            connection pools adds up).
        durable: keep PostgreSQL's default fsync and synchronous commit (benchmarks,
            whose figures should be a deployment's); off makes tests faster.

    Raises:
        PostgresUnavailable: no binaries (and installing them was not allowed or
            impossible), or no user to run them as.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        if not install:
            raise PostgresUnavailable(
                "PostgreSQL's server binaries (initdb, postgres) are not installed;"
                " install Debian's postgresql package"
            )
        install_with_apt()
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresUnavailable("apt-get installed postgresql but no initdb was found")
    user = _service_user()
    folder = Path(tempfile.mkdtemp(prefix="trio-worker-pg-"))
    try:
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        data = folder / "data"
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            as_user=user,
        )
        port = _free_port()
        log = folder / "postgres.log"
        with open(log, "wb") as out:
            server = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"port={port}",
                    "-c",
                    f"unix_socket_directories={folder}",
                    "-c",
                    f"max_connections={max_connections}",
                    *([] if durable else _NOT_DURABLE),
                ],
                user=user,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            _wait_ready(bin_dir, port, server, log)
            yield PostgresServer(
                host="127.0.0.1", port=port, folder=folder, bin_dir=bin_dir, pid=server.pid
            )
        finally:
            _stop(server)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
