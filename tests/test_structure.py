"""The code's shape, checked: what ruff cannot say (`ruff check .` covers unused and private
imports and imports inside functions; see pyproject.toml).

- every module opens with a docstring that says its job;
- no function is longer than MAX_FUNCTION_LINES, no module longer than MAX_MODULE_LINES
  (past that, split it along its jobs: DEVELOPERS' guide);
- the import graph of the v3_* modules has no cycle, counting imports inside functions too;
- lower modules never import the pipeline (v3_colab_training) or the prediction CLI.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in REPO.glob("v3_*.py"))
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 600
TOP = {"v3_colab_training", "v3_predict"}   # entry points: nothing below imports them
# Known and dated exceptions, each with the issue that removes it. Empty is the goal.
LONG_FUNCTIONS: dict[tuple[str, str], str] = {
    ("v3_indicators", "indicator_table"): "issue 20 rewrites it for speed (split then)",
}


def _tree(mod: str) -> ast.Module:
    return ast.parse((REPO / f"{mod}.py").read_text())


def v3_imports(mod: str) -> set[str]:
    """The v3_* modules `mod` imports anywhere (top level or inside a function)."""
    deps = set()
    for node in ast.walk(_tree(mod)):
        if isinstance(node, ast.ImportFrom) and node.module:
            deps.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            deps |= {a.name.split(".")[0] for a in node.names}
    return {d for d in deps if d in MODULES and d != mod}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle [a, b, ..., a] of `graph`, or None (depth-first search)."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("mod", MODULES)
def test_every_module_says_its_job_in_a_docstring(mod):
    assert ast.get_docstring(_tree(mod)), f"{mod}.py has no module docstring"


@pytest.mark.parametrize("mod", MODULES)
def test_functions_and_modules_stay_short(mod):
    lines = len((REPO / f"{mod}.py").read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{mod}.py has {lines} lines: split it along its jobs"
    for node in ast.walk(_tree(mod)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if (mod, node.name) not in LONG_FUNCTIONS:
                assert n <= MAX_FUNCTION_LINES, f"{mod}.{node.name} is {n} lines"


def test_no_import_cycle_among_the_modules():
    graph = {m: v3_imports(m) for m in MODULES}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_lower_modules_never_import_the_entry_points():
    for mod in MODULES:
        if mod in TOP or mod == "v3_colab_cell":   # the cell generator names the pipeline
            continue
        assert not (v3_imports(mod) & TOP), f"{mod} imports {v3_imports(mod) & TOP}"
