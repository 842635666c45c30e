"""Block and variable references in job templates: the stages that read from the API.

After job variables are applied (:func:`._templating.apply_values`), a template
may still name blocks (``{{ prefect.blocks.<type>.<name> }}``, ``$ref`` block
documents) and Prefect variables (``{{ prefect.variables.<name> }}``). These
stages read each once through injected lookups rather than an imported
client, so this module stays free of I/O: the worker passes its client's
methods, tests pass dictionaries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from trio_worker._core._exceptions import TemplateError
from trio_worker._core._templating import (
    BLOCK_PREFIX,
    NOTSET,
    VARIABLE_PREFIX,
    PlaceholderKind,
    find_placeholders,
    lookup_path,
    render,
)

__all__ = [
    "GetBlock",
    "GetBlockDocument",
    "GetVariable",
    "resolve_block_document_references",
    "resolve_variables",
]

GetVariable = Callable[[str], Awaitable[Any]]
"""Read a Prefect variable's value by name; ``None`` means it does not exist."""

GetBlock = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
"""Read a block document's ``data`` by (block type slug, document name); ``None`` = missing."""

GetBlockDocument = Callable[[str], Awaitable[Mapping[str, Any] | None]]
"""Read a block document's ``data`` by document id; ``None`` = missing."""


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
        p.name.removeprefix(VARIABLE_PREFIX)
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
        return found[name.removeprefix(VARIABLE_PREFIX)]

    return render(template, PlaceholderKind.VARIABLE, resolve)


def _split_block_name(name: str) -> tuple[str, str, str | None]:
    parts = name.removeprefix(BLOCK_PREFIX).split(".", 2)
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

    return render(template, PlaceholderKind.BLOCK_DOCUMENT, resolve, embedded=resolve_embedded)
