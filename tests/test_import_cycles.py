"""No import cycle anywhere in ``trio_worker``, counting every kind of import.

import-linter's ``layers`` contract sees the packages; this test sees the
modules, and counts what a linter may skip: imports under ``TYPE_CHECKING``
and imports inside functions, the usual ways of hiding a cycle. A cycle means
two modules cannot be understood (or changed) one without the other.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

import trio_worker

PACKAGE = Path(trio_worker.__file__).parent


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(
    tree: ast.AST, module: str, *, is_package: bool, modules: Collection[str]
) -> Iterator[str]:
    """Every module ``module`` names in an import, wherever the statement is."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # ``from pkg import mod`` names the module pkg.mod when there is one
            # (as ``import pkg.mod`` does); ``from pkg import name`` names pkg.
            for alias in node.names:
                yield f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target


def import_graph(root: Path) -> dict[str, set[str]]:
    """Map each module of the package at ``root`` to the package modules it imports."""
    paths = {_module_name(root, path): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = _imported(tree, module, is_package=path.name == "__init__.py", modules=paths)
        graph[module] = {name for name in names if name in paths and name != module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _write(root: Path, files: Iterable[tuple[str, str]]) -> None:
    for name, text in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_trio_worker_has_no_import_cycle() -> None:
    cycles = find_cycles(import_graph(PACKAGE))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_a_cycle_hidden_under_type_checking_is_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        [
            ("pkg/__init__.py", ""),
            ("pkg/_a.py", "from pkg._b import B\n"),
            (
                "pkg/_b.py",
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._a import A\nB = 1\n",
            ),
        ],
    )
    assert find_cycles(import_graph(tmp_path / "pkg")) == [["pkg._a", "pkg._b"]]


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        [
            ("pkg/__init__.py", ""),
            ("pkg/sub/__init__.py", ""),
            ("pkg/sub/_a.py", "from pkg import _c\n"),
            ("pkg/_c.py", "def f():\n    from .sub import _a\n    return _a\n"),
        ],
    )
    assert find_cycles(import_graph(tmp_path / "pkg")) == [["pkg._c", "pkg.sub._a"]]


def test_imports_that_go_one_way_are_no_cycle(tmp_path: Path) -> None:
    _write(
        tmp_path,
        [
            ("pkg/__init__.py", ""),
            ("pkg/_a.py", "import pkg._b\n"),
            ("pkg/_b.py", "def f():\n    from pkg import _c\n"),
            ("pkg/_c.py", "X = 1\n"),
        ],
    )
    assert find_cycles(import_graph(tmp_path / "pkg")) == []
