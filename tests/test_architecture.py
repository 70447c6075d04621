"""The package's shape: only start.py (the run command) and the master import ``master``; no import cycle.

Every import counts: at module level, inside functions, and under ``TYPE_CHECKING``
(a cycle there is still two modules that cannot be understood one without the other).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import prefork

PACKAGE = Path(prefork.__file__).parent
MAY_IMPORT_MASTER = {"prefork.start", "prefork.master"}  # start.py: the run command's serve()
# Edges left out of the cycle check, each with its reason. http/ is being rewritten on another
# branch (HTTP message handling); its response module names the connection type of handler.py
# under TYPE_CHECKING only. Remove the entry when that rewrite lands (the test below says when).
TOLERATED = {("prefork.http.response", "prefork.http.handler")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The prefork modules ``path`` imports, wherever the import statement is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import status`
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_graph_is_read_from_every_kind_of_import() -> None:
    graph = import_graph()
    assert "prefork.master" in graph["prefork.start"]  # inside a function
    assert "prefork.settings" in graph["prefork.hooks"]  # under TYPE_CHECKING
    assert "prefork.status" in graph["prefork.metrics"]  # `from . import status`


def test_only_the_cli_imports_the_master() -> None:
    graph = import_graph()
    importers = {module for module, targets in graph.items() if "prefork.master" in targets}
    assert importers <= MAY_IMPORT_MASTER, f"{sorted(importers - MAY_IMPORT_MASTER)} import prefork.master"


def test_no_import_cycle() -> None:
    graph = import_graph()
    for source, target in TOLERATED:
        assert target in graph[source], f"{source} no longer imports {target}: remove it from TOLERATED"
        graph[source] = graph[source] - {target}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_readme_architecture_names_every_module() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+\.py)`", section))
    modules = {path.name for path in PACKAGE.glob("*.py")} - {"__init__.py"}
    assert modules - named == set(), f"README's Architecture does not mention {sorted(modules - named)}"
    assert named - modules == set(), f"README's Architecture names modules that do not exist: {sorted(named - modules)}"
