"""Helpers shared by the command modules for people: settings, client, errors, output.

Every command for people follows one shape: read :class:`Settings` once
(:func:`get_settings`), run one async function under :func:`run_async` that
opens a client with :func:`open_client`, then print either a table for a
person (:func:`echo_table`) or JSON for a script (:func:`echo_json`).

Errors a person can act on (no API URL, an unknown pool) become one line on
stderr and exit status 1, never a traceback: the
:class:`~trio_worker._core._exceptions.TrioWorkerError` tree is mapped to
:class:`click.ClickException` in :func:`run_async`. A malformed flag (a bad
``--param``) is a usage error (:func:`usage_error`, exit status 2). The group
in ``trio_worker._cli`` prints both as one line.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar, TypeVarTuple, Unpack

import click
import trio

from trio_worker._client._client import PrefectClient
from trio_worker._core._converter import unstructure
from trio_worker._core._exceptions import (
    ConfigurationError,
    ServerUnavailableError,
    TLSError,
    TrioWorkerError,
)
from trio_worker._core._settings import Settings

__all__ = [
    "MISSING_API_URL_MESSAGE",
    "confirm_or_abort",
    "echo_fields",
    "echo_json",
    "echo_table",
    "format_time",
    "get_settings",
    "json_option",
    "one_line",
    "open_client",
    "parse_key_values",
    "parse_uuid",
    "run_async",
    "usage_error",
    "yes_option",
]

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)
Ts = TypeVarTuple("Ts")

MISSING_API_URL_MESSAGE: Final = (
    "PREFECT_API_URL is not set; run `trio-worker server start` and export the URL it prints"
)
_SETTINGS_KEY: Final = "trio_worker.settings"
_COLUMN_GAP: Final = "  "

yes_option = click.option(
    "-y", "--yes", is_flag=True, default=False, help="Do not ask for confirmation."
)


def confirm_or_abort(question: str, yes: bool) -> None:
    """Ask ``question`` on a terminal unless ``--yes``; without a terminal, go ahead.

    Raises:
        click.Abort: the person answered no (printed as one line, status 1).
    """
    if yes or not sys.stdin.isatty():
        return
    if not click.confirm(question, default=False):
        raise click.Abort


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    default=False,
    help="Print JSON (for scripts) instead of text for people.",
)


def one_line(exc: BaseException) -> str:
    """Return ``str(exc)`` folded onto one line (whitespace runs become one space)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _error_message(exc: TrioWorkerError) -> str:
    message = one_line(exc)
    unanswered = isinstance(exc, ServerUnavailableError) and exc.status_code is None
    if unanswered and not isinstance(exc, TLSError):
        # No answer at all: the likeliest cause is a wrong URL or a stopped server.
        message += " (is the API at PREFECT_API_URL running?)"
    return message


def _only(group: BaseExceptionGroup[Any], kind: type[E]) -> E | None:
    """Return the first error inside ``group`` when it holds nothing but ``kind``."""
    matched, rest = group.split(kind)
    if matched is None or rest is not None:
        return None
    leaf: BaseException = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, kind) else None


def usage_error(message: str) -> click.UsageError:
    """Return a usage error (exit status 2) for the command being run."""
    return click.UsageError(message, click.get_current_context(silent=True))


def _only_keyboard_interrupt(group: BaseExceptionGroup[Any]) -> bool:
    matched, rest = group.split(KeyboardInterrupt)
    return matched is not None and rest is None


def run_async(fn: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
    """Run ``fn(*args)`` with :func:`trio.run` and return its result.

    Args:
        fn: the async function holding the command's API calls.
        *args: positional arguments for ``fn``.

    Returns:
        Whatever ``fn`` returns.

    Raises:
        click.ClickException: for any :class:`TrioWorkerError` (also one alone
            in an exception group): click prints it as one line on stderr and
            exits with status 1.
    """
    try:
        return trio.run(fn, *args)
    except TrioWorkerError as exc:
        raise click.ClickException(_error_message(exc)) from None
    except BaseExceptionGroup as group:
        if _only_keyboard_interrupt(group):
            # Ctrl-C inside a nursery: one plain KeyboardInterrupt, which the
            # group in trio_worker._cli prints as one line (exit status 130).
            raise KeyboardInterrupt from None
        said = _only(group, click.ClickException)
        if said is not None:  # a command's own one-line error, raised in a nursery
            raise said from None
        error = _only(group, TrioWorkerError)
        if error is None:
            raise
        raise click.ClickException(_error_message(error)) from None


def get_settings() -> Settings:
    """Return the settings of this invocation, read from the environment once.

    The result is kept on the root click context, so every helper of one
    command sees the same object.

    Raises:
        click.ClickException: naming the environment variable that is wrong.
    """
    root = click.get_current_context().find_root()
    settings = root.meta.get(_SETTINGS_KEY)
    if settings is None:
        try:
            settings = Settings.from_env()
        except ConfigurationError as exc:
            raise click.ClickException(one_line(exc)) from None
        root.meta[_SETTINGS_KEY] = settings
    assert isinstance(settings, Settings)
    return settings


def open_client(settings: Settings) -> PrefectClient:
    """Build the API client of a command; enter it with ``async with``.

    Args:
        settings: the invocation's settings; ``api_url`` must be set.

    Raises:
        click.ClickException: when ``PREFECT_API_URL`` is unset or not an http(s) URL.
    """
    if not settings.api_url:
        raise click.ClickException(MISSING_API_URL_MESSAGE)
    try:
        return PrefectClient(settings.api_url, settings=settings)
    except ConfigurationError as exc:
        raise click.ClickException(one_line(exc)) from None


def echo_json(value: Any) -> None:
    """Print ``value`` (models, lists of models, plain JSON) as indented JSON on stdout."""
    click.echo(json.dumps(unstructure(value), indent=2))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return format_time(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return " ".join(str(value).split())


def echo_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], *, empty: str = "Nothing found."
) -> None:
    """Print rows as left-aligned columns under upper-case headers.

    ``None`` prints as ``-``, datetimes in local time, booleans as yes/no.

    Args:
        headers: column titles.
        rows: one sequence of cell values per row, as long as ``headers``.
        empty: the line printed instead of a table when there are no rows.
    """
    cells = [[_cell(value) for value in row] for row in rows]
    if not cells:
        click.echo(empty)
        return
    titles = [h.upper() for h in headers]
    widths = [max(len(t), *(len(r[i]) for r in cells)) for i, t in enumerate(titles)]
    for line in (titles, *cells):
        padded = [text.ljust(width) for text, width in zip(line, widths, strict=True)]
        click.echo(_COLUMN_GAP.join(padded).rstrip())


def echo_fields(fields: Sequence[tuple[str, object]]) -> None:
    """Print ``name: value`` lines with the values aligned, for ``inspect`` commands.

    Dicts and lists print as compact JSON; other values as in :func:`echo_table`.
    """
    width = max((len(name) for name, _ in fields), default=0) + 1
    for name, value in fields:
        if isinstance(value, dict | list):
            text = json.dumps(unstructure(value), sort_keys=True)
        else:
            text = _cell(value)
        click.echo(f"{name + ':':<{width}} {text}")


def format_time(value: dt.datetime | None) -> str:
    """Format a timestamp for people: local time to the second, or ``-``."""
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _reject_constant(name: str) -> Any:
    # NaN and Infinity parse in Python but are not JSON; keep such values as text.
    raise ValueError(name)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return text


def parse_key_values(pairs: Iterable[str], *, option: str) -> dict[str, Any]:
    """Parse repeated ``KEY=VALUE`` options into a dict.

    A value is read as JSON when it parses (``n=3`` gives ``3``,
    ``flags=["a"]`` a list, ``s="3"`` the string ``"3"``) and kept as text
    otherwise (``name=world``). A later key replaces an earlier one.

    Args:
        pairs: the raw option values.
        option: the option's name, for the error message (e.g. ``--param``).

    Raises:
        click.UsageError: when an item has no ``=`` or an empty key.
    """
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise usage_error(f"{option} {pair!r} is not KEY=VALUE (e.g. {option} n=3)")
        result[key] = _parse_value(value)
    return result


def parse_uuid(text: str) -> uuid.UUID | None:
    """Return ``text`` as a UUID, or None when it is not one (then it is a name)."""
    try:
        return uuid.UUID(text)
    except ValueError:
        return None
