"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from trio_worker.testing import open_embedded_api


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--api",
        default="embedded",
        help="'embedded' (default) or the URL of a running Prefect API, e.g. "
        "http://127.0.0.1:4200/api, that the api_url fixture yields instead",
    )


@pytest.fixture
async def api_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh embedded API on a free loopback port, with its database in ``tmp_path``.

    The value is the API URL (``http://127.0.0.1:<port>/api``), what
    ``PREFECT_API_URL`` would hold. Function scoped: every test gets an empty API.
    With ``--api=URL`` it is that server instead (shared, so tests use unique names).
    """
    option: str = request.config.getoption("--api")
    if option != "embedded":
        yield option.rstrip("/")
        return
    async with open_embedded_api(tmp_path / "api.db") as url:
        yield url
