"""Parsers of environment values, one per kind of setting (used by :mod:`._settings`).

:data:`SETTING_PARSERS` says which parser reads each setting, so the settings
module holds only the fields (names, defaults, env vars, help) and the one
reader of the environment.

Each takes the raw text of a variable and returns the value or raises
``ValueError`` with the end of a sentence that starts with ``NAME='value'``
(``Settings.from_env`` adds the start), e.g. ``is not a number``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = [
    "MOST_LOG_BUFFER_LINES",
    "SETTING_PARSERS",
    "env_metadata",
    "parse_api_url",
    "parse_bool",
    "parse_int",
    "parse_list",
    "parse_log_buffer_lines",
    "parse_module_list",
    "parse_non_negative_float",
    "parse_non_negative_int",
    "parse_optional_positive_float",
    "parse_optional_positive_int",
    "parse_optional_str",
    "parse_port",
    "parse_positive_float",
    "parse_positive_int",
]

MOST_LOG_BUFFER_LINES: Final = 10_000_000


def env_metadata(name: str, help: str) -> dict[str, str]:
    return {"env": name, "help": help}


def parse_bool(text: str) -> bool:
    """Read a boolean (``1/true/yes/on``, ``0/false/no/off``, empty: false).

    Raises:
        ValueError: for anything else.
    """
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("is not a boolean (use true or false)")


def parse_api_url(text: str) -> str | None:
    # The commonest slip is the server's address without the API's path: every
    # call would then be a bare 404. Prefect's API and the embedded one are
    # both served under /api, so an address with no path is surely that slip.
    url = parse_optional_str(text)
    if url is not None and "://" in url:
        rest = url.split("://", 1)[1]
        if "/" not in rest.rstrip("/"):
            raise ValueError(f"has no path; the API is under /api: {url.rstrip('/')}/api")
    return url


def parse_positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def parse_non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if value < 0:
        raise ValueError("must not be negative")
    return value


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("is not a whole number") from None


def parse_non_negative_int(text: str) -> int:
    value = parse_int(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def parse_positive_int(text: str) -> int:
    value = parse_int(text)
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def parse_log_buffer_lines(text: str) -> int:
    value = parse_int(text)
    if not 1 <= value <= MOST_LOG_BUFFER_LINES:
        raise ValueError(f"must be between 1 and {MOST_LOG_BUFFER_LINES:,}")
    return value


def parse_port(text: str) -> int:
    port = parse_int(text)
    if not 0 <= port <= 65535:
        raise ValueError("is not a TCP port (0-65535)")
    return port


def parse_optional_positive_float(text: str) -> float | None:
    if not text.strip():
        return None
    value = parse_positive_float(text)
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def parse_optional_positive_int(text: str) -> int | None:
    if not text.strip():
        return None
    value = parse_int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def parse_module_list(text: str) -> tuple[str, ...]:
    """Read comma-separated module names (``a,b.c``).

    Raises:
        ValueError: a name is not a dotted Python identifier.
    """
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"names {name!r}, which is not a module name")
    return names


def parse_optional_str(text: str) -> str | None:
    return text or None


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


#: The parser of each :class:`~trio_worker._core._settings.Settings` field, by field name.
SETTING_PARSERS: Final[Mapping[str, Callable[[str], Any]]] = {
    "api_url": parse_api_url,
    "api_key": parse_optional_str,
    "api_auth_string": parse_optional_str,
    "api_request_timeout": parse_positive_float,
    "tls_insecure_skip_verify": parse_bool,
    "ssl_cert_file": parse_optional_str,
    "max_retries": parse_non_negative_int,
    "query_seconds": parse_positive_float,
    "heartbeat_seconds": parse_positive_float,
    "prefetch_seconds": parse_non_negative_float,
    "webserver_host": str,
    "webserver_port": parse_port,
    "state_dir": parse_optional_str,
    "embedded_api_port": parse_port,
    "server_api_auth_string": parse_optional_str,
    "api_allowed_hosts": parse_list,
    "api_allowed_origins": parse_list,
    "flow_heartbeat_seconds": parse_positive_float,
    "server_heartbeat_timeout": parse_non_negative_float,
    "server_pending_timeout": parse_non_negative_float,
    "server_task_lease": parse_non_negative_float,
    "max_starts_per_second": parse_optional_positive_float,
    "start_burst": parse_optional_positive_int,
    "api_max_body_bytes": parse_positive_int,
    "log_buffer_lines": parse_log_buffer_lines,
    "warm_start": parse_bool,
    "preload": parse_module_list,
    "warm_start_max_forks": parse_positive_int,
    "warm_start_max_growth_mb": parse_positive_float,
    "server_db_path": parse_optional_str,
    "task_storage_path": parse_optional_str,
    "results_storage_path": parse_optional_str,
    "prefect_home": parse_optional_str,
}
