"""The README's quick start works exactly as written, and CI runs exactly its test command."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def _quick_start_commands() -> list[str]:
    """The quick start's `sensitivity ...` commands, in the order a new user meets them."""
    section = _section("Quick start")
    install_and_run = _bash_blocks(section)[0]
    commands = [c.strip() for c in install_and_run.split("&&") if not c.strip().startswith("pip ")]
    commands += re.findall(r"`(sensitivity [^`]+)`", section)
    return commands


def test_ci_runs_exactly_the_readmes_test_command():
    test_command = _bash_blocks(_section("Quick start"))[-1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path):
    exe = shutil.which("sensitivity") or str(Path(sys.executable).with_name("sensitivity"))
    if not Path(exe).exists():
        pytest.skip("the `sensitivity` console script is not installed (pip install -e .)")
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("out"))
    commands = _quick_start_commands()
    assert any(c.startswith("sensitivity run") for c in commands)
    assert any(c.startswith("sensitivity inspect") for c in commands)
    env = dict(os.environ, PATH=f"{Path(exe).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for command in commands:
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"`{command}` failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "examples" / "out" / "sensitivity.h5").is_file()
    assert (tmp_path / "packing.h5").is_file()
    # "Reading results": its first snippet loads that result, and imports no jax
    snippet = re.findall(r"```python\n(.*?)```", _section("Reading results"), re.S)[0]
    check = "\nimport sys\nassert 'jax' not in sys.modules, 'jax imported'\n"
    done = subprocess.run([sys.executable, "-c", snippet + check], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "moved.h5").is_file()
