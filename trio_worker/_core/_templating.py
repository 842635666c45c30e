"""The job template engine: Prefect's placeholder semantics as pure functions.

A base job template is JSON in which strings may hold placeholders such as
``{{ name }}``, ``{{ env.HOME }}``, ``{{ $HOME }}``, ``{{ prefect.variables.region }}``
or ``{{ prefect.blocks.secret.token }}``. Pools are shared with Prefect workers,
so a template must render here exactly as it renders there; the rules are those
of ``prefect-api-subset.md`` section 7, checked by running Prefect's own functions.

Rendering happens in three stages, in this order, each a single pass (a value
inserted by one stage is never re-templated by the same stage):

1. :func:`apply_values`: job variables and ``$ENV`` placeholders, synchronous.
2. :func:`._template_references.resolve_block_document_references`:
   ``prefect.blocks.*`` placeholders and ``{"$ref": {"block_document_id": ...}}``
   objects, through injected lookups.
3. :func:`._template_references.resolve_variables`: ``prefect.variables.*``
   through an injected lookup.

This module is the placeholders themselves (finding, classifying, rendering)
and stage 1; the stages that read from the API are in :mod:`._template_references`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from trio_worker._core._exceptions import TemplateError
from trio_worker._core._settings import process_environment

__all__ = [
    "BLOCK_PREFIX",
    "NOTSET",
    "PLACEHOLDER_PATTERN",
    "VARIABLE_PREFIX",
    "NotSetType",
    "Placeholder",
    "PlaceholderKind",
    "apply_values",
    "find_placeholders",
    "lookup_path",
    "render",
]

#: Prefect's placeholder syntax; group 1 is the dotted/indexed name.
PLACEHOLDER_PATTERN: Final = re.compile(r"{{\s*([\w\.\-\[\]$]+)\s*}}")

VARIABLE_PREFIX: Final = "prefect.variables."
BLOCK_PREFIX: Final = "prefect.blocks."
_ENV_PREFIX: Final = "$"


class NotSetType(enum.Enum):
    """The type of :data:`NOTSET`; an enum so that type checkers can narrow on it."""

    NOTSET = "NOTSET"

    def __repr__(self) -> str:
        return "NOTSET"


NOTSET: Final = NotSetType.NOTSET
"""What a whole-string placeholder renders to when its value is missing.

Distinct from ``None``, which is a perfectly good value (JSON ``null``). Dicts
and lists drop entries that render to it, so a missing job variable leaves the
configuration field out and the model's default applies.
"""


class PlaceholderKind(enum.Enum):
    """Which stage of rendering resolves a placeholder, decided by its name's prefix."""

    STANDARD = "standard"
    VARIABLE = "variable"
    BLOCK_DOCUMENT = "block_document"
    ENV_VAR = "env_var"


@attrs.frozen
class Placeholder:
    """One placeholder found in a template string.

    Attributes:
        full_match: the text matched, braces and inner whitespace included.
        name: the name inside the braces, e.g. ``x.z[1]`` or ``prefect.variables.foo``.
        kind: which stage resolves it.
    """

    full_match: str
    name: str
    kind: PlaceholderKind


def _kind_of(name: str) -> PlaceholderKind:
    if name.startswith(BLOCK_PREFIX):
        return PlaceholderKind.BLOCK_DOCUMENT
    if name.startswith(VARIABLE_PREFIX):
        return PlaceholderKind.VARIABLE
    if name.startswith(_ENV_PREFIX):
        return PlaceholderKind.ENV_VAR
    return PlaceholderKind.STANDARD


def find_placeholders(template: Any) -> set[Placeholder]:
    """Return every distinct placeholder in a JSON template.

    Dict keys are never searched, only values, as in Prefect.

    Args:
        template: any JSON value (nested dicts and lists are searched).

    Returns:
        The set of placeholders; empty for non-string scalars.
    """
    if isinstance(template, str):
        return {
            Placeholder(match.group(0), match.group(1), _kind_of(match.group(1)))
            for match in PLACEHOLDER_PATTERN.finditer(template)
        }
    found: set[Placeholder] = set()
    if isinstance(template, Mapping):
        for value in template.values():
            found |= find_placeholders(value)
    elif isinstance(template, list):
        for item in template:
            found |= find_placeholders(item)
    return found


def lookup_path(values: Any, path: str) -> Any:
    """Resolve a dotted path with ``[i]`` indexing (``x.z[1]``) against ``values``.

    Mapping keys are matched as strings; list items by integer index (negative
    indexes count from the end, as in Python and Prefect). Anything that cannot be
    followed (a missing key, an index out of range, a step into a scalar) yields
    :data:`NOTSET` rather than an error, because a missing job variable is normal.

    Args:
        values: the JSON value to walk.
        path: the placeholder name.

    Returns:
        The value found, or :data:`NOTSET`.
    """
    current = values
    for key in path.replace("[", ".").replace("]", "").split("."):
        if isinstance(current, Mapping):
            if key not in current:
                return NOTSET
            current = current[key]
        elif isinstance(current, list):
            try:
                index = int(key)
            except ValueError:
                return NOTSET
            if not -len(current) <= index < len(current):
                return NOTSET
            current = current[index]
        else:
            return NOTSET
    return current


def render(
    template: Any,
    kind: PlaceholderKind,
    resolve: Callable[[str], Any],
    *,
    embedded: Callable[[str], Any] | None = None,
) -> Any:
    """Substitute the placeholders of one kind everywhere in ``template``, in one pass.

    A string that is exactly one placeholder of ``kind`` becomes ``resolve(name)``
    itself, type kept; otherwise each placeholder of ``kind`` in it is replaced by
    ``str(embedded(name))`` (``embedded`` defaults to ``resolve``). Placeholders of
    other kinds are left as they are for their own stage.
    """
    if isinstance(template, str):
        placeholders = [p for p in find_placeholders(template) if p.kind is kind]
        if not placeholders:
            return template
        if len(placeholders) == 1 and placeholders[0].full_match == template:
            return resolve(placeholders[0].name)
        resolve_embedded = resolve if embedded is None else embedded

        def substitute(match: re.Match[str]) -> str:
            if _kind_of(match.group(1)) is not kind:
                return match.group(0)
            return str(resolve_embedded(match.group(1)))

        return PLACEHOLDER_PATTERN.sub(substitute, template)
    if isinstance(template, Mapping):
        return {
            key: render(value, kind, resolve, embedded=embedded) for key, value in template.items()
        }
    if isinstance(template, list):
        return [render(item, kind, resolve, embedded=embedded) for item in template]
    return template


def apply_values(
    template: Any,
    values: Mapping[str, Any],
    *,
    remove_notset: bool = True,
    env: Mapping[str, str] | None = None,
) -> Any:
    """Render job variables and ``{{ $ENV }}`` placeholders into a template.

    The semantics are Prefect's (``prefect-api-subset.md`` 7.1), because a pool
    may be served by Prefect workers and ours alike:

    - a string that is exactly one ``{{ name }}`` becomes the value itself, type
      kept (``"{{ n }}"`` with ``n=5`` is ``5``, not ``"5"``);
    - placeholders inside longer strings become ``str(value)`` (Python's, so
      ``None`` is ``"None"`` and a dict ``"{'a': 1}"``, not JSON);
    - a missing value drops the dict key or list item, renders :data:`NOTSET` for
      a bare string, and the empty string when embedded;
    - ``{{ $NAME }}`` reads ``env`` and is always stringified (missing: ``""``);
    - ``prefect.variables.*`` and ``prefect.blocks.*`` are left for the later stages;
    - one pass: a value that itself looks like a placeholder stays as it is.

    Args:
        template: any JSON value; it is not modified.
        values: the job variables, looked up by dotted/indexed path.
        remove_notset: when false, a missing value leaves its placeholder text in
            place instead (whole strings keep the original string).
        env: where ``$NAME`` placeholders are read from; the worker's environment
            (:func:`~trio_worker._core._settings.process_environment`) when omitted.

    Returns:
        The rendered copy of ``template`` (or :data:`NOTSET`, see above).

    Raises:
        TemplateError: the template holds something that is not JSON.
    """
    environ: Mapping[str, str] = process_environment() if env is None else env
    if template is None or template is NOTSET or isinstance(template, int | float | bool):
        return template
    if isinstance(template, str):
        placeholders = find_placeholders(template)
        if not placeholders:
            return template
        if len(placeholders) == 1:
            (only,) = placeholders
            if only.full_match == template and only.kind is PlaceholderKind.STANDARD:
                value = lookup_path(values, only.name)
                return template if value is NOTSET and not remove_notset else value

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            kind = _kind_of(name)
            if kind is PlaceholderKind.STANDARD:
                value = lookup_path(values, name)
            elif kind is PlaceholderKind.ENV_VAR:
                value = environ.get(name.lstrip(_ENV_PREFIX), NOTSET)
            else:
                return match.group(0)
            if value is NOTSET:
                return "" if remove_notset else match.group(0)
            return str(value)

        return PLACEHOLDER_PATTERN.sub(substitute, template)
    if isinstance(template, Mapping):
        rendered: dict[Any, Any] = {}
        for key, item in template.items():
            new = apply_values(item, values, remove_notset=remove_notset, env=environ)
            if new is not NOTSET:
                rendered[key] = new
            elif not remove_notset:
                rendered[key] = item
        return rendered
    if isinstance(template, list):
        result = []
        for item in template:
            new = apply_values(item, values, remove_notset=remove_notset, env=environ)
            if new is not NOTSET:
                result.append(new)
            elif not remove_notset:
                result.append(item)
        return result
    raise TemplateError(
        f"a job template may hold only JSON values, found {type(template).__name__}: {template!r}"
    )
