"""spoolup's modules import each other without cycles: cross-cutting concerns (metrics,
logging) hook into the core, the core does not import them back."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "spoolup"

# Cycles whose removal is another issue's design step; listed, never silently accepted.
# (upload <-> recover is gone: the S3 object protocol is spoolup/protocol.py, issue 12.)
KNOWN: set[frozenset[str]] = set()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """spoolup modules imported anywhere in a module (top level or inside functions),
    except under `if TYPE_CHECKING:` (never executed)."""
    out: set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "spoolup":
                for a in node.names:
                    out.add(f"spoolup.{a.name}" if f"spoolup.{a.name}" in modules else "spoolup")
            elif node.module in modules:
                out.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def module_name(path: Path) -> str:
    """spoolup/x.py -> spoolup.x, spoolup/journal/__init__.py -> spoolup.journal."""
    parts = ("spoolup", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(ast.parse(path.read_text(), str(path)), modules) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "spoolup.status" in graph["spoolup.metrics"]  # imported inside JournalCollector.collect
    assert "spoolup.journal" in graph["spoolup.status"]
    assert "spoolup.journal.store" in graph["spoolup.journal"]  # the journal package's modules are in it
    assert "spoolup.config.values" in graph["spoolup.config.options"]  # modules of subpackages are nodes too


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycles():
    found = [sorted(c) for c in cycles(import_graph()) if c not in KNOWN]
    assert found == [], f"import cycles in spoolup/: {found}"
