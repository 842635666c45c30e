"""``trio-worker start --max-starts-per-second/--start-burst`` and their environment variables."""

from __future__ import annotations

import pytest

from tests.cli.conftest import RunCli
from tests.helpers import make_deployment
from trio_worker._client._client import PrefectClient
from trio_worker._core._exceptions import ConfigurationError
from trio_worker._core._models import StateType
from trio_worker._core._settings import Settings


async def test_run_once_with_a_start_rate_starts_only_the_burst(
    run_cli: RunCli, client: PrefectClient
) -> None:
    deployment = await make_deployment(client, "paced", job_variables={"command": "true"})
    runs = [await client.create_flow_run_from_deployment(deployment.id) for _ in range(3)]
    result = await run_cli(
        "start",
        "-p",
        "paced",
        "--run-once",
        "--max-starts-per-second",
        "0.001",
        "--start-burst",
        "1",
    )
    assert result.returncode == 0, result
    states = [await client.read_flow_run(run.id) for run in runs]
    types = sorted(r.state.type for r in states if r.state is not None)
    assert types == [StateType.COMPLETED, StateType.SCHEDULED, StateType.SCHEDULED]


async def test_bad_start_burst_in_the_environment_is_one_line(run_cli: RunCli) -> None:
    result = await run_cli("start", "-p", "p", env={"TRIO_WORKER_START_BURST": "0"})
    result.assert_one_line_error("TRIO_WORKER_START_BURST='0'", "at least 1")


@pytest.mark.parametrize("value", ["0", "-2", "inf", "nan", "fast"])
def test_bad_max_starts_per_second_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigurationError, match="TRIO_WORKER_MAX_STARTS_PER_SECOND"):
        Settings.from_env({"TRIO_WORKER_MAX_STARTS_PER_SECOND": value})


def test_start_rate_settings_default_to_unlimited_and_parse() -> None:
    assert Settings().max_starts_per_second is None
    assert Settings().start_burst is None
    parsed = Settings.from_env(
        {"TRIO_WORKER_MAX_STARTS_PER_SECOND": "2.5", "TRIO_WORKER_START_BURST": "4"}
    )
    assert (parsed.max_starts_per_second, parsed.start_burst) == (2.5, 4)
