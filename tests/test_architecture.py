"""The package's import structure: no import cycles, and the layers of
pyproject.toml's [tool.importlinter] contracts (sources -> model ->
compiler -> datapath as data flows; api, daemon, lab and cli above).
Pure analysis of the source: needs neither root nor the kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


LINT = """
import sys
from importlinter.cli import EXIT_STATUS_SUCCESS, lint_imports
sys.exit(lint_imports(config_filename="pyproject.toml", no_cache=True, no_logo=True) != EXIT_STATUS_SUCCESS)
"""


def test_layer_contracts_are_kept() -> None:
    # In a child process: import-linter configures logging (dictConfig), which
    # would disable every logger already made in this one; and in this
    # checkout (the cwd comes first on the path), so its package is analysed.
    proc = subprocess.run([sys.executable, "-c", LINT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's components of more than one module (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
    return found


def test_no_import_cycles() -> None:
    # Imports inside functions count too: a cycle hidden in a function is
    # still a cycle (reasons.py <-> source.py was one).
    graph = grimp.build_graph("enforcer", cache_dir=None)
    cycles = strongly_connected(graph)
    assert not cycles, [
        graph.find_shortest_chain(importer=min(c), imported=max(c)) for c in cycles
    ]


def test_the_cycle_check_finds_cycles() -> None:
    graph = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        graph.add_import(importer=a, imported=b)
    assert strongly_connected(graph) == [{"p.a", "p.b", "p.c"}]
