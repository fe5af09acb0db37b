"""The package's shape: no module imports itself back, however indirectly; modules and functions small enough
to read in one sitting; only entry points and composition at the top; README's module map true.

A cycle is counted even when one link is only for type checking (``if TYPE_CHECKING:``) or sits inside a function:
either way the two modules can no longer be understood, tested or moved apart, and a deferred import is a cycle
that only waits for someone to hoist it. The modules are found by walking the package, so the check follows files
as they move.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import resolver

PACKAGE = Path(resolver.__file__).parent
README = PACKAGE.parent / "README.md"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
# Longer on purpose, each with the reason (the same reason is in its docstring).
LONG_ON_PURPOSE = {
    "resolver/core/pipeline.py:Pipeline.on_query": "the per-packet path, read in order rather than paid for as calls",
}
TOP_LEVEL = {"__init__.py", "__main__.py", "cli.py", "app.py", "errors.py", "tasks.py"}


def module_name(root: Path, path: Path) -> str:
    """``root/ops/snapshot.py`` -> ``resolver.ops.snapshot``; a package's ``__init__.py`` is the package."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(root, path): path for path in sorted(root.rglob("*.py"))}


def imports(name: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """Every module of the package that ``name`` imports, anywhere in its source (the whole tree is walked, so
    imports under ``if TYPE_CHECKING:`` and inside functions count)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb from this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # ``from resolver.ops import statuspage`` imports the module resolver.ops.statuspage too.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known and module != name}


def import_graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_within(graph, group) for group in groups]


def _path_within(graph: Mapping[str, set[str]], group: set[str]) -> list[str]:
    """A shortest cycle through the group's first module, staying inside the group (breadth first)."""
    start = min(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & group):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if succ not in came_from:
                    came_from[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def _lines(found: list[list[str]]) -> Iterator[str]:
    for cycle in found:
        yield " -> ".join(cycle)


def test_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 10, f"walked {PACKAGE} and found only {sorted(graph)}"
    found = cycles(graph)
    assert not found, "import cycles (type-only and deferred imports count):\n" + "\n".join(_lines(found))


def test_the_cycle_check_sees_type_only_relative_and_deferred_imports(tmp_path: Path) -> None:
    """The check itself, on a package made up for it: each kind of import closes a cycle of its own."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
        "b.py": "import pkg.a\n",
        "c.py": "def later() -> None:\n    from pkg.sub import d\n",
        "sub/__init__.py": "",
        "sub/d.py": "from .. import c\n",
        "e.py": "import os\nfrom pkg import a\n",  # imports into a cycle, is in none
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["pkg.sub.d"] == {"pkg", "pkg.c"}
    assert sorted(cycles(graph)) == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.c", "pkg.sub.d", "pkg.c"]]


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def test_modules_and_functions_are_small() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(PACKAGE.parent))
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{where}: {source.count(chr(10))} lines")
        for name, node in _functions(ast.parse(source)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES and f"{where}:{name}" not in LONG_ON_PURPOSE:
                too_long.append(f"{where}:{name}: {length} lines")
    assert not too_long, f"over {MAX_MODULE_LINES} lines a module or {MAX_FUNCTION_LINES} a function:\n" + \
        "\n".join(too_long)


def test_the_top_of_the_package_is_entry_points_and_composition() -> None:
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL, f"modules at the top of resolver/: {sorted(top)}; the rest belongs in a subpackage"


def readme_module_map() -> dict[str, str]:
    """README's module map (the ``resolver/`` tree under "Development"): path -> its one-line role."""
    block = re.search(r"```text\n(resolver/\n.*?)```", README.read_text(), re.DOTALL)
    assert block, "README has no module map (a text block starting with resolver/)"
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = [(-1, "resolver")]
    for line in block.group(1).splitlines()[1:]:
        match = re.match(r"^( *)(\S+)\s*(.*)$", line)
        if not match or not match.group(1):
            break  # the end of the resolver/ tree (blocklists/, tests/ … follow at the left margin)
        indent, name, role = len(match.group(1)), match.group(2), match.group(3).strip()
        while stack[-1][0] >= indent:
            stack.pop()
        path = f"{stack[-1][1]}/{name.rstrip('/')}"
        out[path] = role
        if name.endswith("/"):
            stack.append((indent, path))
    return out


def test_readme_module_map_lists_every_module_with_its_role() -> None:
    shown = readme_module_map()
    modules_here = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                    if p.name != "__init__.py" or p.parent == PACKAGE}
    folders = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert set(shown) == modules_here | folders, (
        f"missing from README: {sorted(modules_here | folders - set(shown))}; "
        f"in README but not in the package: {sorted(set(shown) - modules_here - folders)}")
    assert all(shown.values()), f"no role given for {[k for k, v in shown.items() if not v]}"
