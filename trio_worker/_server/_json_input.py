r"""Decode JSON from the network within limits, so a client's mistake is a 422 and never a 500.

Python's :func:`json.loads` accepts documents the rest of the server cannot
handle: ``NaN`` and ``1e400`` (which no JSON encoder, SQLite's included, will
write back), lone surrogates such as ``"\ud800"`` (strings that cannot be
encoded as UTF-8, so neither stored nor echoed), and nesting deep enough to
exhaust the interpreter's recursion limit in the parser or in any walker
after it. :func:`decode_json` refuses all of them with a :class:`JSONInputError`
that says where the problem is, in the shape of a pydantic error entry.

The checks cost little on the hot paths (log batches, state proposals): the
walk over the decoded value looks at containers only, and strings are only
searched for surrogates when the raw text contains a surrogate escape.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

__all__ = ["MAX_JSON_DEPTH", "JSONInputError", "decode_json", "repair_text"]

MAX_JSON_DEPTH: Final = 100
"""Deepest nesting of arrays and objects accepted in a request (far beyond real payloads)."""

_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")

Loc = tuple[str | int, ...]


class JSONInputError(ValueError):
    """The document is not JSON the server accepts.

    Attributes:
        entry: a pydantic-shaped error entry (``type``, ``loc``, ``msg``, ``input``),
            its ``loc`` relative to the document's root; safe to encode as JSON.
    """

    def __init__(self, kind: str, loc: Loc, msg: str, value: Any, **ctx: Any) -> None:
        super().__init__(f"{msg} at {list(loc)}")
        self.entry: dict[str, Any] = {"type": kind, "loc": list(loc), "msg": msg, "input": value}
        if ctx:
            self.entry["ctx"] = ctx


def repair_text(text: str) -> str:
    """Replace every lone surrogate of ``text`` with U+FFFD, so it can be encoded."""
    return _SURROGATE.sub("\ufffd", text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONInputError(
            "finite_number", (), "Input should be a finite number", text, error=text
        )
    return value


def _refuse_constant(text: str) -> Any:
    raise JSONInputError("finite_number", (), "Input should be a finite number", text, error=text)


def decode_json(raw: bytes | str) -> Any:
    """Decode a JSON document, refusing what the server could not store or answer.

    Raises:
        JSONInputError: ``NaN``/``Infinity`` or a number too large for a float
            (``finite_number``), nesting deeper than :data:`MAX_JSON_DEPTH`
            (``json_invalid``), or a string or key with a lone surrogate
            (``string_unicode``, its ``input`` repaired).
        ValueError: the text is not JSON (a :class:`json.JSONDecodeError`
            with its position) or not UTF-8.
    """
    try:
        value = json.loads(raw, parse_float=_finite_float, parse_constant=_refuse_constant)
    except RecursionError:
        raise _too_deep(()) from None
    if isinstance(raw, bytes):
        data, strings = raw, _SURROGATE_ESCAPE.search(raw) is not None
    else:  # text, e.g. a websocket frame: surrogates escaped or (never over the wire) raw
        data = raw.encode("utf-8", "surrogatepass")
        strings = _SURROGATE_ESCAPE.search(data) is not None or _SURROGATE.search(raw) is not None
    # Fewer brackets than the limit (those in strings included) cannot nest too deep.
    if strings or data.count(b"[") + data.count(b"{") >= MAX_JSON_DEPTH:
        _check_tree(value, strings=strings)
    return value


def _too_deep(loc: Loc) -> JSONInputError:
    message = f"nested deeper than {MAX_JSON_DEPTH} levels"
    return JSONInputError("json_invalid", loc, "JSON decode error", None, error=message)


def _check_string(text: str, loc: Loc) -> None:
    if _SURROGATE.search(text) is not None:
        raise JSONInputError(
            "string_unicode",
            loc,
            "Input should be a valid string, unable to parse raw data as a unicode string",
            repair_text(text),
        )


def _check_tree(value: Any, *, strings: bool) -> None:
    """Walk the containers of ``value`` without recursion: depth, and surrogates if asked."""
    if isinstance(value, str) and strings:
        _check_string(value, ())
    if not isinstance(value, dict | list):
        return
    stack: list[tuple[Any, Loc]] = [(value, ())]
    while stack:
        node, loc = stack.pop()
        if len(loc) >= MAX_JSON_DEPTH:
            raise _too_deep(loc)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, item in items:
            if strings:
                if isinstance(key, str):
                    _check_string(key, (*loc, repair_text(key)))
                if isinstance(item, str):
                    _check_string(item, (*loc, key))
            if isinstance(item, dict | list):
                stack.append((item, (*loc, key)))
