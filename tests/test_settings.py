"""Settings: Prefect's env var names and defaults, one clear error per bad value."""

from __future__ import annotations

import attrs
import pytest

from trio_worker import ConfigurationError, Settings
from trio_worker._core._settings import (
    DEFAULT_HEARTBEAT_SECONDS,
    DEFAULT_PREFETCH_SECONDS,
    DEFAULT_QUERY_SECONDS,
)

SECRET = "pnu_do-not-print-me"


def test_defaults_are_prefects() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.query_seconds == DEFAULT_QUERY_SECONDS == 10
    assert settings.heartbeat_seconds == DEFAULT_HEARTBEAT_SECONDS == 30
    assert settings.prefetch_seconds == DEFAULT_PREFETCH_SECONDS == 10
    assert settings.webserver_host == "127.0.0.1"
    assert settings.webserver_port == 8080
    assert settings.api_url is None
    assert settings.api_key is None
    assert settings.tls_insecure_skip_verify is False
    assert settings.api_request_timeout == 60
    assert settings.max_retries == 5


def test_from_env_reads_prefect_names() -> None:
    settings = Settings.from_env(
        {
            "PREFECT_API_URL": "http://127.0.0.1:4200/api",
            "PREFECT_API_KEY": SECRET,
            "PREFECT_API_TLS_INSECURE_SKIP_VERIFY": "true",
            "PREFECT_API_REQUEST_TIMEOUT": "5.5",
            "PREFECT_CLIENT_MAX_RETRIES": "2",
            "PREFECT_WORKER_QUERY_SECONDS": "2.5",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "7",
            "PREFECT_WORKER_PREFETCH_SECONDS": "0",
            "PREFECT_WORKER_WEBSERVER_HOST": "0.0.0.0",
            "PREFECT_WORKER_WEBSERVER_PORT": "9090",
            "UNRELATED": "ignored",
        }
    )
    assert settings.api_url == "http://127.0.0.1:4200/api"
    assert settings.api_key == SECRET
    assert settings.tls_insecure_skip_verify is True
    assert settings.api_request_timeout == 5.5
    assert settings.max_retries == 2
    assert settings.query_seconds == 2.5
    assert settings.heartbeat_seconds == 7.0
    assert settings.prefetch_seconds == 0.0
    assert settings.webserver_host == "0.0.0.0"
    assert settings.webserver_port == 9090


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("", False)],
)
def test_boolean_env_values(text: str, expected: bool) -> None:
    settings = Settings.from_env({"PREFECT_API_TLS_INSECURE_SKIP_VERIFY": text})
    assert settings.tls_insecure_skip_verify is expected


def test_empty_optional_string_means_unset() -> None:
    assert Settings.from_env({"PREFECT_API_URL": "", "PREFECT_API_KEY": ""}) == Settings()


def test_every_field_names_its_env_var() -> None:
    names = [field.metadata["env"] for field in attrs.fields(Settings)]
    assert len(names) == len(set(names))
    assert all(name.isupper() and name.replace("_", "").isalnum() for name in names)
    assert all(field.metadata["help"] for field in attrs.fields(Settings))


def test_non_numeric_query_seconds_names_the_variable() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"PREFECT_WORKER_QUERY_SECONDS": "abc"})
    message = str(info.value)
    assert "PREFECT_WORKER_QUERY_SECONDS" in message
    assert "'abc'" in message
    assert "not a number" in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("PREFECT_WORKER_HEARTBEAT_SECONDS", "0", "greater than zero"),
        ("PREFECT_WORKER_QUERY_SECONDS", "-1", "greater than zero"),
        ("PREFECT_WORKER_PREFETCH_SECONDS", "-1", "negative"),
        ("PREFECT_API_REQUEST_TIMEOUT", "soon", "not a number"),
        ("PREFECT_CLIENT_MAX_RETRIES", "2.5", "whole number"),
        ("PREFECT_WORKER_WEBSERVER_PORT", "70000", "TCP port"),
        ("PREFECT_WORKER_WEBSERVER_PORT", "http", "whole number"),
        ("PREFECT_API_TLS_INSECURE_SKIP_VERIFY", "maybe", "boolean"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({name: value})
    assert str(info.value).startswith(f"{name}={value!r}")
    assert reason in str(info.value)


def test_repr_hides_the_key_and_auth_string() -> None:
    settings = Settings.from_env(
        {"PREFECT_API_KEY": SECRET, "PREFECT_API_AUTH_STRING": "admin:hunter2"}
    )
    for text in (repr(settings), str(settings), f"{settings}", repr([settings])):
        assert SECRET not in text
        assert "hunter2" not in text
    assert "api_key='***'" in repr(settings)
    assert "query_seconds=10.0" in repr(settings)


def test_repr_shows_an_unset_key_as_none() -> None:
    assert "api_key=None" in repr(Settings())


def test_evolve_overlays_flags() -> None:
    settings = attrs.evolve(Settings.from_env({"PREFECT_API_KEY": SECRET}), query_seconds=1.0)
    assert settings.query_seconds == 1.0
    assert settings.api_key == SECRET
    assert SECRET not in repr(settings)


def test_liveness_settings_defaults_zero_and_errors() -> None:
    settings = Settings.from_env({})
    assert settings.flow_heartbeat_seconds == 30
    assert (settings.server_heartbeat_timeout, settings.server_pending_timeout) == (90, 90)
    assert settings.server_task_lease == 60
    off = Settings.from_env(
        {"TRIO_WORKER_SERVER_TASK_LEASE": "0", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "0.5"}
    )
    assert (off.server_task_lease, off.flow_heartbeat_seconds) == (0, 0.5)
    with pytest.raises(ConfigurationError, match="TRIO_WORKER_SERVER_HEARTBEAT_TIMEOUT"):
        Settings.from_env({"TRIO_WORKER_SERVER_HEARTBEAT_TIMEOUT": "-1"})
    with pytest.raises(ConfigurationError, match="PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):
        Settings.from_env({"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "0"})


def test_warm_start_settings_are_read_and_validated() -> None:
    settings = Settings.from_env(
        {
            "TRIO_WORKER_WARM_START": "false",
            "TRIO_WORKER_PRELOAD": "numpy, my_pkg.models",
            "TRIO_WORKER_WARM_START_MAX_FORKS": "50",
            "TRIO_WORKER_WARM_START_MAX_GROWTH_MB": "12.5",
        }
    )
    assert settings.warm_start is False
    assert settings.preload == ("numpy", "my_pkg.models")
    assert settings.warm_start_max_forks == 50
    assert settings.warm_start_max_growth_mb == 12.5
    assert Settings().warm_start is True
    assert Settings().warm_start_max_growth_mb == 50.0
    with pytest.raises(ConfigurationError, match="TRIO_WORKER_PRELOAD='a-b'"):
        Settings.from_env({"TRIO_WORKER_PRELOAD": "a-b"})
    with pytest.raises(ConfigurationError, match="TRIO_WORKER_WARM_START_MAX_FORKS='0'"):
        Settings.from_env({"TRIO_WORKER_WARM_START_MAX_FORKS": "0"})
    with pytest.raises(ConfigurationError, match="TRIO_WORKER_WARM_START_MAX_GROWTH_MB='0'"):
        Settings.from_env({"TRIO_WORKER_WARM_START_MAX_GROWTH_MB": "0"})
