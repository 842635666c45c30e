"""``trio-worker demo``: one command shows every outcome and exits 0 when all went as meant."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from tests.helpers import clean_env
from tests.shell import free_port, run_block, shell_env
from trio_worker._cli._demo import NEXT_STEPS, plan_outcomes


def test_plan_has_every_outcome_and_always_one_completion() -> None:
    assert set(plan_outcomes(20)) == {"complete", "fail", "crash", "cancel"}
    assert plan_outcomes(1) == ["complete"]
    assert len(plan_outcomes(37)) == 37


async def test_demo_runs_every_outcome_as_intended(tmp_path: object) -> None:
    result = await trio.run_process(
        [
            sys.executable,
            "-m",
            "trio_worker",
            "demo",
            "--runs",
            "10",
            "--limit",
            "4",
            "--seconds",
            "0.2",
        ],
        env=clean_env(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "10 of 10 runs ended as intended." in out
    for state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert state in out
    assert "Try next, in a new directory" in out


async def test_ctrl_c_drains_and_still_prints_the_summary() -> None:
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "trio_worker",
            "demo",
            "--runs",
            "6",
            "--limit",
            "2",
            "--seconds",
            "30",
        ],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    seen = b""
    with trio.fail_after(30):
        while b"starting a worker" not in seen:
            seen += await process.stdout.receive_some(4096)
        process.send_signal(signal.SIGINT)
        async for chunk in process.stdout:
            seen += chunk
        code = await process.wait()
    out = seen.decode()
    assert code == 1
    assert "Interrupted: draining the worker" in out
    assert "runs ended as intended." in out


async def _read_terminal(master: int) -> bytes:
    stream = trio.lowlevel.FdStream(master)
    seen = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except (OSError, trio.BrokenResourceError):
            return seen  # EIO: the child closed the terminal
        if not chunk:
            return seen
        seen += chunk


async def test_on_a_terminal_log_lines_print_above_the_live_line() -> None:
    # Point 9 of issue 18: the ERROR line of the run that crashes on purpose
    # must not be written over (or glued onto) the live progress line.
    master, slave = pty.openpty()
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_worker", "demo", "--runs", "10", "--seconds", "0.2"],
            env={**clean_env(), "COLUMNS": "100", "TERM": "xterm"},
            stdin=slave,
            stdout=slave,
            stderr=slave,
        )
    finally:
        os.close(slave)
    with trio.fail_after(120):
        raw = await _read_terminal(master)
        code = await process.wait()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode(errors="replace"))
    assert code == 0, text
    assert "runs/s" in text and "10 of 10 runs ended as intended." in text
    errors = [piece for piece in re.split(r"[\r\n]+", text) if "ERROR" in piece]
    assert errors, text  # the crash on purpose is logged...
    for piece in errors:  # ...on a line of its own
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR ", piece), piece


async def test_try_next_works_as_typed_on_a_fresh_api(tmp_path: Path) -> None:
    # Point 4 of issue 18: every line the demo suggests, in order, verbatim;
    # only the API's port is the test's own (4200 may be taken).
    port = free_port()
    lines = [line.strip() for line in NEXT_STEPS.strip().splitlines()[1:]]
    block = "\n".join(lines) + "\n"
    result = await run_block(
        block,
        cwd=tmp_path,
        env=shell_env(tmp_path, TRIO_WORKER_API_PORT=str(port)),
        substitute={"127.0.0.1:4200": f"127.0.0.1:{port}"},
    )
    assert result.returncode == 0, result
    assert "| hello trio" in result.stdout  # the run's output, under its name
    # The last command's table: one run, completed.
    _header, *rows = result.stdout.split("EXPECTED START", 1)[-1].strip().splitlines()
    (row,) = rows
    assert "Completed" in row.split(), row
