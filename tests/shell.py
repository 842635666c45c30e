"""Run a block of shell commands from the docs exactly as written, as a person would.

The block is typed into one ``bash`` with job control (so a ``command &``
gets Ctrl-C like a person's) and this interpreter's ``bin`` directory first
on ``PATH``, where ``trio-worker`` is installed (:func:`run_block`). Only the placeholders a caller names are substituted (say the port of
the test's API for ``4200``): every other character runs verbatim.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import trio

from tests.cli.conftest import CliResult
from tests.helpers import clean_env

BIN_DIR = str(Path(sys.executable).parent)

_PROLOGUE = """set -m
stop_jobs() { for job in $(jobs -p); do kill -INT "$job" 2>/dev/null || true; done; wait; }
trap stop_jobs EXIT
"""


def bash_blocks(markdown: str, *, lang: str = "bash") -> list[str]:
    """The fenced code blocks of ``lang`` in a Markdown text, in order."""
    return re.findall(rf"```{lang}\n(.*?)```", markdown, re.DOTALL)


def free_port() -> int:
    """A loopback port free right now (for commands whose port is a setting)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def shell_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment whose state (database, task store, worker state) is in ``tmp_path``."""
    return {
        **clean_env(),
        "PATH": BIN_DIR + os.pathsep + os.environ.get("PATH", ""),
        "TRIO_WORKER_DB": str(tmp_path / "api.db"),
        "TRIO_WORKER_STATE_DIR": str(tmp_path / "state"),
        "TRIO_WORKER_TASK_STORAGE": str(tmp_path / "store"),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def _commands(block: str) -> list[str]:
    """Split a block into commands: one per line, a here-document with its lines."""
    commands: list[str] = []
    lines = iter(block.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        heredoc = re.search(r"<<-?'?(\w+)'?", line)
        if heredoc:
            body = [line]
            for more in lines:
                body.append(more)
                if more.strip() == heredoc.group(1):
                    break
            line = "\n".join(body)
        commands.append(line)
    return commands


def _backgrounded(command: str) -> bool:
    code = command.split(" #", 1)[0].rstrip()
    return code.endswith("&") and not code.endswith("&&")


async def run_block(
    block: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    substitute: Mapping[str, str] | None = None,
    timeout: float = 180,
) -> CliResult:
    """Type ``block`` into one bash, a command at a time, as a person would.

    Each command runs once the previous one finished (and printed its exit
    status); a command sent to the background (``... &``) counts as started
    once it has printed its first line, as a person waits for the server's
    "export PREFECT_API_URL=..." before going on. The first command that
    fails stops the block. When the block ends its background jobs get
    SIGINT and are waited for.

    Returns:
        The first failing status (else 0) and everything printed (stdout and
        stderr together, as on a terminal; ``stderr`` is empty).
    """
    for placeholder, value in (substitute or {}).items():
        assert placeholder in block, f"{placeholder!r} is not in the block"
        block = block.replace(placeholder, value)
    process = await trio.lowlevel.open_process(
        ["bash", "--noprofile", "--norc", "-s"],
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdin is not None and process.stdout is not None
    output = ""
    status = 0

    async def read_until(pattern: re.Pattern[str], start: int) -> re.Match[str]:
        nonlocal output
        while (found := pattern.search(output, start)) is None:
            chunk = await process.stdout.receive_some()  # type: ignore[union-attr]
            if not chunk:
                raise AssertionError(f"bash ended early; it printed:\n{output}")
            output += chunk.decode(errors="replace")
        return found

    with trio.fail_after(timeout):
        await process.stdin.send_all(_PROLOGUE.encode())
        for number, command in enumerate(_commands(block)):
            start = len(output)
            if _backgrounded(command):
                await process.stdin.send_all(f"{command}\n".encode())
                await read_until(re.compile(r"\n"), start)
                continue
            marker = f"__done_{number}__"
            await process.stdin.send_all(f"{command}\necho {marker} $?\n".encode())
            found = await read_until(re.compile(rf"{marker} (\d+)\n"), start)
            output = output[: found.start()] + output[found.end() :]
            status = int(found.group(1))
            if status != 0:
                break
        await process.stdin.send_all(b"exit\n")
        await process.stdin.aclose()
        rest = b"".join([chunk async for chunk in process.stdout])
        output += rest.decode(errors="replace")
        await process.wait()
    return CliResult(status, output, "")
