"""The packages' layering: which package may import which, and no import cycle between project modules.

Every import of every project module is read with ``ast``, at module level and inside functions alike (a lazy import
is still an arrow), so the rules hold for code a test run never reaches.

The rules, bottom up:

- ``foundation`` (errors, atomic I/O) imports nothing of the project: every package may import it.
- ``model`` imports only itself (not even ``foundation``: it keeps its own ``ModelError``), so it loads alone.
- ``runtimes`` is the robot's code: it never imports ``pipeline`` or ``benchmarks``, which is what lets the deploy
  bundle vendor ``runtimes/`` and ``foundation/`` only (``pipeline/bundle.py`` ``VENDORED``).
- ``quantize`` and ``benchmarks`` never import ``pipeline``. ``pipeline`` drives everything and may import anything.
- No cycle among project modules, except the ones listed in :data:`KNOWN_CYCLES`.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable
from pathlib import Path

import pytest

from pipeline.stage import PROJECT_PACKAGES

ROOT = Path(__file__).resolve().parent.parent

# package -> the project packages it must never import
FORBIDDEN: dict[str, frozenset[str]] = {
    "foundation": frozenset(PROJECT_PACKAGES) - {"foundation"},
    "model": frozenset(PROJECT_PACKAGES) - {"model"},
    "runtimes": frozenset({"pipeline", "benchmarks"}),
    "quantize": frozenset({"pipeline"}),
    "benchmarks": frozenset({"pipeline"}),
}
# Import cycles that exist today, each as the set of modules that import each other (through function-level imports):
# removed by the training-package / run-layout work. Delete an entry when its cycle is gone; the test says when.
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()


def project_modules(root: Path = ROOT, packages: Iterable[str] = PROJECT_PACKAGES) -> dict[str, Path]:
    """Dotted name -> file of every Python file of the project packages (``pkg/__init__.py`` is ``pkg``).

    Scripts in folders without ``__init__.py`` (the bundle's ``runtimes/bundle_files/*.py``) are included under their
    folder's dotted name: nothing imports them, but their imports obey their package's rules too.
    """
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
                continue
            parts = rel.with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name refers to: itself, or its longest prefix that is a module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """``(line, project module)`` of every import in a file, at module level or inside functions.

    ``from a.b import c`` counts as an import of ``a.b.c`` when that is a module, else of ``a.b``; relative imports are
    resolved against the file's package.
    """
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - (node.level - 1)], *([base] if base else [])])
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, modules) if name.split(".")[0] in PROJECT_PACKAGES else None
            if target is not None and target != module:
                found.append((node.lineno, target))
    return found


def import_graph(root: Path = ROOT, packages: Iterable[str] = PROJECT_PACKAGES) -> dict[str, dict[str, int]]:
    """Module -> {imported project module: first line importing it}."""
    modules = project_modules(root, packages)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for line, target in imports_of(module, path, modules):
            edges.setdefault(target, line)
        graph[module] = edges
    return graph


def layering_violations(
    graph: dict[str, dict[str, int]], forbidden: dict[str, frozenset[str]] = FORBIDDEN
) -> list[str]:
    """One line per import that crosses a forbidden arrow: ``file:line imports module (rule)``."""
    problems = []
    for module, edges in sorted(graph.items()):
        package = module.split(".")[0]
        for target, line in sorted(edges.items()):
            if target.split(".")[0] in forbidden.get(package, ()):
                problems.append(
                    f"{module}: line {line} imports {target} "
                    f"({package} never imports {', '.join(sorted(forbidden[package]))})"
                )
    return problems


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[frozenset[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(frozenset(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, {})))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


def a_cycle(group: frozenset[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """The shortest cycle through the group's first module, as ``[a, b, ..., a]`` (breadth-first, for the message)."""
    start = min(group)
    parent: dict[str, str] = {}
    queue = [start]
    for node in queue:
        for target in sorted(graph[node]):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if target in group and target not in parent:
                parent[target] = node
                queue.append(target)
    raise AssertionError(f"{sorted(group)} is not a cycle")


def _describe(group: frozenset[str], graph: dict[str, dict[str, int]]) -> str:
    cycle = a_cycle(group, graph)
    path = " -> ".join(f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)) + f" -> {cycle[0]}"
    return path if len(group) == len(cycle) - 1 else f"{path}; the whole group: {', '.join(sorted(group))}"


# ---------------------------------------------------------------------------------------------------------------------
# The project
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


def test_every_project_package_has_a_rule_or_is_the_top():
    assert set(FORBIDDEN) | {"pipeline"} == set(PROJECT_PACKAGES)


def test_no_package_imports_across_a_forbidden_arrow(graph):
    problems = layering_violations(graph)
    assert not problems, "imports against the layering (tests/test_layering.py):\n" + "\n".join(problems)


def test_no_import_cycle_between_project_modules(graph):
    groups = strongly_connected(graph)
    new = [_describe(g, graph) for g in groups if g not in KNOWN_CYCLES]
    assert not new, "modules that import each other (break the cycle; a lazy import still counts):\n" + "\n".join(new)


def test_known_cycles_still_exist(graph):
    """So that KNOWN_CYCLES shrinks as the cycles go: an entry whose cycle is gone must be deleted."""
    gone = sorted(sorted(c) for c in KNOWN_CYCLES - set(strongly_connected(graph)))
    assert not gone, f"these cycles are gone (or changed shape); remove them from KNOWN_CYCLES: {gone}"


def test_the_bundle_vendors_runtimes_and_foundation_only():
    from pipeline.bundle import VENDORED, check_closure

    assert {rel.split("/")[0] for rel in VENDORED} == {"foundation", "runtimes"}
    check_closure()


# ---------------------------------------------------------------------------------------------------------------------
# The checks themselves, on a made-up tree
# ---------------------------------------------------------------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_checks_find_a_lazy_forbidden_import_and_a_cycle(tmp_path):
    root = _tree(
        tmp_path,
        {
            "foundation/__init__.py": "",
            "foundation/errors.py": "class E(Exception):\n    pass\n",
            "runtimes/__init__.py": "",
            "runtimes/proc.py": "from foundation.errors import E\n\ndef f():\n    from pipeline.data import load\n",
            "runtimes/a.py": "from runtimes import b\n",
            "runtimes/b.py": "def g():\n    from . import a\n",
            "pipeline/__init__.py": "",
            "pipeline/data.py": "import foundation.errors\n",
            "model/__init__.py": "from foundation import errors\n",
        },
    )
    graph = import_graph(root, ("foundation", "model", "pipeline", "runtimes"))
    assert graph["runtimes.proc"] == {"foundation.errors": 1, "pipeline.data": 4}
    assert graph["model"] == {"foundation.errors": 1}
    problems = layering_violations(graph)
    assert len(problems) == 2
    assert "runtimes.proc: line 4 imports pipeline.data (runtimes never imports benchmarks, pipeline)" in problems
    assert any(p.startswith("model: line 1 imports foundation.errors") for p in problems)
    groups = strongly_connected(graph)
    assert groups == [frozenset({"runtimes.a", "runtimes.b"})]
    assert _describe(groups[0], graph) == "runtimes.a (line 1) -> runtimes.b (line 2) -> runtimes.a"
