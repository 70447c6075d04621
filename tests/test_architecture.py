"""The package's shape: only start.py (the run command) and the master import ``master``; no import cycle;
the master never hands itself to a helper.

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


# Calls that keep the Master to itself: its selector calls back what the loop registered; a property is its own.
OWN_CALLS = {"self.selector.register", "property"}


def master_handed_out(source: str) -> list[str]:
    """Every argument in class ``Master`` of ``source`` that hands out the Master: ``self``, one of its methods
    (a bound method holds it), or a lambda over it; calls in :data:`OWN_CALLS` excepted."""
    master = next(node for node in ast.parse(source).body if isinstance(node, ast.ClassDef) and node.name == "Master")
    methods = {node.name for node in master.body if isinstance(node, ast.FunctionDef)}

    def hands_out(arg: ast.expr) -> bool:
        if isinstance(arg, ast.Name):
            return arg.id == "self"
        if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name) and arg.value.id == "self":
            return arg.attr in methods
        if isinstance(arg, ast.Lambda):
            return any(isinstance(node, ast.Name) and node.id == "self" for node in ast.walk(arg.body))
        return False

    found = []
    for call in (node for node in ast.walk(master) if isinstance(node, ast.Call)):
        if ast.unparse(call.func) in OWN_CALLS:
            continue
        arguments = [*call.args, *(keyword.value for keyword in call.keywords)]
        found += [f"line {call.lineno}: {ast.unparse(call)}" for arg in arguments if hands_out(arg)]
    return found


def test_no_helper_receives_the_master() -> None:
    """Helpers get the master's view (master_view.MasterView) or one of its parts, never the Master."""
    handed = master_handed_out((PACKAGE / "master.py").read_text())
    assert handed == [], "master.py hands the Master to a helper: " + "; ".join(handed)


def test_handing_out_the_master_is_found() -> None:
    source = """
class Master:
    def start(self):
        self.selector.register(3, 1, self.start)  # the loop's own callback
        status.snapshot(self.view)
        hooks.Server(self)
        ForkWith(own_fds=self.start)
        Endpoints(lambda: self.view)
"""
    assert [line.split(":")[0] for line in master_handed_out(source)] == ["line 6", "line 7", "line 8"]
