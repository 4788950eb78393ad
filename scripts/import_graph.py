"""The import graph of trio_streams/, built with ``ast``: fails on any cycle and on http/ → storage/.

Every import counts, those under ``if TYPE_CHECKING:`` and inside functions
included: a cycle hidden from the interpreter is still a cycle in the design.

    python scripts/import_graph.py          # prints the graph's size; exit 1 with the problems
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "trio_streams"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
# Layers that may not import another: (importer prefix, imported prefix).
FORBIDDEN = [(f"{PACKAGE}.http", f"{PACKAGE}.storage")]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """The package's modules that ``path`` imports (``from . import x`` counts as module x)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(package, node.module, node.level)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _absolute(package: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - level + 1])
    return f"{base}.{module}" if module else base


def build_graph(root: Path = ROOT) -> dict[str, set[str]]:
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    return {module_name(p, root): imports_of(p, modules, root) for p in paths}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(1000, 4 * len(graph)))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def forbidden_imports(graph: dict[str, set[str]], forbidden: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted(
        (source, target)
        for source, targets in graph.items()
        for target in targets
        for importer, imported in forbidden
        if _within(source, importer) and _within(target, imported)
    )


def problems(graph: dict[str, set[str]], forbidden: list[tuple[str, str]] = FORBIDDEN) -> list[str]:
    found = [f"import cycle: {' <-> '.join(cycle)}" for cycle in find_cycles(graph)]
    found += [f"forbidden import: {source} -> {target}" for source, target in forbidden_imports(graph, forbidden)]
    return found


def main() -> int:
    graph = build_graph()
    found = problems(graph)
    for line in found:
        print(line)
    edges = sum(len(targets) for targets in graph.values())
    print(f"{len(graph)} modules, {edges} imports: {'FAIL' if found else 'no cycles, no forbidden imports'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
