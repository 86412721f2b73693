"""The installed layout: three repository folders under one package name, arrows one way.

`pip install` maps `systems/` to `sensitivity.systems` and `cli/` to `sensitivity.cli`, so
site-packages gets no generic top-level `systems` or `cli`; the engine imports neither, the
physics never imports the command line, and `import sensitivity` imports no jax."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("sensitivity", "systems", "cli", "tests", "examples", "benchmarks")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module name an import statement in `path` names (absolute imports only)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def test_no_code_imports_the_uninstalled_top_level_names():
    """`import systems` works only from the repository root and would load a second copy of
    every module beside `sensitivity.systems`: nothing may use it."""
    wrong = [f"{p.relative_to(ROOT)}:{line}: {name}" for p in _python_files(*FOLDERS)
             for line, name in _imports(p) if name.split(".")[0] in ("systems", "cli")]
    assert not wrong, "import sensitivity.systems / sensitivity.cli instead:\n" + "\n".join(wrong)


@pytest.mark.parametrize("folder, forbidden", [
    ("sensitivity", ("sensitivity.systems", "sensitivity.cli", "jax_md", "h5py")),
    ("systems", ("sensitivity.cli", "click")),
])
def test_imports_point_one_way(folder, forbidden):
    wrong = [f"{p.relative_to(ROOT)}:{line}: {name}" for p in _python_files(folder)
             for line, name in _imports(p)
             if any(name == f or name.startswith(f + ".") for f in forbidden)]
    assert not wrong, "\n".join(wrong)


def test_installed_names_from_outside_the_repository(tmp_path):
    """Run where the repository is not on sys.path: the installed package must provide the
    physics and the command line under `sensitivity.`, and nothing under `systems`/`cli`."""
    code = (
        "import importlib.util, json, sys\n"
        "import sensitivity, sensitivity.cli.main\n"
        "jax_after_cli = 'jax' in sys.modules\n"
        "from sensitivity import systems\n"
        "print(json.dumps({'jax_after_cli': jax_after_cli,\n"
        "  'top_level': [n for n in ('systems', 'cli') if importlib.util.find_spec(n)],\n"
        "  'systems': systems.__name__, 'reader': systems.read_result.__module__,\n"
        "  'engine': sensitivity.custom_root.__module__}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "jax_after_cli": False, "top_level": [], "systems": "sensitivity.systems",
        "reader": "sensitivity.systems._result_read", "engine": "sensitivity._implicit_diff"}
