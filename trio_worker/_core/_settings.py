"""Configuration: one frozen :class:`Settings` built once from the environment.

Only this module reads environment variables (a test scans the package for
``os.environ`` and ``os.getenv`` to keep it so). Two documented exceptions
sit elsewhere: the engine reads its run's own variables (it runs inside the
flow-run process, whose environment *is* its input), and the warm-start
zygote's forked child, which becomes that engine. Code that needs the whole
environment rather than a setting (``{{ $NAME }}`` placeholders in job
templates, the environment a child process inherits) asks
:func:`process_environment`. The names and defaults are
Prefect's, so a worker configured for ``prefect worker start`` behaves the
same here. The CLI overlays its flags with :func:`attrs.evolve`; everything
else receives settings (or plain values) through constructors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

import attrs

from trio_worker._core._env_values import (
    SETTING_PARSERS,
    env_metadata,
    parse_bool,
    parse_module_list,
)
from trio_worker._core._exceptions import ConfigurationError

__all__ = [
    "DEFAULT_API_MAX_BODY_BYTES",
    "DEFAULT_HEARTBEAT_SECONDS",
    "DEFAULT_PREFETCH_SECONDS",
    "DEFAULT_QUERY_SECONDS",
    "Settings",
    "parse_bool",
    "parse_module_list",
    "process_environment",
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


def process_environment() -> Mapping[str, str]:
    """Return this process's whole environment, for the uses that need every variable.

    These are not settings: Prefect renders ``{{ $NAME }}`` in a job template from
    the worker's environment, and a flow run inherits the worker's environment
    under its own ``env``. Everything that configures trio-worker itself is a
    :class:`Settings` field instead.
    """
    return os.environ


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
        metadata=env_metadata(
            "PREFECT_API_URL",
            "URL of the API, e.g. http://127.0.0.1:4200/api. Unset: the worker serves an "
            "embedded API itself.",
        ),
    )
    api_key: str | None = attrs.field(
        default=None,
        metadata=env_metadata(
            "PREFECT_API_KEY", "API key, sent as a Bearer token (Prefect Cloud)."
        ),
    )
    api_auth_string: str | None = attrs.field(
        default=None,
        metadata=env_metadata(
            "PREFECT_API_AUTH_STRING",
            "user:password for a self-hosted server with basic auth; wins over the API key.",
        ),
    )
    api_request_timeout: float = attrs.field(
        default=DEFAULT_REQUEST_TIMEOUT_SECONDS,
        metadata=env_metadata(
            "PREFECT_API_REQUEST_TIMEOUT", "Seconds before an API request times out."
        ),
    )
    tls_insecure_skip_verify: bool = attrs.field(
        default=False,
        metadata=env_metadata(
            "PREFECT_API_TLS_INSECURE_SKIP_VERIFY",
            "Skip TLS certificate verification (never in production).",
        ),
    )
    ssl_cert_file: str | None = attrs.field(
        default=None,
        metadata={
            **env_metadata(
                "PREFECT_API_SSL_CERT_FILE",
                "CA bundle (PEM) that verifies the API's certificate, for REST and websockets "
                "alike. Unset: SSL_CERT_FILE, as Prefect reads it, else certifi's bundle.",
            ),
            "fallback_env": "SSL_CERT_FILE",
        },
    )
    max_retries: int = attrs.field(
        default=DEFAULT_MAX_RETRIES,
        metadata=env_metadata(
            "PREFECT_CLIENT_MAX_RETRIES",
            "Retries of a request that failed with a transport error, 408, 429, 502 or 503.",
        ),
    )
    query_seconds: float = attrs.field(
        default=DEFAULT_QUERY_SECONDS,
        metadata=env_metadata("PREFECT_WORKER_QUERY_SECONDS", "Seconds between polls for runs."),
    )
    heartbeat_seconds: float = attrs.field(
        default=DEFAULT_HEARTBEAT_SECONDS,
        metadata=env_metadata(
            "PREFECT_WORKER_HEARTBEAT_SECONDS", "Seconds between worker heartbeats."
        ),
    )
    prefetch_seconds: float = attrs.field(
        default=DEFAULT_PREFETCH_SECONDS,
        metadata=env_metadata(
            "PREFECT_WORKER_PREFETCH_SECONDS",
            "Start runs scheduled up to this many seconds in the future.",
        ),
    )
    webserver_host: str = attrs.field(
        default=DEFAULT_WEBSERVER_HOST,
        metadata=env_metadata(
            "PREFECT_WORKER_WEBSERVER_HOST",
            "Host the health server binds (Prefect binds 0.0.0.0; we bind loopback).",
        ),
    )
    webserver_port: int = attrs.field(
        default=DEFAULT_WEBSERVER_PORT,
        metadata=env_metadata("PREFECT_WORKER_WEBSERVER_PORT", "Port of the health server."),
    )
    embedded_api_port: int = attrs.field(
        default=DEFAULT_EMBEDDED_API_PORT,
        metadata=env_metadata(
            "TRIO_WORKER_API_PORT",
            "Port of the embedded API that `trio-worker start` uses (or serves) when "
            "PREFECT_API_URL is unset, and the default of `server start --port` "
            "(0 = any free port).",
        ),
    )
    server_api_auth_string: str | None = attrs.field(
        default=None,
        metadata=env_metadata(
            "PREFECT_SERVER_API_AUTH_STRING",
            "user:password the embedded API requires of every request (HTTP Basic, as "
            "Prefect's server). Unset: no authentication, and `server start` refuses a "
            "non-loopback --host.",
        ),
    )
    api_allowed_hosts: tuple[str, ...] = attrs.field(
        default=(),
        metadata=env_metadata(
            "TRIO_WORKER_API_ALLOWED_HOSTS",
            "Comma-separated host names the embedded API answers to besides localhost, "
            "127.0.0.1 and ::1 (its Host header check, against DNS rebinding).",
        ),
    )
    api_allowed_origins: tuple[str, ...] = attrs.field(
        default=(),
        metadata=env_metadata(
            "TRIO_WORKER_API_ALLOWED_ORIGINS",
            "Comma-separated browser origins (scheme://host:port) allowed to send the "
            "embedded API state-changing requests, besides its own.",
        ),
    )
    api_max_body_bytes: int = attrs.field(
        default=DEFAULT_API_MAX_BODY_BYTES,
        metadata=env_metadata(
            "TRIO_WORKER_API_MAX_BODY_BYTES",
            "Largest request body (and websocket message) the embedded API accepts, in bytes; "
            "larger ones are refused with 413.",
        ),
    )
    log_buffer_lines: int = attrs.field(
        default=DEFAULT_LOG_BUFFER_LINES,
        metadata=env_metadata(
            "TRIO_WORKER_LOG_BUFFER_LINES",
            "Log lines a worker or a flow run keeps while they wait to be sent to the API. "
            "Beyond it the oldest are dropped, and the run's logs say how many and why.",
        ),
    )
    state_dir: str | None = attrs.field(
        default=None,
        metadata=env_metadata(
            "TRIO_WORKER_STATE_DIR",
            "Where a worker records the runs it started, to reconcile them after a restart "
            "(default: the user's state directory).",
        ),
    )
    max_starts_per_second: float | None = attrs.field(
        default=None,
        metadata=env_metadata(
            "TRIO_WORKER_MAX_STARTS_PER_SECOND",
            "Most flow runs a worker starts per second on average, separate from --limit "
            "(unset: unlimited). Runs beyond it stay SCHEDULED for a later poll.",
        ),
    )
    start_burst: int | None = attrs.field(
        default=None,
        metadata=env_metadata(
            "TRIO_WORKER_START_BURST",
            "Most runs started at once under TRIO_WORKER_MAX_STARTS_PER_SECOND "
            "(unset: one second's worth).",
        ),
    )

    # -- files shared with commands that run without a worker -------------------------
    server_db_path: str | None = attrs.field(
        default=None,
        metadata=env_metadata(
            "TRIO_WORKER_DB",
            "SQLite file of the embedded API when `server start --db` is not given, also used "
            "by `start` when it serves the embedded API (default: `api.db` in the user's data "
            "directory).",
        ),
    )
    task_storage_path: str | None = attrs.field(
        default=None,
        metadata=env_metadata(
            "TRIO_WORKER_TASK_STORAGE",
            "Directory of task parameters and results (`task-worker serve`, `.delay()`, "
            "`.result()`); submitters and task workers must share it. Unset: the results "
            "storage path below, else `$PREFECT_HOME/storage`.",
        ),
    )
    results_storage_path: str | None = attrs.field(
        default=None,
        metadata={
            **env_metadata(
                "PREFECT_RESULTS_LOCAL_STORAGE_PATH",
                "Prefect's local result storage; the task store's directory when "
                "TRIO_WORKER_TASK_STORAGE is unset.",
            ),
            "fallback_env": "PREFECT_LOCAL_STORAGE_PATH",
        },
    )
    prefect_home: str | None = attrs.field(
        default=None,
        metadata=env_metadata(
            "PREFECT_HOME",
            "Prefect's home directory (unset: `~/.prefect`); the task store is its `storage` "
            "when neither path above is set.",
        ),
    )

    # -- liveness (docs/operations.md, "Nothing is ever stuck") --------------------
    flow_heartbeat_seconds: float = attrs.field(
        default=DEFAULT_FLOW_HEARTBEAT_SECONDS,
        metadata=env_metadata(
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY",
            "Seconds between the `prefect.flow-run.heartbeat` events a flow run's engine emits "
            "(Prefect's name; Prefect's own engine requires at least 30).",
        ),
    )
    server_heartbeat_timeout: float = attrs.field(
        default=DEFAULT_RUN_HEARTBEAT_TIMEOUT_SECONDS,
        metadata=env_metadata(
            "TRIO_WORKER_SERVER_HEARTBEAT_TIMEOUT",
            "Embedded API: a started flow run whose heartbeats (its engine's, or its worker's "
            "listing it) stop is CRASHED within this many seconds (0 = never).",
        ),
    )
    server_pending_timeout: float = attrs.field(
        default=DEFAULT_PENDING_TIMEOUT_SECONDS,
        metadata=env_metadata(
            "TRIO_WORKER_SERVER_PENDING_TIMEOUT",
            "Embedded API: a PENDING claim that has not started after this many seconds, and "
            "that no live worker lists, goes back to SCHEDULED once (0 = never).",
        ),
    )
    server_task_lease: float = attrs.field(
        default=DEFAULT_TASK_LEASE_SECONDS,
        metadata=env_metadata(
            "TRIO_WORKER_SERVER_TASK_LEASE",
            "Embedded API: a delivered task run whose task worker stops renewing its lease is "
            "redelivered (retries or idempotent) or CRASHED within this many seconds (0 = never).",
        ),
    )
    warm_start: bool = attrs.field(
        default=True,
        metadata=env_metadata(
            "TRIO_WORKER_WARM_START",
            "Start engine runs by forking a zygote that has already imported the engine "
            "(and Prefect); false: every run starts a fresh interpreter. In a job's env, "
            "false opts that deployment out.",
        ),
    )
    preload: tuple[str, ...] = attrs.field(
        default=(),
        metadata=env_metadata(
            "TRIO_WORKER_PRELOAD",
            "Comma-separated modules the warm-start zygote imports for every run to share.",
        ),
    )
    warm_start_max_forks: int = attrs.field(
        default=1000,
        metadata=env_metadata(
            "TRIO_WORKER_WARM_START_MAX_FORKS",
            "Forks after which the warm-start zygote is replaced by a fresh one.",
        ),
    )
    warm_start_max_growth_mb: float = attrs.field(
        default=50.0,
        metadata=env_metadata(
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
            parser = SETTING_PARSERS[field.name]
            try:
                values[field.name] = parser(raw)
            except ValueError as exc:
                raise ConfigurationError(f"{name}={raw!r} {exc}") from None
        return cls(**values)
