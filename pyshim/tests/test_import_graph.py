"""The package's shape, read from its imports: the engine never reaches the planning wing, the
simulator or the report; the parts import only downward; no import cycle anywhere in swiftmoe.

Every ``import`` and ``from ... import`` of every module counts, inside functions too: an import
deferred to a call is still a dependency (the hidden back-references this guards against).

The parts, lowest first; a module may import its own part and the parts below it:

    0  swiftmoe._checks, swiftmoe._proto     shared checks, generated stubs
    1  swiftmoe.nn                           the reference layer and its expert math
    2  swiftmoe.adapters                     the blocks the engine drives
    3  swiftmoe.engine                       the iteration; knows a PlanSource, nothing else
    4  swiftmoe.planning                     plan sources, the sidecar client and process
    5  swiftmoe, swiftmoe.api                the public names, where the wings meet
    6  swiftmoe.sim, .report, .doctor, .cli  the tools
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "swiftmoe"

PARTS = [
    ("swiftmoe._checks", 0),
    ("swiftmoe._proto", 0),
    ("swiftmoe.nn", 1),
    ("swiftmoe.adapters", 2),
    ("swiftmoe.engine", 3),
    ("swiftmoe.planning", 4),
    ("swiftmoe.api", 5),
    ("swiftmoe.sim", 6),
    ("swiftmoe.report", 6),
    ("swiftmoe.doctor", 6),
    ("swiftmoe.cli", 6),
]
ENGINE_WING = ("swiftmoe.engine", "swiftmoe.adapters", "swiftmoe.nn")
NOT_FOR_THE_ENGINE = ("swiftmoe.planning", "swiftmoe.sim", "swiftmoe.report")


def module_files(root: Path, name: str) -> dict[str, Path]:
    """{dotted module name: file} of every module of the package at ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = [name, *rel.parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(imported module of the package, line) of every import in the file, functions included.

    ``from X import Y`` counts as an import of X.Y when that is a module, else of X; relative
    imports are resolved against the module's package.
    """
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    root = module.split(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for name in names:
            if name == root or name.startswith(root + "."):
                # the longest module of the package that the name is, or is inside of
                while name not in modules and "." in name:
                    name = name.rpartition(".")[0]
                if name in modules and name != module:
                    found.append((name, node.lineno))
    return found


def import_graph(root: Path, name: str) -> dict[str, list[tuple[str, int]]]:
    files = module_files(root, name)
    return {m: imports_of(m, p, set(files)) for m, p in files.items()}


def part_of(module: str) -> tuple[str, int] | None:
    if module == "swiftmoe":
        return ("swiftmoe", 5)
    for prefix, rank in PARTS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    return None


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or of one that imports
    itself (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w, _ in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or any(w == v for w, _ in graph.get(v, [])):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def engine_violations(graph) -> list[str]:
    return [
        f"{m} imports {dep} (line {line})"
        for m, deps in sorted(graph.items())
        if m.startswith(ENGINE_WING)
        for dep, line in deps
        if dep.startswith(NOT_FOR_THE_ENGINE)
    ]


def upward_imports(graph) -> list[str]:
    bad = []
    for m, deps in sorted(graph.items()):
        pm = part_of(m)
        for dep, line in deps:
            pd = part_of(dep)
            if pm is None or pd is None:
                bad.append(f"{m} -> {dep} (line {line}): a module outside the listed parts")
            elif pd[1] > pm[1]:
                bad.append(f"{m} ({pm[0]}) imports {dep} ({pd[0]}, line {line}), a higher part")
    return bad


@pytest.fixture(scope="module")
def graph():
    g = import_graph(PACKAGE, "swiftmoe")
    # The reading itself works: known edges are found, so the checks below cannot pass vacuously.
    for a, b in [
        ("swiftmoe.api", "swiftmoe.planning.factory"),
        ("swiftmoe.engine.layer", "swiftmoe.engine.dispatch"),
        ("swiftmoe.engine.replicate", "swiftmoe.engine.blocks"),
        ("swiftmoe.adapters.native", "swiftmoe.nn"),
        ("swiftmoe.adapters.hf_fused", "swiftmoe.adapters._hf_common"),  # a relative import
        ("swiftmoe.report.replay", "swiftmoe.planning.job"),  # inside a function
    ]:
        assert b in [d for d, _ in g[a]], f"{a} should import {b}; the import reader is broken"
    return g


def test_the_engine_never_imports_planning_the_simulator_or_the_report(graph):
    bad = engine_violations(graph)
    assert not bad, "the engine wing reaches beyond its PlanSource:\n" + "\n".join(bad)


def test_no_import_cycle_in_swiftmoe(graph):
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_part_imports_only_itself_and_below(graph):
    bad = upward_imports(graph)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_checks_catch_a_bad_package(tmp_path):
    """A package whose engine imports the planning wing through a cycle: every check fires."""
    pkg = tmp_path / "swiftmoe"
    files = {
        "__init__.py": "",
        "engine/__init__.py": "",
        "engine/handle.py": "from swiftmoe.engine import split\n",
        "engine/split.py": """
            def f():
                from swiftmoe.planning.service import PlanService
                return PlanService
        """,
        "planning/__init__.py": "",
        "planning/service.py": "from ..engine.handle import x\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(textwrap.dedent(text))
    g = import_graph(pkg, "swiftmoe")
    assert engine_violations(g) == [
        "swiftmoe.engine.split imports swiftmoe.planning.service (line 3)"
    ]
    assert cycles(g) == [
        ["swiftmoe.engine.handle", "swiftmoe.engine.split", "swiftmoe.planning.service"]
    ]
    assert len(upward_imports(g)) == 1 and "a higher part" in upward_imports(g)[0]
