"""The package's imports run one way: no cycle, no library module importing a command, no torch or kdimpl.

Every module of ``catalog/`` is parsed with :mod:`ast` (imports inside functions included), so the
test sees the source, not what happens to be imported at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "catalog"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    """Every module named by an import statement anywhere in ``tree`` (relative imports resolved), and every
    string naming a ``catalog`` module (imported with :func:`importlib.import_module`)."""
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("catalog."):
            found.add(node.value)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from catalog import render`
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = imported(tree, name, path.name == "__init__.py")
        graph[name] = {target for target in targets if target in modules and target != name} | {
            target for target in targets if not target.startswith("catalog")
        }
    return graph


GRAPH = import_graph()


def internal(name: str) -> set[str]:
    return {target for target in GRAPH[name] if target.startswith("catalog")}


def test_the_graph_sees_the_package():
    assert {"catalog.cli", "catalog.loader", "catalog.validate", "catalog.commands.check"} <= set(GRAPH)
    assert "catalog.commands.check" in internal("catalog.cli")


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(internal(name)):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if not n.startswith(("catalog.commands", "catalog.cli"))
                                        and n not in ("catalog.__main__",)))
def test_library_modules_never_import_a_command_or_argparse(name):
    assert not {t for t in internal(name) if t.startswith(("catalog.commands", "catalog.cli"))}, name
    assert "argparse" not in GRAPH[name], name


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_catalog_never_imports_torch_or_kdimpl(name):
    assert not {t for t in GRAPH[name] if t.split(".")[0] in ("torch", "kdimpl")}, name


def test_layers_run_one_way():
    """model <- loader <- validate <- {render, bibtex, links, arxiv, importer} <- commands <- cli."""
    order = ["catalog.model", "catalog.loader", "catalog.validate"]
    for lower, upper in zip(order, order[1:]):
        assert upper not in internal(lower)
    for name in ("catalog.model", "catalog.loader"):
        assert not internal(name) & {"catalog.validate", "catalog.render", "catalog.bibtex", "catalog.links",
                                     "catalog.arxiv", "catalog.importer"}, name
