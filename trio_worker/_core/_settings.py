"""Configuration: one frozen :class:`Settings` built once from the environment.

Only this module reads environment variables. The names and defaults are
Prefect's, so a worker configured for ``prefect worker start`` behaves the
same here. The CLI overlays its flags with :func:`attrs.evolve`; everything
else receives settings (or plain values) through constructors.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from trio_worker._core._exceptions import ConfigurationError

__all__ = [
    "DEFAULT_API_MAX_BODY_BYTES",
    "DEFAULT_HEARTBEAT_SECONDS",
    "DEFAULT_PREFETCH_SECONDS",
    "DEFAULT_QUERY_SECONDS",
    "Settings",
    "parse_bool",
    "parse_module_list",
]

DEFAULT_QUERY_SECONDS: Final = 10.0
DEFAULT_HEARTBEAT_SECONDS: Final = 30.0
DEFAULT_PREFETCH_SECONDS: Final = 10.0
DEFAULT_REQUEST_TIMEOUT_SECONDS: Final = 60.0
DEFAULT_MAX_RETRIES: Final = 5
DEFAULT_WEBSERVER_HOST: Final = "127.0.0.1"
DEFAULT_WEBSERVER_PORT: Final = 8080
DEFAULT_EMBEDDED_API_PORT: Final = 4200
DEFAULT_FLOW_HEARTBEAT_SECONDS: Final = 30.0
DEFAULT_RUN_HEARTBEAT_TIMEOUT_SECONDS: Final = 90.0
DEFAULT_PENDING_TIMEOUT_SECONDS: Final = 90.0
DEFAULT_TASK_LEASE_SECONDS: Final = 60.0
DEFAULT_API_MAX_BODY_BYTES: Final = 10 * 1024 * 1024
DEFAULT_LOG_BUFFER_LINES: Final = 50_000
MOST_LOG_BUFFER_LINES: Final = 10_000_000


def _env(name: str, help: str) -> dict[str, str]:
    return {"env": name, "help": help}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("is not a boolean (use true or false)")


def parse_bool(text: str) -> bool:
    """Read a boolean as the settings do (``1/true/yes/on``, ``0/false/no/off``).

    Raises:
        ValueError: for anything else.
    """
    return _parse_bool(text)


def _parse_api_url(text: str) -> str | None:
    # The commonest slip is the server's address without the API's path: every
    # call would then be a bare 404. Prefect's API and the embedded one are
    # both served under /api, so an address with no path is surely that slip.
    url = _parse_optional_str(text)
    if url is not None and "://" in url:
        rest = url.split("://", 1)[1]
        if "/" not in rest.rstrip("/"):
            raise ValueError(f"has no path; the API is under /api: {url.rstrip('/')}/api")
    return url


def _parse_positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def _parse_non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("is not a whole number") from None


def _parse_non_negative_int(text: str) -> int:
    value = _parse_int(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _parse_positive_int(text: str) -> int:
    value = _parse_int(text)
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def _parse_log_buffer_lines(text: str) -> int:
    value = _parse_int(text)
    if not 1 <= value <= MOST_LOG_BUFFER_LINES:
        raise ValueError(f"must be between 1 and {MOST_LOG_BUFFER_LINES:,}")
    return value


def _parse_port(text: str) -> int:
    port = _parse_int(text)
    if not 0 <= port <= 65535:
        raise ValueError("is not a TCP port (0-65535)")
    return port


def _parse_optional_positive_float(text: str) -> float | None:
    if not text.strip():
        return None
    value = _parse_positive_float(text)
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _parse_optional_positive_int(text: str) -> int | None:
    if not text.strip():
        return None
    value = _parse_int(text)
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


def _parse_optional_str(text: str) -> str | None:
    return text or None


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


_SECRETS: Final = frozenset({"api_key", "api_auth_string", "server_api_auth_string"})
"""Fields whose values never reach a repr."""


@attrs.frozen(repr=False)
class Settings:
    """Everything configurable about a worker, with Prefect's env var names.

    Each field's metadata carries its environment variable and a help line;
    the configuration reference in the docs is generated from it.
    """

    api_url: str | None = attrs.field(
        default=None,
        metadata=_env(
            "PREFECT_API_URL",
            "URL of the API, e.g. http://127.0.0.1:4200/api. Unset: the worker serves an "
            "embedded API itself.",
        ),
    )
    api_key: str | None = attrs.field(
        default=None,
        metadata=_env("PREFECT_API_KEY", "API key, sent as a Bearer token (Prefect Cloud)."),
    )
    api_auth_string: str | None = attrs.field(
        default=None,
        metadata=_env(
            "PREFECT_API_AUTH_STRING",
            "user:password for a self-hosted server with basic auth; wins over the API key.",
        ),
    )
    api_request_timeout: float = attrs.field(
        default=DEFAULT_REQUEST_TIMEOUT_SECONDS,
        metadata=_env("PREFECT_API_REQUEST_TIMEOUT", "Seconds before an API request times out."),
    )
    tls_insecure_skip_verify: bool = attrs.field(
        default=False,
        metadata=_env(
            "PREFECT_API_TLS_INSECURE_SKIP_VERIFY",
            "Skip TLS certificate verification (never in production).",
        ),
    )
    ssl_cert_file: str | None = attrs.field(
        default=None,
        metadata={
            **_env(
                "PREFECT_API_SSL_CERT_FILE",
                "CA bundle (PEM) that verifies the API's certificate, for REST and websockets "
                "alike. Unset: SSL_CERT_FILE, as Prefect reads it, else certifi's bundle.",
            ),
            "fallback_env": "SSL_CERT_FILE",
        },
    )
    max_retries: int = attrs.field(
        default=DEFAULT_MAX_RETRIES,
        metadata=_env(
            "PREFECT_CLIENT_MAX_RETRIES",
            "Retries of a request that failed with a transport error, 408, 429, 502 or 503.",
        ),
    )
    query_seconds: float = attrs.field(
        default=DEFAULT_QUERY_SECONDS,
        metadata=_env("PREFECT_WORKER_QUERY_SECONDS", "Seconds between polls for runs."),
    )
    heartbeat_seconds: float = attrs.field(
        default=DEFAULT_HEARTBEAT_SECONDS,
        metadata=_env("PREFECT_WORKER_HEARTBEAT_SECONDS", "Seconds between worker heartbeats."),
    )
    prefetch_seconds: float = attrs.field(
        default=DEFAULT_PREFETCH_SECONDS,
        metadata=_env(
            "PREFECT_WORKER_PREFETCH_SECONDS",
            "Start runs scheduled up to this many seconds in the future.",
        ),
    )
    webserver_host: str = attrs.field(
        default=DEFAULT_WEBSERVER_HOST,
        metadata=_env(
            "PREFECT_WORKER_WEBSERVER_HOST",
            "Host the health server binds (Prefect binds 0.0.0.0; we bind loopback).",
        ),
    )
    webserver_port: int = attrs.field(
        default=DEFAULT_WEBSERVER_PORT,
        metadata=_env("PREFECT_WORKER_WEBSERVER_PORT", "Port of the health server."),
    )
    embedded_api_port: int = attrs.field(
        default=DEFAULT_EMBEDDED_API_PORT,
        metadata=_env(
            "TRIO_WORKER_API_PORT",
            "Port of the embedded API that `trio-worker start` uses (or serves) when "
            "PREFECT_API_URL is unset, and the default of `server start --port` "
            "(0 = any free port).",
        ),
    )
    server_api_auth_string: str | None = attrs.field(
        default=None,
        metadata=_env(
            "PREFECT_SERVER_API_AUTH_STRING",
            "user:password the embedded API requires of every request (HTTP Basic, as "
            "Prefect's server). Unset: no authentication, and `server start` refuses a "
            "non-loopback --host.",
        ),
    )
    api_allowed_hosts: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_env(
            "TRIO_WORKER_API_ALLOWED_HOSTS",
            "Comma-separated host names the embedded API answers to besides localhost, "
            "127.0.0.1 and ::1 (its Host header check, against DNS rebinding).",
        ),
    )
    api_allowed_origins: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_env(
            "TRIO_WORKER_API_ALLOWED_ORIGINS",
            "Comma-separated browser origins (scheme://host:port) allowed to send the "
            "embedded API state-changing requests, besides its own.",
        ),
    )
    api_max_body_bytes: int = attrs.field(
        default=DEFAULT_API_MAX_BODY_BYTES,
        metadata=_env(
            "TRIO_WORKER_API_MAX_BODY_BYTES",
            "Largest request body (and websocket message) the embedded API accepts, in bytes; "
            "larger ones are refused with 413.",
        ),
    )
    log_buffer_lines: int = attrs.field(
        default=DEFAULT_LOG_BUFFER_LINES,
        metadata=_env(
            "TRIO_WORKER_LOG_BUFFER_LINES",
            "Log lines a worker or a flow run keeps while they wait to be sent to the API. "
            "Beyond it the oldest are dropped, and the run's logs say how many and why.",
        ),
    )
    state_dir: str | None = attrs.field(
        default=None,
        metadata=_env(
            "TRIO_WORKER_STATE_DIR",
            "Where a worker records the runs it started, to reconcile them after a restart "
            "(default: the user's state directory).",
        ),
    )
    max_starts_per_second: float | None = attrs.field(
        default=None,
        metadata=_env(
            "TRIO_WORKER_MAX_STARTS_PER_SECOND",
            "Most flow runs a worker starts per second on average, separate from --limit "
            "(unset: unlimited). Runs beyond it stay SCHEDULED for a later poll.",
        ),
    )
    start_burst: int | None = attrs.field(
        default=None,
        metadata=_env(
            "TRIO_WORKER_START_BURST",
            "Most runs started at once under TRIO_WORKER_MAX_STARTS_PER_SECOND "
            "(unset: one second's worth).",
        ),
    )

    # -- liveness (docs/operations.md, "Nothing is ever stuck") --------------------
    flow_heartbeat_seconds: float = attrs.field(
        default=DEFAULT_FLOW_HEARTBEAT_SECONDS,
        metadata=_env(
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY",
            "Seconds between the `prefect.flow-run.heartbeat` events a flow run's engine emits "
            "(Prefect's name; Prefect's own engine requires at least 30).",
        ),
    )
    server_heartbeat_timeout: float = attrs.field(
        default=DEFAULT_RUN_HEARTBEAT_TIMEOUT_SECONDS,
        metadata=_env(
            "TRIO_WORKER_SERVER_HEARTBEAT_TIMEOUT",
            "Embedded API: a started flow run whose heartbeats (its engine's, or its worker's "
            "listing it) stop is CRASHED within this many seconds (0 = never).",
        ),
    )
    server_pending_timeout: float = attrs.field(
        default=DEFAULT_PENDING_TIMEOUT_SECONDS,
        metadata=_env(
            "TRIO_WORKER_SERVER_PENDING_TIMEOUT",
            "Embedded API: a PENDING claim that has not started after this many seconds, and "
            "that no live worker lists, goes back to SCHEDULED once (0 = never).",
        ),
    )
    server_task_lease: float = attrs.field(
        default=DEFAULT_TASK_LEASE_SECONDS,
        metadata=_env(
            "TRIO_WORKER_SERVER_TASK_LEASE",
            "Embedded API: a delivered task run whose task worker stops renewing its lease is "
            "redelivered (retries or idempotent) or CRASHED within this many seconds (0 = never).",
        ),
    )
    warm_start: bool = attrs.field(
        default=True,
        metadata=_env(
            "TRIO_WORKER_WARM_START",
            "Start engine runs by forking a zygote that has already imported the engine "
            "(and Prefect); false: every run starts a fresh interpreter. In a job's env, "
            "false opts that deployment out.",
        ),
    )
    preload: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_env(
            "TRIO_WORKER_PRELOAD",
            "Comma-separated modules the warm-start zygote imports for every run to share.",
        ),
    )
    warm_start_max_forks: int = attrs.field(
        default=1000,
        metadata=_env(
            "TRIO_WORKER_WARM_START_MAX_FORKS",
            "Forks after which the warm-start zygote is replaced by a fresh one.",
        ),
    )
    warm_start_max_growth_mb: float = attrs.field(
        default=50.0,
        metadata=_env(
            "TRIO_WORKER_WARM_START_MAX_GROWTH_MB",
            "Growth of the warm-start zygote's resident memory (MB, since it was ready) after "
            "which it is replaced by a fresh one.",
        ),
    )

    def __repr__(self) -> str:
        # Secrets never reach a repr, a log line or a traceback.
        shown = {
            f.name: ("***" if f.name in _SECRETS and v else v)
            for f, v in ((f, getattr(self, f.name)) for f in attrs.fields(Settings))
        }
        inner = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"Settings({inner})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (``os.environ`` by default).

        Raises:
            ConfigurationError: naming the variable whose value cannot be used.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            name = field.metadata["env"]
            raw = environ.get(name)
            if raw is None and "fallback_env" in field.metadata:
                name = field.metadata["fallback_env"]
                raw = environ.get(name)
            if raw is None:
                continue
            parser = _PARSERS[field.name]
            try:
                values[field.name] = parser(raw)
            except ValueError as exc:
                raise ConfigurationError(f"{name}={raw!r} {exc}") from None
        return cls(**values)


_PARSERS: Final[dict[str, Callable[[str], Any]]] = {
    "api_url": _parse_api_url,
    "api_key": _parse_optional_str,
    "api_auth_string": _parse_optional_str,
    "api_request_timeout": _parse_positive_float,
    "tls_insecure_skip_verify": _parse_bool,
    "ssl_cert_file": _parse_optional_str,
    "max_retries": _parse_non_negative_int,
    "query_seconds": _parse_positive_float,
    "heartbeat_seconds": _parse_positive_float,
    "prefetch_seconds": _parse_non_negative_float,
    "webserver_host": str,
    "webserver_port": _parse_port,
    "state_dir": _parse_optional_str,
    "embedded_api_port": _parse_port,
    "server_api_auth_string": _parse_optional_str,
    "api_allowed_hosts": _parse_list,
    "api_allowed_origins": _parse_list,
    "flow_heartbeat_seconds": _parse_positive_float,
    "server_heartbeat_timeout": _parse_non_negative_float,
    "server_pending_timeout": _parse_non_negative_float,
    "server_task_lease": _parse_non_negative_float,
    "max_starts_per_second": _parse_optional_positive_float,
    "start_burst": _parse_optional_positive_int,
    "api_max_body_bytes": _parse_positive_int,
    "log_buffer_lines": _parse_log_buffer_lines,
    "warm_start": _parse_bool,
    "preload": parse_module_list,
    "warm_start_max_forks": _parse_positive_int,
    "warm_start_max_growth_mb": _parse_positive_float,
}
