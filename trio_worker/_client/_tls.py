"""One SSL context for every connection to the API, and errors that say why TLS failed.

The REST client (httpx) and every websocket (``/events/in``, ``/events/out``,
the task-run subscription) verify the API's certificate with the same
context, built once per client from the settings the way Prefect's client
builds its own:

- ``PREFECT_API_TLS_INSECURE_SKIP_VERIFY=true``: no verification at all
  (a test server with a self-signed certificate; never in production);
- otherwise the CA bundle ``PREFECT_API_SSL_CERT_FILE`` (which defaults to
  ``SSL_CERT_FILE``), else certifi's bundle, as httpx and Prefect use.

A refused certificate must not look like an unreachable API: httpx and
trio-websocket both bury the ``ssl`` error (an empty ``ConnectError``, a
handshake timeout), so :func:`describe_tls_failure` digs it out and names the
setting to change.
"""

from __future__ import annotations

import ssl
from typing import Final
from urllib.parse import urlsplit

import certifi
import trio

from trio_worker._core._exceptions import ConfigurationError
from trio_worker._core._settings import Settings

__all__ = ["create_ssl_context", "describe_tls_failure", "probe_tls"]

CERT_FILE_ENV: Final = "PREFECT_API_SSL_CERT_FILE"
SKIP_VERIFY_ENV: Final = "PREFECT_API_TLS_INSECURE_SKIP_VERIFY"


def create_ssl_context(settings: Settings) -> ssl.SSLContext:
    """Build the context that verifies the API's certificate as the settings say.

    Raises:
        ConfigurationError: ``PREFECT_API_SSL_CERT_FILE`` cannot be read or
            holds no certificate.
    """
    if settings.tls_insecure_skip_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = settings.ssl_cert_file or certifi.where()
    try:
        return ssl.create_default_context(cafile=cafile)
    except FileNotFoundError:
        raise ConfigurationError(f"{CERT_FILE_ENV}={cafile!r} does not exist") from None
    except ssl.SSLError as exc:  # before OSError, of which it is a kind
        raise ConfigurationError(
            f"{CERT_FILE_ENV}={cafile!r} holds no usable PEM certificate ({exc.reason})"
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            f"{CERT_FILE_ENV}={cafile!r} cannot be read: {exc.strerror}"
        ) from None


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """Find an ``ssl.SSLError`` behind ``exc``: in its causes, contexts or arguments."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        todo.extend(a for a in current.args if isinstance(a, BaseException))
    return None


def describe_tls_failure(exc: BaseException) -> str | None:
    """Say why TLS failed, and what to set, when ``exc`` comes from a TLS error; else None.

    Example: ``TLS certificate verify failed: self-signed certificate in
    certificate chain; PREFECT_API_SSL_CERT_FILE must name the CA bundle that
    signed the API's certificate (...)``.
    """
    error = _ssl_error(exc)
    if error is None:
        return None
    if isinstance(error, ssl.SSLCertVerificationError):
        why = error.verify_message or error.reason or str(error)
        return (
            f"TLS certificate verify failed: {why}; {CERT_FILE_ENV} must name the CA bundle "
            f"that signed the API's certificate (or set {SKIP_VERIFY_ENV}=true for a test "
            "server, never in production)"
        )
    reason = error.reason or str(error)
    return f"TLS handshake failed: {reason} (is the API served over https at this address?)"


async def probe_tls(url: str, ssl_context: ssl.SSLContext, *, timeout_seconds: float) -> str | None:
    """Open a TLS connection to ``url``'s host and return why it fails, or None when it works.

    trio-websocket reports a refused certificate as a handshake timeout; this
    one extra handshake, made only after such a failure, recovers the reason.
    Anything but a TLS error (refused, unreachable, slow) gives None.
    """
    parts = urlsplit(url)
    if parts.hostname is None:
        return None
    try:
        port = parts.port or 443
    except ValueError:
        return None
    with trio.move_on_after(timeout_seconds):
        try:
            stream = await trio.open_ssl_over_tcp_stream(
                parts.hostname, port, ssl_context=ssl_context, https_compatible=True
            )
        except OSError:
            return None
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            return describe_tls_failure(exc)
        finally:
            await trio.aclose_forcefully(stream)
    return None
