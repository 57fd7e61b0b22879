"""The import graph of ``sdtriton``, ``sdtriton.export`` and ``sdtriton.client`` has no cycles.

Every ``import`` counts, wherever it stands: at module level, under ``TYPE_CHECKING`` or inside a function.
A lazy import inside a function only hides a cycle from the interpreter, not from the reader.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Folders and the import package each becomes, as pyproject.toml's [tool.setuptools] package-dir maps them.
PACKAGE_DIRS = {"sdtriton": "sdtriton", "client": "sdtriton.client", "export": "sdtriton.export"}
PROJECT_PACKAGE = "sdtriton"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Maps each project module's dotted name to its file."""
    modules: dict[str, Path] = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _imported_names(tree: ast.Module, *, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name an import statement in ``tree`` asks for, ``from`` names joined to their module."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The project module that importing ``name`` loads: the longest prefix that is a module of ours."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Each project module and the project modules it imports."""
    modules = module_files(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = {
            _resolve(name, modules)
            for name in _imported_names(tree, module=module, is_package=path.name == "__init__.py")
            if name.split(".")[0] == PROJECT_PACKAGE
        }
        # A package's __init__ runs before its submodules, so ``sdtriton.perf.x`` -> ``sdtriton.perf`` is no
        # edge of a cycle; an import that resolves to one of the module's own parents is left out.
        graph[module] = {t for t in targets if t is not None and t != module and not module.startswith(f"{t}.")}
    return graph


def strongly_connected_components(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; each component sorted, components in discovery order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _describe(component: list[str], graph: Mapping[str, set[str]]) -> str:
    members = set(component)
    edges = [f"    {a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "  " + ", ".join(component) + "\n" + "\n".join(edges)


def test_import_graph_has_no_cycles() -> None:
    graph = import_graph()
    cycles = [c for c in strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, "import cycles (module -> module it imports):\n" + "\n".join(_describe(c, graph) for c in cycles)


def test_graph_covers_the_three_packages_and_sees_lazy_imports(tmp_path: Path) -> None:
    graph = import_graph()
    assert "sdtriton.perf.runner" in graph
    assert "sdtriton.client.client" in graph
    assert "sdtriton.export.configs" in graph
    for folder in PACKAGE_DIRS:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "sdtriton" / "a.py").write_text("from sdtriton import b\n")
    (tmp_path / "sdtriton" / "b.py").write_text("def f():\n    from .c import g\n")
    (tmp_path / "sdtriton" / "c.py").write_text("import sdtriton.a\nfrom sdtriton.client import x\n")
    graph = import_graph(tmp_path)
    assert graph["sdtriton.b"] == {"sdtriton.c"}
    assert graph["sdtriton.c"] == {"sdtriton.a", "sdtriton.client"}
    assert [c for c in strongly_connected_components(graph) if len(c) > 1] == [
        ["sdtriton.a", "sdtriton.b", "sdtriton.c"]
    ]
