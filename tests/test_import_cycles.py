"""Import cycles inside asyncddp, read from the source with ``ast`` (no module is imported).

Every ``import``/``from ... import`` counts, wherever it sits: top level, inside a function, or
under ``TYPE_CHECKING``, because a function-local import only hides a cycle until the function
runs. Two graphs are checked: modules, and sub-packages (``asyncddp.comm``, ``asyncddp.launcher``,
...; a top-level module is its own node). The cycles that exist are listed in ``ALLOWED_*``; a
new cycle fails, and so does an entry that no longer exists, so the lists only shrink.
Each module must also import on its own, in a fresh set of ``asyncddp`` modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "asyncddp"

# Each cycle starts at its alphabetically smallest member (the leading ``asyncddp.`` dropped).
# 12 entries (11 module cycles + 1 sub-package cycle) when this check was written; none now.
ALLOWED_MODULE_CYCLES: set[tuple[str, ...]] = set()
ALLOWED_PACKAGE_CYCLES: set[tuple[str, ...]] = set()


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module under asyncddp/."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module that ``import name`` loads last: ``name`` itself, or its nearest parent."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, package: str, modules: dict[str, Path]) -> set[str]:
    """The asyncddp modules one import statement loads (``from . import x`` -> the module x)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names if alias.name.split(".")[0] == "asyncddp"]
        return {owner for owner in (_owner(name, modules) for name in names) if owner}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != "asyncddp":
        return set()
    found = set()
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        found.add(submodule if submodule in modules else _owner(base, modules))
    return {name for name in found if name}


def module_graph() -> dict[str, set[str]]:
    """Module -> the asyncddp modules it imports anywhere in its source."""
    modules = module_files()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            edges |= _targets(node, package, modules)
        graph[name] = edges - {name}
    return graph


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Sub-package -> the sub-packages its modules import (``asyncddp.x.y`` belongs to ``asyncddp.x``)."""

    def unit(name: str) -> str:
        return ".".join(name.split(".")[:2])

    packages: dict[str, set[str]] = {unit(name): set() for name in graph}
    for name, edges in graph.items():
        packages[unit(name)] |= {unit(target) for target in edges} - {unit(name)}
    return packages


def simple_cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every elementary cycle, once, starting at its smallest node, ``asyncddp.`` dropped."""
    found = set()
    for start in sorted(graph):
        stack = [(start, (start,))]
        while stack:
            node, path = stack.pop()
            for target in graph.get(node, ()):
                if target == start:
                    found.add(tuple(name.removeprefix("asyncddp.") for name in path))
                elif target > start and target not in path:
                    stack.append((target, path + (target,)))
    return found


def _report(kind: str, new: set, gone: set) -> str:
    lines = [f"new {kind} import cycle: {' -> '.join(cycle + cycle[:1])}" for cycle in sorted(new)]
    lines += [f"{kind} cycle no longer exists, remove it from the allow-list: {cycle}" for cycle in sorted(gone)]
    return "\n".join(lines)


def test_the_cycle_finder_sees_function_local_and_relative_imports(tmp_path):
    graph = {"asyncddp.a": {"asyncddp.b"}, "asyncddp.b": {"asyncddp.c"}, "asyncddp.c": {"asyncddp.a"}}
    assert simple_cycles(graph) == {("a", "b", "c")}
    source = "def f():\n    from . import engine\n    from .p2p import send\nimport asyncddp.errors\n"
    modules = {name: Path() for name in ("asyncddp", "asyncddp.comm", "asyncddp.comm.engine",
                                         "asyncddp.comm.p2p", "asyncddp.errors")}
    edges = set()
    for node in ast.walk(ast.parse(source)):
        edges |= _targets(node, "asyncddp.comm", modules)
    assert edges == {"asyncddp.comm.engine", "asyncddp.comm.p2p", "asyncddp.errors"}


def test_no_new_module_cycles():
    cycles = simple_cycles(module_graph())
    assert cycles == ALLOWED_MODULE_CYCLES, _report("module", cycles - ALLOWED_MODULE_CYCLES,
                                                    ALLOWED_MODULE_CYCLES - cycles)


def test_no_new_subpackage_cycles():
    cycles = simple_cycles(package_graph(module_graph()))
    assert cycles == ALLOWED_PACKAGE_CYCLES, _report("sub-package", cycles - ALLOWED_PACKAGE_CYCLES,
                                                     ALLOWED_PACKAGE_CYCLES - cycles)


# Imports each named module with every asyncddp module forgotten first: one interpreter for all
# (torch, numpy and mpi4py load once), yet each module starts from a fresh set of asyncddp modules.
_IMPORT_ALONE = """
import importlib, sys
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "asyncddp" or m.startswith("asyncddp.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as error:
        print(f"{name}: {type(error).__name__}: {error}")
"""


def test_each_module_imports_on_its_own():
    # The packages whose cycles were held together by import order, and the top-level modules.
    names = [name for name in module_files()
             if name.startswith(("asyncddp.comm", "asyncddp.compat")) or name.count(".") == 1]
    names.remove("asyncddp.__main__")  # runs the CLI
    result = subprocess.run([sys.executable, "-c", _IMPORT_ALONE, *names], capture_output=True, text=True,
                            cwd=PACKAGE.parent, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", "modules that fail to import on their own:\n" + result.stdout


def test_top_level_holds_only_the_entry_points_and_the_errors():
    # Every other module lives in the half it belongs to; rank_report.py only re-exports
    # asyncddp.comm.rank_report under the name the README once gave it.
    assert sorted(path.name for path in PACKAGE.glob("*.py")) == [
        "__init__.py", "__main__.py", "errors.py", "rank_report.py"]
    from asyncddp import rank_report
    from asyncddp.comm import rank_report as moved

    assert all(getattr(rank_report, name) is getattr(moved, name) for name in moved.__all__)
