"""The errors trio-worker raises.

Every error derives from :class:`TrioWorkerError`, and where a builtin fits the
situation it derives from that builtin too, so callers may catch either::

    TrioWorkerError(Exception)
    ├── ConfigurationError(ValueError)      a bad env var, flag or option; names it
    │   ├── JobVariableError                a job variable that does not fit its schema
    │   └── TemplateError                   a malformed base job template
    ├── ModelError(ValueError)              JSON that does not fit an API model
    ├── APIError                            the API answered with an error, or not at all
    │   ├── BadRequestError                 400 / 422: the request was wrong
    │   ├── UnauthorizedError               401 / 403: check PREFECT_API_AUTH_STRING / _KEY
    │   ├── NotFoundError(LookupError)      404
    │   ├── ConflictError                   409
    │   └── ServerUnavailableError          429 / 5xx / transport error after retries
    │       └── TLSError                    the API's certificate was refused; says why
    ├── InfrastructureError                 a run could not be started; str() is the reason
    └── WorkerTypeNotFoundError(LookupError)

``trio.Cancelled`` is never wrapped: cancellation passes through untouched.
The API key never appears in ``str()`` or ``repr()`` of any of these.
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "BadRequestError",
    "ConfigurationError",
    "ConflictError",
    "InfrastructureError",
    "JobVariableError",
    "ModelError",
    "NotFoundError",
    "ServerUnavailableError",
    "TLSError",
    "TemplateError",
    "TrioWorkerError",
    "UnauthorizedError",
    "WorkerTypeNotFoundError",
]


class TrioWorkerError(Exception):
    """Base class of every error trio-worker raises on purpose."""


class ConfigurationError(TrioWorkerError, ValueError):
    """A setting, flag or option has a value trio-worker cannot use.

    The message names the setting and says what would be accepted. Raised
    before any work starts, never for a problem of one flow run.
    """


class JobVariableError(ConfigurationError):
    """A job variable does not fit the pool's variables schema.

    Raised while a single flow run is configured; the worker reports that run
    as crashed with this message and keeps serving the others.
    """


class TemplateError(ConfigurationError):
    """A base job template lacks ``job_configuration`` or ``variables``, or is not JSON."""


class ModelError(TrioWorkerError, ValueError):
    """JSON from the API (or a file) does not fit the model it should.

    The message names the field path and the value, e.g.
    ``'BOGUS' is not a valid StateType @ $.state.type``.
    """


class APIError(TrioWorkerError):
    """The orchestration API answered a request with an error.

    Attributes:
        method: the HTTP method.
        url: the request URL (never carries credentials).
        status_code: the HTTP status, or ``None`` when no response arrived.
        detail: the server's explanation (its ``detail`` field when it sent one).
    """

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        url: str = "",
        status_code: int | None = None,
        detail: object = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.status_code = status_code
        self.detail = detail


class BadRequestError(APIError):
    """The API refused the request as malformed (400) or invalid (422); never retried."""


class UnauthorizedError(APIError):
    """The API refused our credentials (401/403); check PREFECT_API_AUTH_STRING or _API_KEY."""


class NotFoundError(APIError, LookupError):
    """The object the request names does not exist (404)."""


class ConflictError(APIError):
    """The request conflicts with the API's state (409), e.g. a name already taken."""


class ServerUnavailableError(APIError):
    """The API stayed unreachable or busy (429, 5xx, transport error) after bounded retries.

    Service loops treat it as transient: they back off and try again.
    """


class TLSError(ServerUnavailableError):
    """The TLS handshake with the API failed, most often because its certificate was refused.

    The message says why (``certificate verify failed: self-signed
    certificate in certificate chain``) and names the setting to change
    (``PREFECT_API_SSL_CERT_FILE``). Still a :class:`ServerUnavailableError`,
    so a running worker keeps trying (a certificate may be renewed), but it
    is never mistaken for an API that is down.
    """


class InfrastructureError(TrioWorkerError):
    """A flow run's infrastructure could not be started or ended abnormally.

    ``str()`` is the sentence the worker writes into the run's CRASHED state.
    """


class WorkerTypeNotFoundError(TrioWorkerError, LookupError):
    """No installed worker type has the requested name; the message lists those that exist."""
