"""A flow function's parameters, read from its source with :mod:`ast`, never by importing it.

``deployment create`` must not run a user's module to learn that its
function exists (the module may start things, or need packages this machine
lacks), so the file is parsed and its top-level definitions read. The
parameter names are stored in the deployment's ``parameter_openapi_schema``
(names only: no types are inferred), so ``deployment run`` can refuse a
mistyped ``--param`` on any machine, before a run fails with a ``TypeError``.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from trio_worker._cli import did_you_mean

__all__ = ["FlowSignature", "parameter_problem", "read_signature"]


@attrs.frozen
class FlowSignature:
    """What a flow function accepts by keyword (the engine calls it with keywords)."""

    names: tuple[str, ...]
    required: tuple[str, ...]
    takes_any: bool

    def schema(self) -> dict[str, Any]:
        """The names as a JSON schema (Prefect's ``parameter_openapi_schema`` shape)."""
        schema: dict[str, Any] = {
            "title": "Parameters",
            "type": "object",
            "properties": {
                name: {"title": name, "position": i} for i, name in enumerate(self.names)
            },
            "required": list(self.required),
        }
        if self.takes_any:
            schema["additionalProperties"] = True
        return schema

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any] | None) -> FlowSignature | None:
        """Read a schema back; None when there is none to check against."""
        if not schema or not isinstance(schema.get("properties"), dict):
            return None
        required = schema.get("required") or []
        return cls(
            names=tuple(schema["properties"]),
            required=tuple(r for r in required if isinstance(r, str)),
            takes_any=bool(schema.get("additionalProperties", False)),
        )


def _bound_names(tree: ast.Module) -> set[str]:
    """Names bound at the top level other than by ``def`` (assignments, imports)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).partition(".")[0] for a in node.names}
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
    return names


def read_signature(path: Path, function: str) -> FlowSignature | None:
    """Read ``function``'s parameters from the file at ``path`` without importing it.

    Returns:
        Its signature, or None when the name is bound some other way (an
        assignment or an import: only importing could tell what it accepts).

    Raises:
        ValueError: the file cannot be read or parsed, or defines no such name;
            the message suggests the closest function.
    """
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except SyntaxError as exc:
        raise ValueError(f"{path} cannot be parsed: line {exc.lineno}: {exc.msg}") from None
    functions = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    node = functions.get(function)
    if node is None:
        if function in _bound_names(tree):
            return None
        known = sorted(functions)
        listed = f" (functions: {', '.join(known)})" if known else " (it defines no functions)"
        raise ValueError(
            f"{path.name} has no function {function!r}.{did_you_mean(function, known)}{listed}"
        )
    args = node.args
    keyword = [*args.args, *args.kwonlyargs]
    # Defaults align with the last positional parameters; kw-only ones pair up.
    positional_defaults = len(args.defaults)
    required = [a.arg for a in args.args[: len(args.args) - positional_defaults]]
    required += [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None]
    return FlowSignature(
        names=tuple(a.arg for a in keyword),
        required=tuple(required),
        takes_any=args.kwarg is not None,
    )


def parameter_problem(
    signature: FlowSignature, parameters: Mapping[str, Any], *, complete: bool
) -> str | None:
    """Return a sentence for the first parameter the function would refuse, or None.

    Args:
        signature: what the function accepts.
        parameters: the parameters given.
        complete: whether these are all of a run's parameters (then a
            required one missing is a problem too).
    """
    accepted = f"(accepted: {', '.join(signature.names) or 'none'})"
    if not signature.takes_any:
        for name in parameters:
            if name not in signature.names:
                hint = did_you_mean(name, signature.names)
                return f"--param {name}: the flow has no parameter {name!r}.{hint} {accepted}"
    missing = [name for name in signature.required if name not in parameters]
    if complete and missing:
        return f"the flow needs --param {missing[0]}=... {accepted}"
    return None
