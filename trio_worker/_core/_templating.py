"""The job template engine: Prefect's placeholder semantics as pure functions.

A base job template is JSON in which strings may hold placeholders such as
``{{ name }}``, ``{{ env.HOME }}``, ``{{ $HOME }}``, ``{{ prefect.variables.region }}``
or ``{{ prefect.blocks.secret.token }}``. Pools are shared with Prefect workers,
so a template must render here exactly as it renders there; the rules are those
of ``prefect-api-subset.md`` section 7, checked by running Prefect's own functions.

Rendering happens in three stages, in this order, each a single pass (a value
inserted by one stage is never re-templated by the same stage):

1. :func:`apply_values`: job variables and ``$ENV`` placeholders, synchronous.
2. :func:`resolve_block_document_references`: ``prefect.blocks.*`` placeholders
   and ``{"$ref": {"block_document_id": ...}}`` objects, through injected lookups.
3. :func:`resolve_variables`: ``prefect.variables.*`` through an injected lookup.

The lookups are injected rather than imported so that this module stays free of
I/O and of the API client: the worker passes its client's methods, tests pass
dictionaries.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import attrs

from trio_worker._core._exceptions import TemplateError
from trio_worker._core._settings import process_environment

__all__ = [
    "NOTSET",
    "PLACEHOLDER_PATTERN",
    "GetBlock",
    "GetBlockDocument",
    "GetVariable",
    "NotSetType",
    "Placeholder",
    "PlaceholderKind",
    "apply_values",
    "find_placeholders",
    "lookup_path",
    "resolve_block_document_references",
    "resolve_variables",
]

#: Prefect's placeholder syntax; group 1 is the dotted/indexed name.
PLACEHOLDER_PATTERN: Final = re.compile(r"{{\s*([\w\.\-\[\]$]+)\s*}}")

_VARIABLE_PREFIX: Final = "prefect.variables."
_BLOCK_PREFIX: Final = "prefect.blocks."
_ENV_PREFIX: Final = "$"

GetVariable = Callable[[str], Awaitable[Any]]
"""Read a Prefect variable's value by name; ``None`` means it does not exist."""

GetBlock = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
"""Read a block document's ``data`` by (block type slug, document name); ``None`` = missing."""

GetBlockDocument = Callable[[str], Awaitable[Mapping[str, Any] | None]]
"""Read a block document's ``data`` by document id; ``None`` = missing."""


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
    if name.startswith(_BLOCK_PREFIX):
        return PlaceholderKind.BLOCK_DOCUMENT
    if name.startswith(_VARIABLE_PREFIX):
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


def _render(
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
            key: _render(value, kind, resolve, embedded=embedded) for key, value in template.items()
        }
    if isinstance(template, list):
        return [_render(item, kind, resolve, embedded=embedded) for item in template]
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


async def resolve_variables(template: Any, get_variable: GetVariable) -> Any:
    """Replace ``{{ prefect.variables.NAME }}`` placeholders with the variables' values.

    Each distinct name is read once through ``get_variable``. A whole-string
    placeholder becomes the value with its type (a dict stays a dict); an
    embedded one becomes ``str(value)``. A variable that does not exist renders
    as ``""`` in both cases, as Prefect does: a typo yields an empty field, and
    validation reports it if the field cannot be empty.

    Args:
        template: any JSON value; it is not modified.
        get_variable: the API read; returns the value, or ``None`` when missing.

    Returns:
        The rendered copy of ``template``.
    """
    names = {
        p.name.removeprefix(_VARIABLE_PREFIX)
        for p in find_placeholders(template)
        if p.kind is PlaceholderKind.VARIABLE
    }
    if not names:
        return template
    found: dict[str, Any] = {}
    for name in sorted(names):
        value = await get_variable(name)
        found[name] = "" if value is None else value

    def resolve(name: str) -> Any:
        return found[name.removeprefix(_VARIABLE_PREFIX)]

    return _render(template, PlaceholderKind.VARIABLE, resolve)


def _split_block_name(name: str) -> tuple[str, str, str | None]:
    parts = name.removeprefix(_BLOCK_PREFIX).split(".", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise TemplateError(
            f"block placeholder {{{{ {name} }}}} must name a block type slug and a document,"
            " as in {{ prefect.blocks.secret.my-token }}"
        )
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _block_value(name: str, data: Mapping[str, Any], keypath: str | None) -> Any:
    """Pick the value a block placeholder stands for out of the block's data.

    Blocks that hold a single ``value`` (Secret, String, JSON) resolve to that value
    unless the keypath itself starts at ``value``, as in Prefect.
    """
    value: Any = data
    if len(data) == 1 and "value" in data and not (keypath and keypath.startswith("value")):
        value = data["value"]
    if keypath is None:
        return value
    picked = lookup_path(value, keypath)
    if picked is NOTSET:
        raise TemplateError(f"{{{{ {name} }}}}: the block's data has nothing at {keypath!r}")
    return picked


def _collect_refs(template: Any, found: set[str]) -> None:
    if isinstance(template, Mapping):
        ref = template.get("$ref")
        if isinstance(ref, Mapping) and ref.get("block_document_id"):
            found.add(str(ref["block_document_id"]))
            return
        for value in template.values():
            _collect_refs(value, found)
    elif isinstance(template, list):
        for item in template:
            _collect_refs(item, found)


def _replace_refs(template: Any, documents: Mapping[str, Any]) -> Any:
    if isinstance(template, Mapping):
        ref = template.get("$ref")
        if isinstance(ref, Mapping) and ref.get("block_document_id"):
            return documents[str(ref["block_document_id"])]
        return {key: _replace_refs(value, documents) for key, value in template.items()}
    if isinstance(template, list):
        return [_replace_refs(item, documents) for item in template]
    return template


async def resolve_block_document_references(
    template: Any,
    get_block: GetBlock | None,
    *,
    get_block_document: GetBlockDocument | None = None,
) -> Any:
    """Replace block references with the blocks' data.

    ``{{ prefect.blocks.<type-slug>.<name>[.<keypath>] }}`` reads the block
    document once per (slug, name). Whole-string, it becomes the data with its
    type (or the single ``value`` of a Secret-like block, or what the keypath
    points at); embedded, ``str()`` of it, which must then be a scalar. An object
    ``{"$ref": {"block_document_id": id}}`` becomes that document's data.

    Args:
        template: any JSON value; it is not modified.
        get_block: reads a document's data by (slug, name), ``None`` when missing.
            When not given, block placeholders are left untouched.
        get_block_document: reads a document's data by id, ``None`` when missing.
            When not given, ``$ref`` objects are left untouched.

    Returns:
        The rendered copy of ``template``.

    Raises:
        TemplateError: a block does not exist, a keypath finds nothing, a
            placeholder lacks a slug or name, or a dict/list would be embedded in text.
    """
    if get_block_document is not None:
        ids: set[str] = set()
        _collect_refs(template, ids)
        documents: dict[str, Any] = {}
        for block_id in sorted(ids):
            data = await get_block_document(block_id)
            if data is None:
                raise TemplateError(f"block document {block_id} referenced by $ref was not found")
            documents[block_id] = data
        template = _replace_refs(template, documents)

    placeholders = {
        p.name for p in find_placeholders(template) if p.kind is PlaceholderKind.BLOCK_DOCUMENT
    }
    if get_block is None or not placeholders:
        return template
    blocks: dict[tuple[str, str], Mapping[str, Any]] = {}
    for slug, name in sorted({_split_block_name(p)[:2] for p in placeholders}):
        data = await get_block(slug, name)
        if data is None:
            raise TemplateError(f"Block not found: {name!r} of type {slug!r}")
        blocks[slug, name] = data

    def resolve(placeholder: str) -> Any:
        slug, name, keypath = _split_block_name(placeholder)
        return _block_value(placeholder, blocks[slug, name], keypath)

    def resolve_embedded(placeholder: str) -> Any:
        value = resolve(placeholder)
        if isinstance(value, Mapping | list):
            raise TemplateError(
                f"{{{{ {placeholder} }}}} holds a {type(value).__name__} and cannot be embedded"
                " in text; use it as the whole string or add a keypath to a scalar"
            )
        return value

    return _render(template, PlaceholderKind.BLOCK_DOCUMENT, resolve, embedded=resolve_embedded)
