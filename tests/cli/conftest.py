"""Fixtures for the CLI tests: run ``python -m trio_worker`` against the embedded API."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import attrs
import pytest
import trio

from trio_worker._client._client import PrefectClient


@attrs.frozen
class CliResult:
    """What one CLI invocation did."""

    returncode: int
    stdout: str
    stderr: str

    def assert_one_line_error(self, *fragments: str, status: int = 1) -> str:
        """Check the command failed (status 1) with one line on stderr holding every fragment."""
        assert self.returncode == status, self
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        assert "Traceback" not in self.stderr
        for fragment in fragments:
            assert fragment in lines[0], lines[0]
        return lines[0]

    def assert_usage_error(self, *fragments: str) -> str:
        """Check the command refused its arguments: one line, status 2, a pointer to --help."""
        return self.assert_one_line_error(*fragments, "--help", status=2)


RunCli = Callable[..., Awaitable[CliResult]]


def _base_env() -> dict[str, str]:
    # A developer's own Prefect settings must not leak into the subprocess.
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


@pytest.fixture
def run_cli(api_url: str, tmp_path: Path) -> RunCli:
    """Return ``await run_cli(*args, env=None, cwd=None)``: the real CLI as a subprocess.

    ``PREFECT_API_URL`` points at the test's API unless ``env`` overrides it;
    an ``env`` value of None removes the variable.
    """

    async def run(
        *args: str, env: Mapping[str, str | None] | None = None, cwd: Path | None = None
    ) -> CliResult:
        full_env: dict[str, str] = {**_base_env(), "PREFECT_API_URL": api_url}
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        with trio.fail_after(60):
            done = await trio.run_process(
                [sys.executable, "-m", "trio_worker", *args],
                env=full_env,
                cwd=cwd or tmp_path,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        return CliResult(done.returncode, done.stdout.decode(), done.stderr.decode())

    return run


@pytest.fixture
async def client(api_url: str) -> AsyncIterator[PrefectClient]:
    """An open API client on the test's API, to check what the CLI did."""
    async with PrefectClient(api_url, backoff_seconds=0.01) as opened:
        yield opened
