"""The exec wrappers that set the memory ceiling before a command's first instruction."""

from __future__ import annotations

import math
import subprocess

import pytest
import trio

from trio_worker._core._exceptions import JobVariableError
from trio_worker._process._memory_cap import MEBIBYTE, capped_command
from trio_worker._worker._context import RunLimits, read_limits

DD_600M = ["dd", "if=/dev/zero", "of=/dev/null", "bs=600M", "count=1"]


@pytest.mark.parametrize("prlimit", [None, ""], ids=["prlimit", "python-wrapper"])
async def test_the_cap_holds_from_the_first_instruction(prlimit: str | None) -> None:
    capped = await trio.run_process(
        capped_command(DD_600M, 100 * MEBIBYTE, prlimit=prlimit),
        check=False,
        capture_stdout=True,
        capture_stderr=True,
    )
    uncapped = await trio.run_process(DD_600M, check=False, stderr=subprocess.DEVNULL)
    assert capped.returncode != 0
    assert b"memory exhausted" in capped.stderr
    assert uncapped.returncode == 0


@pytest.mark.parametrize("prlimit", [None, ""], ids=["prlimit", "python-wrapper"])
async def test_a_missing_command_exits_127_as_in_a_shell(prlimit: str | None) -> None:
    result = await trio.run_process(
        capped_command(["no-such-command-here"], 100 * MEBIBYTE, prlimit=prlimit),
        check=False,
        capture_stderr=True,
    )
    assert result.returncode == 127
    assert b"no-such-command-here" in result.stderr


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("memory_limit_mb", math.nan),
        ("memory_limit_mb", math.inf),
        ("memory_limit_mb", 0.5),
        ("memory_limit_mb", True),
        ("timeout_seconds", math.nan),
        ("timeout_seconds", -math.inf),
        ("timeout_seconds", 1e30),
    ],
)
async def test_limits_that_cannot_be_applied_are_refused_with_their_name(
    key: str, value: object
) -> None:
    with pytest.raises(JobVariableError, match=f"job variable {key}=.* must be a number of"):
        read_limits({key: value})


def test_limits_within_range_are_read_as_numbers() -> None:
    assert read_limits({"timeout_seconds": 5, "memory_limit_mb": 64.0}) == RunLimits(
        timeout_seconds=5.0, memory_limit_mb=64
    )
    assert read_limits({}) == RunLimits()
