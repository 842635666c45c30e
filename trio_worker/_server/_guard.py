"""The embedded API's front door: who may ask, and from where.

The embedded API is a remote-execution service (a deployment's job variables
become a command that a worker runs), so every request passes three checks
before any route sees it, in this order:

1. **Host** (DNS rebinding). A request that arrived on a loopback address must
   name a loopback host (``localhost``, ``127.0.0.1``, ``::1``, any port) or a
   configured allowed host: a web page whose name an attacker re-points at
   127.0.0.1 still sends its own name. On other addresses the check applies
   only when allowed hosts are configured.
2. **Credentials.** With an auth string configured, every request carries
   ``Authorization: Basic base64(user:password)``, as Prefect's server
   requires; ``GET /health`` and ``GET /ready`` stay open for probes, as in
   Prefect. Websockets authenticate with their first frame (the handlers
   check it with :meth:`ApiSecurity.token_problem`); here a websocket only
   has to ask for the ``prefect`` subprotocol, as Prefect's server demands
   when auth is on.
3. **Browser-borne requests.** A state-changing request (POST, PUT, PATCH,
   DELETE) or a websocket with a foreign ``Origin`` is refused (403), and a
   POST, PUT or PATCH with a body that is not JSON is refused (415): a page
   can send ``text/plain`` or a type-less body cross-site without asking
   first, never ``application/json``.

Refusals are one-line reasons in ``detail``; 401 keeps Prefect's
``exception_message`` too.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final

import attrs

from trio_worker._core._settings import Settings

__all__ = ["ApiSecurity", "Guard", "is_loopback_host"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CHANGES: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WITH_BODY: Final = frozenset({"POST", "PUT", "PATCH"})
OPEN_PATHS: Final = frozenset({"/api/health", "/api/ready"})
"""Answered to ``GET`` without credentials, as Prefect's server does (probes)."""

_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@functools.lru_cache(maxsize=256)
def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, without port) means this machine only.

    Cached: a server sees the same few names on every request, and parsing an
    address costs more than the rest of the checks together.
    """
    name = host.strip().lower().strip("[]")
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback  # 127.0.0.1 reached through a "::" bind
    return address.is_loopback


def _split_host(value: str) -> tuple[str, int | None] | None:
    """Split a ``Host`` header (``name``, ``name:port``, ``[v6]:port``); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        name, _, port_text = value.partition(":")
    if not name:
        return None
    if not port_text:
        return name, None
    if not port_text.isdigit() or int(port_text) > 65535:
        return None
    return name, int(port_text)


def _split_origin(value: str) -> tuple[str, str, int] | None:
    """Split an ``Origin`` into scheme, host and port (default port filled in)."""
    scheme, sep, rest = value.strip().lower().partition("://")
    if not sep or scheme not in _DEFAULT_PORTS or "/" in rest.rstrip("/"):
        return None
    parts = _split_host(rest.rstrip("/"))
    if parts is None:
        return None
    name, port = parts
    return scheme, name, port if port is not None else _DEFAULT_PORTS[scheme]


def _normalize_origin(value: str) -> str:
    return value.strip().lower().rstrip("/")


def _utf8(text: str) -> bytes:
    """Encode for comparison; a lone surrogate (JSON allows one) must not raise."""
    return text.encode("utf-8", "surrogatepass")


def _mask(value: str | None) -> str:
    return "'***'" if value else "None"


def _host_set(hosts: Iterable[str]) -> frozenset[str]:
    return frozenset(host.strip().lower() for host in hosts)


def _origin_set(origins: Iterable[str]) -> frozenset[str]:
    return frozenset(map(_normalize_origin, origins))


@attrs.frozen
class ApiSecurity:
    """What the embedded API asks of its clients.

    Attributes:
        auth_string: ``user:password`` every request must present (HTTP Basic;
            the raw string in a websocket's auth frame); None: no authentication.
        allowed_hosts: ``Host`` names accepted besides the loopback ones.
        allowed_origins: browser origins (``scheme://host:port``) allowed to
            send state-changing requests besides the API's own.
    """

    auth_string: str | None = attrs.field(default=None, repr=_mask)
    allowed_hosts: frozenset[str] = attrs.field(default=frozenset(), converter=_host_set)
    allowed_origins: frozenset[str] = attrs.field(default=frozenset(), converter=_origin_set)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiSecurity:
        """Read ``PREFECT_SERVER_API_AUTH_STRING`` and the allowed hosts and origins."""
        return cls(
            auth_string=settings.server_api_auth_string,
            allowed_hosts=settings.api_allowed_hosts,
            allowed_origins=settings.api_allowed_origins,
        )

    def credentials_problem(self, authorization: str | None) -> str | None:
        """Return why an ``Authorization`` header is refused, or None when it is accepted."""
        if self.auth_string is None:
            return None
        if not authorization:
            return (
                "this API requires HTTP Basic credentials; set PREFECT_API_AUTH_STRING "
                "to the server's user:password"
            )
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return (
                f"this API takes HTTP Basic credentials (PREFECT_API_AUTH_STRING), "
                f"not {scheme[:20]!r}"
            )
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            return "the Authorization header is not valid HTTP Basic"
        if not hmac.compare_digest(decoded, _utf8(self.auth_string)):
            return (
                "wrong credentials; PREFECT_API_AUTH_STRING must equal the server's "
                "PREFECT_SERVER_API_AUTH_STRING"
            )
        return None

    def token_problem(self, token: object) -> str | None:
        """Return why a websocket auth frame's token is refused (Prefect's reasons), or None."""
        if self.auth_string is None:
            return None
        if not token or not isinstance(token, str):
            return "Auth required but no token provided"
        if not hmac.compare_digest(_utf8(token), _utf8(self.auth_string)):
            return "Invalid token"
        return None

    def host_problem(self, host: str | None, *, loopback_connection: bool) -> str | None:
        """Return why a ``Host`` header is refused, or None when it is accepted."""
        if not loopback_connection and not self.allowed_hosts:
            return None
        if host is None:
            return None  # not a browser: every browser sends Host
        parts = _split_host(host)
        if parts is not None and (is_loopback_host(parts[0]) or parts[0] in self.allowed_hosts):
            return None
        return (
            f"Host {host[:100]!r} is not a name of this API; add it to "
            "TRIO_WORKER_API_ALLOWED_HOSTS if it is"
        )

    def origin_problem(self, origin: str | None, host: str | None) -> str | None:
        """Return why an ``Origin`` is refused for a state-changing request, or None."""
        if origin is None:
            return None  # not sent by a browser
        if _normalize_origin(origin) in self.allowed_origins:
            return None
        parsed = _split_origin(origin)
        target = _split_host(host) if host is not None else None
        if parsed is not None and target is not None:
            scheme, name, port = parsed
            own_port = target[1] if target[1] is not None else _DEFAULT_PORTS[scheme]
            if (name, port) == (target[0], own_port):
                return None
        return (
            f"cross-origin request from {origin[:100]!r} refused; add the origin to "
            "TRIO_WORKER_API_ALLOWED_ORIGINS if it may change this API"
        )


def _content_type_problem(headers: dict[str, str]) -> str | None:
    length = headers.get("content-length")
    if length is not None and length.strip() == "0":
        return None
    if length is None and "transfer-encoding" not in headers:
        return None  # no body
    content_type = headers.get("content-type")
    media = (content_type or "").partition(";")[0].strip().lower()
    if media.startswith("application/") and (
        media == "application/json" or media.endswith("+json")
    ):
        return None
    got = repr(content_type[:100]) if content_type is not None else "none"
    return f"request bodies must be JSON (Content-Type: application/json), got {got}"


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers, lower-case names; the first of repeated ones wins."""
    found: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return found


def _loopback_connection(scope: Scope) -> bool:
    server = scope.get("server")
    if not server:
        return True  # unknown: assume the strictest case
    return is_loopback_host(str(server[0]))


class Guard:
    """Wrap the API's ASGI app with the checks of this module."""

    def __init__(self, app: ASGIApp, security: ApiSecurity) -> None:
        self._app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        refusal = self._check(scope)
        if refusal is None:
            await self._app(scope, receive, send)
        elif kind == "http":
            await _answer(send, *refusal)
        else:
            await _refuse_websocket(scope, receive, send, *refusal)

    def _check(self, scope: Scope) -> tuple[int, dict[str, Any]] | None:
        security = self.security
        headers = _headers(scope)
        host = headers.get("host")
        problem = security.host_problem(host, loopback_connection=_loopback_connection(scope))
        if problem is not None:
            return 403, {"detail": problem}
        if scope["type"] == "websocket":
            problem = security.origin_problem(headers.get("origin"), host)
            if problem is not None:
                return 403, {"detail": problem}
            if security.auth_string is not None and "prefect" not in _subprotocols(headers):
                return 403, {"detail": "'prefect' subprotocol required when auth is configured"}
            return None
        method = scope["method"]
        if not (method == "GET" and scope["path"] in OPEN_PATHS):
            problem = security.credentials_problem(headers.get("authorization"))
            if problem is not None:
                return 401, {"exception_message": "Unauthorized", "detail": problem}
        if method in CHANGES:
            problem = security.origin_problem(headers.get("origin"), host)
            if problem is not None:
                return 403, {"detail": problem}
        if method in WITH_BODY:
            problem = _content_type_problem(headers)
            if problem is not None:
                return 415, {"detail": problem}
        return None


def _subprotocols(headers: dict[str, str]) -> list[str]:
    return [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]


async def _answer(
    send: Send, status: int, body: dict[str, Any], *, kind: str = "http.response"
) -> None:
    """Send ``body`` as a JSON response (``kind``: ``http.response`` or a websocket denial)."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": f"{kind}.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": f"{kind}.body", "body": payload})


async def _refuse_websocket(
    scope: Scope, receive: Receive, send: Send, status: int, body: dict[str, Any]
) -> None:
    """Refuse the upgrade: with the JSON body when the server can send one, else a bare 403."""
    message = await receive()
    if message.get("type") != "websocket.connect":
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await _answer(send, status, body, kind="websocket.http.response")
    else:
        await send({"type": "websocket.close", "code": 1008})
