"""The engine's modules import one another in one direction: no cycle, no function-level import.

Read from the source with ``ast`` (nothing is imported): every ``import`` of a module of
``sensitivity/`` (absolute, relative, or a name re-exported by ``sensitivity/__init__.py``,
which resolves to the module that owns it) is an edge. A cycle, or an import of an engine
module inside a function (the usual way a cycle is hidden), fails with the path.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ENGINE = pathlib.Path(__file__).resolve().parents[2] / "sensitivity"

# (module, imported module) pairs allowed inside a function; each needs a reason.
FUNCTION_LEVEL_ALLOWED: dict[tuple[str, str], str] = {}


def _exports() -> dict[str, str]:
    """``sensitivity/__init__.py``'s public name -> owning module (its ``_EXPORTS`` dict)."""
    tree = ast.parse((ENGINE / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(getattr(t, "id", None) == "_EXPORTS" for t in targets):
                return ast.literal_eval(node.value)
    raise AssertionError("sensitivity/__init__.py has no _EXPORTS dict")


def _imports(path: pathlib.Path, modules: set[str], exports: dict[str, str]):
    """``(imported module, function-level?, line)`` for each engine import in ``path``."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    parts = alias.name.split(".")
                    if parts[0] == "sensitivity" and len(parts) > 1 and parts[1] in modules:
                        found.append((parts[1], in_function, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                if child.level == 1 or child.module == "sensitivity":
                    base = child.module if child.level == 1 else None
                else:
                    base = (child.module or "").split(".")
                    base = base[1] if base[0] == "sensitivity" and len(base) > 1 else "-"
                if base is None:  # from . import x / from sensitivity import x
                    for alias in child.names:
                        target = alias.name if alias.name in modules else exports.get(alias.name)
                        if target:
                            found.append((target, in_function, child.lineno))
                elif base in modules:
                    found.append((base, in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return found


def _graph():
    modules = {p.stem for p in ENGINE.glob("*.py") if p.stem != "__init__"}
    exports = _exports()
    return {m: _imports(ENGINE / f"{m}.py", modules, exports) for m in sorted(modules)}


def test_the_graph_is_read():
    """The reader sees the imports it must see (a test that cannot fail proves nothing)."""
    graph = _graph()
    assert ("_krylov", False) in {(t, f) for t, f, _ in graph["_implicit_diff"]}
    assert ("_qp", False) in {(t, f) for t, f, _ in graph["_projection_solved"]}
    assert {t for t, _, _ in graph["linear_solve"]} >= {"_krylov", "_dense"}


def test_no_function_level_import_of_an_engine_module():
    hidden = [f"sensitivity/{m}.py:{line} imports {t} inside a function"
              for m, edges in _graph().items() for t, inside, line in edges
              if inside and (m, t) not in FUNCTION_LEVEL_ALLOWED]
    assert not hidden, "\n".join(hidden)


def test_the_engine_import_graph_is_acyclic():
    graph = {m: sorted({t for t, _, _ in edges if t != m}) for m, edges in _graph().items()}
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == "open":
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m)
