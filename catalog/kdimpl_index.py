"""What ``kdimpl`` exports, found by reading its sources with :mod:`ast` (no torch import).

Every ``kdimpl/**/*.py`` is scanned: a public top-level class or function that its module lists
in a literal ``__all__`` is an exported object, and that module is its defining file (the README
links to it). The package ``__init__`` files re-export those names; reading the defining modules
directly gives the file to link without resolving imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

from catalog.loader import read_regular_file


def _literal_names(node: ast.expr) -> list[str]:
    if isinstance(node, (ast.List, ast.Tuple)):
        return [item.value for item in node.elts if isinstance(item, ast.Constant) and isinstance(item.value, str)]
    return []


def _registered(node: ast.stmt) -> list[str]:
    """``@register_loss(name, function=f)`` on a class exports the class and ``f`` (kdimpl._registry)."""
    names: list[str] = []
    for decorator in getattr(node, "decorator_list", ()):
        call = decorator if isinstance(decorator, ast.Call) else None
        func = call.func if call is not None else None
        name = getattr(func, "id", getattr(func, "attr", ""))
        if isinstance(func, (ast.Name, ast.Attribute)) and name == "register_loss":
            names += [kw.value.id for kw in call.keywords if kw.arg == "function" and isinstance(kw.value, ast.Name)]
            names.append(node.name)
    return names


def module_exports(source: str) -> list[str]:
    """Names that a module defines at top level (``def``/``class``), lists in ``__all__`` and does not mark private."""
    tree = ast.parse(source)
    listed: list[str] = []
    defined: set[str] = set()
    registered: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
            registered += _registered(node)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            listed = _literal_names(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "__all__":
            listed = _literal_names(node.value) if node.value is not None else []
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id == "__all__":
            listed += _literal_names(node.value)
    return [name for name in dict.fromkeys(listed + registered) if name in defined and not name.startswith("_")]


def scan(root: str | Path) -> dict[str, str]:
    """``{exported name: repository-relative defining file}`` for ``root/kdimpl``.

    Files that cannot be read or do not parse (while being edited, or a FIFO) are skipped. When two modules
    export the same name, the first in sorted path order wins.
    """
    root = Path(root)
    index: dict[str, str] = {}
    for path in sorted((root / "kdimpl").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        try:
            names = module_exports(read_regular_file(path).decode("utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError, RecursionError, MemoryError):
            continue
        for name in names:
            index.setdefault(name, rel)
    return index
