"""Only the settings read the environment (and, documented, the engine and its zygote).

The package's source is parsed, not imported: every use of ``os.environ``,
``os.environb`` or ``os.getenv`` is a read unless it is a write, which is told
apart by its place in the syntax tree:

- the target of an assignment or ``del`` (``os.environ["X"] = ...``), or
- the object of a method that changes the mapping (``os.environ.update(...)``,
  ``.clear()``, ``.pop(...)``, ``.setdefault(...)``).

A write sets up a child process's environment and reads nothing; a read
anywhere else would be configuration that ``Settings`` does not know about.
``from os import environ`` is a read wherever it appears (the scan could not
follow the name).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TypeGuard

import trio_worker

PACKAGE = Path(trio_worker.__file__).parent

ALLOWED = {
    # The one reader: Settings.from_env and process_environment().
    "_core/_settings.py",
    # The engine runs inside the flow-run process: the run's own variables
    # (PREFECT__FLOW_RUN_ID, ...) are its input (docs/reference/configuration.md).
    "_engine/",
    # The warm-start zygote's fork becomes that engine and hands it its environment.
    "_process/_zygote.py",
    # ... and prepares, in the zygote before any fork, the SSL context those
    # engines will build from their Settings.from_env (the same reading).
    "_process/_zygote_prepare.py",
}

ENV_NAMES = {"environ", "environb", "getenv", "getenvb"}
WRITERS = {"update", "clear", "pop", "popitem", "setdefault", "__setitem__", "__delitem__"}


def _is_os_env(node: ast.AST) -> TypeGuard[ast.Attribute]:
    return (
        isinstance(node, ast.Attribute)
        and node.attr in ENV_NAMES
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def env_reads(source: str) -> list[int]:
    """Return the line numbers where ``source`` reads the environment."""
    tree = ast.parse(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            lines += [node.lineno for alias in node.names if alias.name in ENV_NAMES]
            continue
        if not _is_os_env(node):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store | ast.Del):
            continue
        if (
            isinstance(parent, ast.Attribute)
            and parent.attr in WRITERS
            and isinstance(parents.get(parent), ast.Call)
        ):
            continue
        lines.append(node.lineno)
    return sorted(lines)


def test_only_the_settings_read_the_environment() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if any(relative == allowed or relative.startswith(allowed) for allowed in ALLOWED):
            continue
        offenders += [f"{relative}:{line}" for line in env_reads(path.read_text())]
    assert not offenders, f"environment read outside Settings: {offenders}"


def test_the_scan_tells_reads_from_writes() -> None:
    reads = """
import os
from os import getenv
a = os.environ.get("X")
b = os.getenv("X")
c = os.environ["X"]
d = "X" in os.environ
e = {**os.environ}
f(os.environ)
"""
    assert env_reads(reads) == [3, 4, 5, 6, 7, 8, 9]
    writes = """
import os
os.environ["X"] = "1"
del os.environ["X"]
os.environ.update({"X": "1"})
os.environ.clear()
os.environ.pop("X", None)
os.environ.setdefault("X", "1")
"""
    assert env_reads(writes) == []


def test_the_allowed_readers_still_exist() -> None:
    # An allow-list entry that matches nothing would silently allow a new file.
    for allowed in ALLOWED:
        assert (PACKAGE / allowed).exists(), allowed
