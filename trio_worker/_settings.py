"""Configuration: one frozen :class:`Settings` built once from the environment.

Only this module reads environment variables. The names and defaults are
Prefect's, so a worker configured for ``prefect worker start`` behaves the
same here. The CLI overlays its flags with :func:`attrs.evolve`; everything
else receives settings (or plain values) through constructors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from trio_worker._exceptions import ConfigurationError

__all__ = [
    "DEFAULT_HEARTBEAT_SECONDS",
    "DEFAULT_PREFETCH_SECONDS",
    "DEFAULT_QUERY_SECONDS",
    "Settings",
]

DEFAULT_QUERY_SECONDS: Final = 10.0
DEFAULT_HEARTBEAT_SECONDS: Final = 30.0
DEFAULT_PREFETCH_SECONDS: Final = 10.0
DEFAULT_REQUEST_TIMEOUT_SECONDS: Final = 60.0
DEFAULT_MAX_RETRIES: Final = 5
DEFAULT_WEBSERVER_HOST: Final = "127.0.0.1"
DEFAULT_WEBSERVER_PORT: Final = 8080
DEFAULT_EMBEDDED_API_PORT: Final = 4200


def _env(name: str, help: str) -> dict[str, str]:
    return {"env": name, "help": help}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("is not a boolean (use true or false)")


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


def _parse_port(text: str) -> int:
    port = _parse_int(text)
    if not 0 <= port <= 65535:
        raise ValueError("is not a TCP port (0-65535)")
    return port


def _parse_optional_str(text: str) -> str | None:
    return text or None


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
        metadata=_env("PREFECT_API_SSL_CERT_FILE", "CA bundle used to verify the API's TLS."),
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
    state_dir: str | None = attrs.field(
        default=None,
        metadata=_env(
            "TRIO_WORKER_STATE_DIR",
            "Where a worker records the runs it started, to reconcile them after a restart "
            "(default: the user's state directory).",
        ),
    )

    def __repr__(self) -> str:
        # Secrets never reach a repr, a log line or a traceback.
        shown = {
            f.name: ("***" if f.name in {"api_key", "api_auth_string"} and v else v)
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
}
