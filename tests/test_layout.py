"""The package's shape, checked: the limits the README's "Code layout" section promises.

Why a test: a structure a newcomer can follow erodes one long function at a time; this fails the
change that crosses a limit instead of leaving it to the next reviewer.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fliplet_workers"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (path, ast.parse(path.read_text(), str(path)))
    assert len(found) > 20, f"the package was not found under {PACKAGE}"
    return found


def _imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The package modules a module imports at run time (``if TYPE_CHECKING:`` blocks left out)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fliplet_workers"):
            # ``from package import module`` depends on that module, not on the package's __init__
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & known
            names.update(subs if len(subs) == len(node.names) else subs | {node.module})
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name in known}


def test_no_module_is_longer_than_the_limit() -> None:
    long = {str(path.relative_to(PACKAGE.parent)): len(path.read_text().splitlines())
            for path, _ in _modules().values()}
    assert {name: lines for name, lines in long.items() if lines > MAX_MODULE_LINES} == {}


def test_no_function_is_longer_than_the_limit() -> None:
    long = []
    for path, tree in _modules().values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_no_two_modules_share_a_name() -> None:
    stems: dict[str, list[str]] = defaultdict(list)
    for path, _ in _modules().values():
        if path.name != "__init__.py":
            stems[path.stem].append(str(path.relative_to(PACKAGE.parent)))
    assert {stem: paths for stem, paths in stems.items() if len(paths) > 1} == {}


def test_no_import_cycle() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(tree, known) - {name} for name, (_, tree) in modules.items()}
    # A package's __init__ re-exporting its own modules is not a cycle of the design: leave out the
    # edges from a package to its own submodules.
    graph = {name: {d for d in deps if not d.startswith(name + ".")} for name, deps in graph.items()}
    cycles = []
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert cycles == []


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The cycle finder finds a planted cycle (so an empty answer above means something)."""
    a = ast.parse("from fliplet_workers.b import x\n")
    b = ast.parse("import fliplet_workers.a\n")
    known = {"fliplet_workers.a", "fliplet_workers.b"}
    assert _imports(a, known) == {"fliplet_workers.b"}
    assert _imports(b, known) == {"fliplet_workers.a"}
