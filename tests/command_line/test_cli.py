"""The ``sensitivity`` command line, driven through click's CliRunner in isolated folders.

Commands that only read or write files (generate, validate, inspect, plot, collect) run on
files written here; ``run`` and ``check`` run real relaxations of tiny packings (N = 16), few
times: one process compiles once.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from sensitivity.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _compilation_cache(tmp_path_factory, monkeypatch):
    """One compilation cache for the whole session, never the user's own."""
    cache = tmp_path_factory.getbasetemp() / "jax-cache"
    monkeypatch.setenv("SENSITIVITY_CACHE_DIR", str(cache))
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)


def invoke(args, **kwargs):
    result = CliRunner().invoke(main, [str(a) for a in args], **kwargs)
    return result


def fake_result(path: Path, *, n: int = 8, converged: bool = True, seed: int = 0) -> Path:
    """A result file as `run` writes it, without running anything."""
    from sensitivity.systems import random_packing, write_result

    system = random_packing(n, phi=0.9, seed=seed)
    rng = np.random.default_rng(seed)
    dx = rng.normal(size=(n, 2))
    rattlers = np.zeros(n, bool)
    rattlers[1] = True
    dx[1] = np.nan
    write_result(
        path,
        system=system,
        relaxation={"minimizer": "fire", "steps": 321, "energy": 1.5e-3, "max_force": 3e-13,
                    "stop_reason": "ftol" if converged else "max_steps", "converged": converged,
                    "ftol": 1e-12, "max_steps": 1000},
        responses={"small_diameter": {"dx_dtheta": dx, "report": {
            "theta": 1.0, "kind": "diameter", "solver": "cg", "iterations": 17,
            "residual": 2.5e-11, "converged": True}}},
        rattlers=rattlers,
        zero_modes={"n_zero_modes": 4, "condition_number": 2.4e3},
        parameters={"config": {"system": {"path": "in.h5"}, "potential": {"kind": "soft_sphere"}},
                    "provenance": {"jax": "0.10.2", "device": "cpu"}},
        timings={"time_relax_s": 0.12, "time_sensitivity_s": 0.03},
    )
    return path


# --- help, version, and the import budget -------------------------------------------------------


def test_help_shows_commands_and_an_example_config():
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("run", "validate", "generate", "inspect", "plot", "check", "collect", "submit"):
        assert f"  {command} " in result.output
    assert "sensitivity run config.yaml" in result.output
    assert "kind: soft_sphere" in result.output and "sweep:" in result.output
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" in result.output
    assert "JAX_COMPILATION_CACHE_DIR" in result.output
    assert "sensitivity[cuda]" in result.output


@pytest.mark.parametrize("command", ["run", "validate", "generate", "inspect", "plot", "check",
                                     "collect", "submit"])
def test_every_command_has_help(command):
    result = invoke([command, "--help"])
    assert result.exit_code == 0
    assert "Usage: " in result.output


def test_help_imports_no_heavy_module():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from sensitivity.cli.main import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('jax', 'jax_md', 'matplotlib', 'h5py', 'numpy', 'scipy')"
        " if m in sys.modules]\n"
        "light = {'settings', 'schema', 'config', 'manifest', '_errors'}  # stdlib, PyYAML\n"
        "heavy += [m for m in sys.modules if m.startswith('sensitivity.systems.')\n"
        "          and m.split('.')[-1] not in light]\n"
        "print(','.join(heavy))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"--help imported {out.stdout.strip()}"


def test_version():
    result = invoke(["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("sensitivity ")
    assert "jax " in result.output and "jax-md " in result.output


def test_the_command_skips_the_last_garbage_collections_once(monkeypatch):
    """``gc.freeze`` at exit (cli._common.quick_exit), registered once however many commands
    a process runs; a subprocess still exits with its command's code and output."""
    import gc

    from sensitivity.cli import _common

    registered = []
    monkeypatch.setattr(_common, "_QUICK_EXIT", [])
    monkeypatch.setattr(_common.atexit, "register", registered.append)
    for _ in range(2):
        assert invoke(["--version"]).exit_code == 0
    assert registered == [gc.freeze]
    out = subprocess.run([sys.executable, "-m", "sensitivity.cli", "inspect", "missing.h5"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "missing.h5" in out.stderr


_BLAS_SCRIPT = """
import sys
if sys.argv[1] == "command":
    from sensitivity.cli.main import main
    main(["--version"], standalone_mode=False)
import numpy
from threadpoolctl import threadpool_info
print(sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: one BLAS thread anyway")
def test_the_command_gives_numpys_blas_one_thread_unless_the_user_chose():
    """(cli._common.single_threaded_host_blas) The command's small host linear algebra must
    not wait on BLAS threads that share the cores with XLA's."""
    pytest.importorskip("threadpoolctl")
    clean = {k: v for k, v in os.environ.items()
             if not k.endswith(("NUM_THREADS", "MAXIMUM_THREADS"))}

    def threads(how, **env):
        out = subprocess.run([sys.executable, "-c", _BLAS_SCRIPT, how], env={**clean, **env},
                             capture_output=True, text=True, timeout=120, check=True)
        return out.stdout.strip().splitlines()[-1]

    assert threads("plain") != "[1]"  # NumPy alone: OpenBLAS's default, a thread per core
    assert threads("command") == "[1]"
    assert threads("command", OPENBLAS_NUM_THREADS="2") == "[2]"  # the user's choice stays
    assert threads("command", OMP_NUM_THREADS="2") == "[2]"


def test_python_dash_m_cli_is_the_same_command():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "sensitivity.cli", "--help"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0 and "Usage: sensitivity" in out.stdout


def test_unknown_command_and_option_are_usage_errors():
    assert invoke(["frobnicate"]).exit_code == 2
    assert invoke(["run", "--no-such-option"]).exit_code == 2


# --- generate -----------------------------------------------------------------------------------


def test_generate_writes_a_packing(tmp_path: Path):
    from sensitivity.systems import read_packing

    out = tmp_path / "p.h5"
    result = invoke(["generate", "--n", 20, "--dim", 2, "--phi", 0.85, "--seed", 4, "-o", out])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "20 disks" in result.output
    system, _ = read_packing(out)
    assert system.n == 20 and system.dim == 2 and system.periodic
    assert system.packing_fraction == pytest.approx(0.85)
    # Refuses to overwrite without --force.
    again = invoke(["generate", "--n", 20, "-o", out])
    assert again.exit_code == 2 and "--force" in again.output
    assert invoke(["generate", "--n", 12, "--dim", 3, "-o", out, "--force", "-q"]).output == ""
    assert read_packing(out)[0].dim == 3


@pytest.mark.parametrize("args", [["--n", 1], ["--n", 10, "--phi", 0], ["--n", 10, "--dim", 4], []])
def test_generate_rejects_bad_options(tmp_path: Path, args):
    result = invoke(["generate", *args, "-o", tmp_path / "p.h5"])
    assert result.exit_code == 2
    assert not (tmp_path / "p.h5").exists()


# --- validate -----------------------------------------------------------------------------------


def write_config(folder: Path, text: str, name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_validate_prints_the_resolved_config(tmp_path: Path):
    import yaml

    (tmp_path / "p.h5").write_bytes(b"")
    config = write_config(tmp_path, "system: {path: p.h5}\nminimizer: {ftol: 1e-11}\n")
    result = invoke(["validate", config])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout)
    assert resolved["minimizer"]["ftol"] == 1e-11
    assert resolved["system"]["path"] == str(tmp_path / "p.h5")
    assert "config OK: 1 task(s)" in result.stderr
    quiet = invoke(["validate", config, "-q"])
    assert quiet.exit_code == 0 and quiet.output == ""


def test_validate_lists_the_tasks_of_a_sweep(tmp_path: Path):
    (tmp_path / "p.h5").write_bytes(b"")
    config = write_config(tmp_path, "system: {path: p.h5}\nsweep: {seed: [1, 2, 3]}\n")
    result = invoke(["validate", config, "--set", "sweep.potential.alpha=[2, 2.5]"])
    assert result.exit_code == 0, result.output
    assert "# 6 tasks" in result.stdout
    assert "task-0005: seed: 3, potential.alpha: 2.5" in result.stdout
    one = invoke(["validate", config, "--task-index", 2])
    assert one.exit_code == 0 and "seed: 3" in one.stdout
    bad = invoke(["validate", config, "--task-index", 3])
    assert bad.exit_code == 2
    assert "error: --task-index 3: this config has 3 task(s); use 0..2" in bad.output


def test_config_mistakes_are_one_line_each_and_exit_2(tmp_path: Path):
    (tmp_path / "p.h5").write_bytes(b"")
    config = write_config(tmp_path, "system: {path: p.h5}\nminimizer: {ftol: -1, kindd: fire}\n")
    for command in ("validate", "run", "check", "submit"):
        result = invoke([command, config])
        assert result.exit_code == 2, (command, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 2, result.output
        assert all(line.startswith(f"error: {config}: ") for line in lines)
        assert "did you mean 'minimizer.kind'?" in lines[0]
        assert "minimizer.ftol = -1: must be a number >= 0" in lines[1]
        assert "Traceback" not in result.output


def test_debug_shows_the_traceback(tmp_path: Path):
    config = write_config(tmp_path, "system: {path: missing.h5}\n")
    result = invoke(["--debug", "validate", config])
    assert result.exit_code != 0
    assert result.exception is not None  # raised, not turned into a one-line message
    assert "no such file" in str(result.exception)


def test_missing_config_file(tmp_path: Path):
    result = invoke(["validate", tmp_path / "none.yaml"])
    assert result.exit_code == 2
    assert "no such config file" in result.output


def test_bad_set_is_a_usage_error(tmp_path: Path):
    (tmp_path / "p.h5").write_bytes(b"")
    config = write_config(tmp_path, "system: {path: p.h5}\n")
    result = invoke(["validate", config, "--set", "minimizer.ftol"])
    assert result.exit_code == 2
    assert "expected key.path=value" in result.output


def test_bad_slurm_array_task_id(tmp_path: Path, monkeypatch):
    (tmp_path / "p.h5").write_bytes(b"")
    config = write_config(tmp_path, "system: {path: p.h5}\n")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "x")
    result = invoke(["run", config])
    assert result.exit_code == 2
    assert "SLURM_ARRAY_TASK_ID = 'x'" in result.output
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    result = invoke(["run", config])
    assert result.exit_code == 2
    assert "--task-index 5: this config has 1 task(s)" in result.output


# --- inspect, plot, collect on written result files --------------------------------------------


def test_inspect_summarizes_a_result(tmp_path: Path):
    path = fake_result(tmp_path / "r.h5")
    result = invoke(["inspect", path])
    assert result.exit_code == 0, result.output
    text = result.output
    for expected in ("8 particles in 2D", "Stopping criterion", "ftol", "Steps", "321",
                     "small_diameter", "largest: #", "Rattlers (1): 1", "condition_number",
                     "Converged"):
        assert expected in text, (expected, text)
    data = json.loads(invoke(["inspect", path, "--json", "--top", 2]).output)
    assert data["converged"] is True
    assert data["rattlers"]["count"] == 1
    theta = data["thetas"][0]
    assert theta["name"] == "small_diameter" and theta["iterations"] == 17
    assert len(theta["largest"]) == 2
    assert theta["largest"][0]["magnitude"] >= theta["largest"][1]["magnitude"]


def test_inspect_errors(tmp_path: Path):
    missing = invoke(["inspect", tmp_path / "none.h5"])
    assert missing.exit_code == 2 and "file not found" in missing.output
    (tmp_path / "text.h5").write_text("not hdf5")
    assert invoke(["inspect", tmp_path / "text.h5"]).exit_code == 2
    from sensitivity.systems import random_packing, write_packing

    write_packing(tmp_path / "packing.h5", random_packing(4))
    packing = invoke(["inspect", tmp_path / "packing.h5"])
    assert packing.exit_code == 2 and "input packing" in packing.output
    assert len(packing.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_plot_redraws_the_figures(tmp_path: Path):
    path = fake_result(tmp_path / "run" / "sensitivity.h5")
    result = invoke(["plot", path, "-o", tmp_path / "figs"])
    assert result.exit_code == 0, result.output
    written = [Path(line) for line in result.output.split()]
    assert written and all(p.is_file() and p.stat().st_size > 0 for p in written)
    assert all(p.parent == tmp_path / "figs" for p in written)
    default = invoke(["plot", path, "-q"])
    assert default.exit_code == 0 and default.output == ""
    assert any((tmp_path / "run" / "plots").iterdir())


def test_collect_gathers_results_without_a_manifest(tmp_path: Path):
    fake_result(tmp_path / "runs" / "a" / "sensitivity.h5", seed=1)
    fake_result(tmp_path / "runs" / "b" / "sensitivity.h5", seed=2, converged=False)
    result = invoke(["collect", tmp_path / "runs", "-o", tmp_path / "summary.csv"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "summary.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["directory"] for r in rows] == ["a", "b"]
    assert [r["status"] for r in rows] == ["ok", "not_converged"]
    assert rows[0]["small_diameter.iterations"] == "17"
    with h5py.File(tmp_path / "summary.h5") as f:
        assert f.attrs["format"] == "sensitivity-summary"
        assert list(f["table/task"][()]) == [0, 1]
        assert f["tasks/a/sensitivity/small_diameter/dx_dtheta"].shape == (8, 2)
        assert f["tasks/b/particles/all/position/value"].shape == (1, 8, 2)


def test_collect_errors(tmp_path: Path):
    assert invoke(["collect", tmp_path / "none", "-o", tmp_path / "s"]).exit_code == 2
    (tmp_path / "empty").mkdir()
    result = invoke(["collect", tmp_path / "empty", "-o", tmp_path / "s"])
    assert result.exit_code == 2 and "no sensitivity.h5 found" in result.output


# --- run, resume, check: real relaxations of tiny packings ---------------------------------------


@pytest.fixture(scope="module")
def packings(tmp_path_factory) -> Path:
    """Two 16-disk packings in a folder shared by the tests below."""
    from sensitivity.systems import random_packing, write_packing

    folder = tmp_path_factory.mktemp("packings")
    for seed in (0, 1):
        write_packing(folder / f"p{seed}.h5", random_packing(16, phi=0.9, seed=seed))
    return folder


def sweep_config(folder: Path, packings: Path, extra: str = "") -> Path:
    return write_config(
        folder,
        f"system: {{path: {packings / 'p0.h5'}}}\n"
        "parameters: [{name: small_diameter, kind: diameter, species: 0}]\n"
        "minimizer: {ftol: 1.0e-10}\n"
        "output: {directory: out, plots: false}\n"
        f"sweep:\n  system.path: [{packings / 'p0.h5'}, {packings / 'p1.h5'}]\n"
        "  potential.alpha: [2.0, 2.5]\n" + extra,
    )


@pytest.mark.slow
def test_run_writes_result_config_and_plots_then_skips(tmp_path: Path, packings: Path):
    config = write_config(
        tmp_path,
        f"system: {{path: {packings / 'p0.h5'}}}\n"
        "parameters:\n  - {name: small_diameter, kind: diameter, species: 0}\n"
        "  - {name: stiffness, kind: epsilon, species: 0}\n"
        "minimizer: {ftol: 1.0e-10}\n",
    )
    result = invoke(["run", config])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert (out / "sensitivity.h5").is_file()
    assert (out / "config.yaml").is_file()
    assert not list(out.glob(".*.tmp"))
    for expected in ("Minimization stats (FIRE):", "Stopping criterion", "ftol", "Energy final",
                     "Max |force| final", "Sensitivity stats", "small_diameter", "stiffness",
                     f"Result: {out / 'sensitivity.h5'}"):
        assert expected in result.stdout, (expected, result.stdout)
    assert "relax step" in result.stderr  # log lines when not a terminal
    assert any(p.suffix == ".png" for p in out.rglob("*.png"))

    from sensitivity.systems import read_result

    saved = read_result(out / "sensitivity.h5")
    assert saved.converged
    assert set(saved.names) == {"small_diameter", "stiffness"}
    assert saved.parameters["config"]["minimizer"]["ftol"] == 1e-10

    again = invoke(["run", config])
    assert again.exit_code == 0
    assert "skipped, complete result exists" in again.output
    assert "nothing to do" in again.output

    summary = invoke(["inspect", out / "sensitivity.h5"])
    assert summary.exit_code == 0 and "small_diameter" in summary.output

    # A changed config recomputes the task instead of skipping it (quietly with -q).
    quiet = invoke(["-q", "run", config, "--set", "minimizer.ftol=1e-11"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.output == ""
    assert read_result(out / "sensitivity.h5").relaxation.max_force <= 1e-11
    same = invoke(["run", config, "--set", "minimizer.ftol=1e-11", "--set", "slurm.time=5"])
    assert same.exit_code == 0 and "skipped, complete result exists" in same.output


@pytest.mark.slow
def test_sweep_interrupted_then_resumed_then_collected(tmp_path: Path, packings: Path, monkeypatch):
    import sensitivity.systems.pipeline  # noqa: F401  (patched below as systems.pipeline)
    from sensitivity import systems

    from sensitivity.systems.batch import Terminated

    config = sweep_config(tmp_path, packings)
    real = systems.pipeline.run_task
    calls = []

    def interrupted_on_the_third(cfg, directory, **kwargs):
        calls.append(Path(directory).name)
        if len(calls) == 3:
            raise Terminated(signal.SIGTERM)  # what the SIGTERM handler raises
        return real(cfg, directory, **kwargs)

    monkeypatch.setattr(systems.pipeline, "run_task", interrupted_on_the_third)
    result = invoke(["run", config])
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert "stopped by SIGTERM" in result.output
    out = tmp_path / "out"
    done = sorted(p.parent.name for p in out.glob("task-*/sensitivity.h5"))
    assert done == ["task-0000", "task-0001"]
    assert not list(out.rglob("*.tmp"))
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["count"] == 4 and manifest["keys"] == ["system.path", "potential.alpha"]

    # A result file that is not complete (e.g. copied half-way) is recomputed, not trusted.
    (out / "task-0003").mkdir()
    (out / "task-0003" / "sensitivity.h5").write_bytes(b"truncated")

    monkeypatch.setattr(systems.pipeline, "run_task", real)
    calls.clear()
    resumed = invoke(["run", config])
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.count("skipped, complete result exists") == 2
    assert "2 of 2 task(s) done" in resumed.output
    assert sorted(p.parent.name for p in out.glob("task-*/sensitivity.h5")) == [
        "task-0000", "task-0001", "task-0002", "task-0003"]

    collected = invoke(["collect", out, "-o", tmp_path / "summary"])
    assert collected.exit_code == 0, collected.output
    with open(tmp_path / "summary.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["task"]) for r in rows] == [0, 1, 2, 3]
    assert [r["potential.alpha"] for r in rows] == ["2.0", "2.5", "2.0", "2.5"]
    assert [Path(r["system.path"]).name for r in rows] == ["p0.h5", "p0.h5", "p1.h5", "p1.h5"]
    assert {r["status"] for r in rows} == {"ok"}
    assert all(float(r["small_diameter.max_response"]) > 0 for r in rows)
    with h5py.File(tmp_path / "summary.h5") as f:
        assert list(f["tasks"]) == ["task-0000", "task-0001", "task-0002", "task-0003"]
        assert f["tasks/task-0002/sensitivity/small_diameter/dx_dtheta"].shape == (16, 2)
        assert list(f["table/potential.alpha"][()]) == [2.0, 2.5, 2.0, 2.5]


@pytest.mark.slow
def test_collect_lists_missing_tasks(tmp_path: Path, packings: Path):
    config = sweep_config(tmp_path, packings)
    result = invoke(["run", config, "--task-index", 1])
    assert result.exit_code == 0, result.output
    assert sorted(p.parent.name for p in (tmp_path / "out").glob("task-*/sensitivity.h5")) == ["task-0001"]
    collected = invoke(["collect", tmp_path / "out", "-o", tmp_path / "s.h5"])
    assert collected.exit_code == 0, collected.output
    assert "3 without a result" in collected.output
    with open(tmp_path / "s.csv") as stream:
        assert [r["status"] for r in csv.DictReader(stream)] == ["missing", "ok", "missing", "missing"]


@pytest.mark.slow
def test_slurm_array_task_id_selects_the_task(tmp_path: Path, packings: Path, monkeypatch):
    config = sweep_config(tmp_path, packings)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    result = invoke(["-q", "run", config, "--output", tmp_path / "elsewhere"])
    assert result.exit_code == 0, result.output
    assert sorted(p.parent.name for p in (tmp_path / "elsewhere").glob("task-*/sensitivity.h5")) == [
        "task-0002"]
    assert not (tmp_path / "out").exists()
    again = invoke(["run", config, "--output", tmp_path / "elsewhere", "--overwrite"])
    assert again.exit_code == 0, again.output
    assert "skipped" not in again.output and "Minimization stats" in again.output


def test_not_converged_is_exit_1_with_the_stats(tmp_path: Path, packings: Path):
    config = write_config(
        tmp_path,
        f"system: {{path: {packings / 'p1.h5'}}}\n"
        "minimizer: {ftol: 1.0e-10, max_steps: 3, report_every: 1}\n"
        "output: {plots: false}\n",
    )
    result = invoke(["run", config])
    assert result.exit_code == 1, result.output
    assert "max_steps" in result.stdout
    assert "Converged                = no" in result.stdout
    error_lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(error_lines) == 1 and "max_steps" in error_lines[0], result.stderr
    assert "Traceback" not in result.output


def test_input_errors_from_the_systems_layer_are_one_line(tmp_path: Path, packings: Path):
    (tmp_path / "text.h5").write_text("not an HDF5 file")
    config = write_config(tmp_path, "system: {path: text.h5}\noutput: {plots: false}\n")
    result = invoke(["run", config])
    assert result.exit_code == 2, result.output
    errors = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "text.h5" in errors[0] and "HDF5" in errors[0]
    assert "Traceback" not in result.output
    config = write_config(
        tmp_path,
        f"system: {{path: {packings / 'p0.h5'}}}\n"
        "parameters: [{name: d, kind: diameter, species: 7}]\noutput: {plots: false}\n",
        "species.yaml",
    )
    result = invoke(["run", config])
    assert result.exit_code == 2, result.output
    assert "species" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_check_audits_against_finite_differences(tmp_path: Path, packings: Path):
    config = write_config(
        tmp_path,
        f"system: {{path: {packings / 'p0.h5'}}}\n"
        "parameters: [{name: small_diameter, kind: diameter, species: 0}]\n"
        "minimizer: {ftol: 1.0e-13}\noutput: {plots: false}\n",
    )
    result = invoke(["check", config])
    assert result.exit_code == 0, result.output
    assert "Finite-difference audit" in result.stdout
    assert "small_diameter" in result.stdout and "PASS" in result.stdout
    strict = invoke(["check", config, "--tolerance", 1e-30])
    assert strict.exit_code == 1, strict.output
    assert "FAIL" in strict.stdout
    assert "finite-difference audit failed for task(s) 0" in strict.stderr


@pytest.mark.slow
def test_sigterm_stops_a_run_cleanly(tmp_path: Path, packings: Path):
    """A real SIGTERM (what Slurm sends at the time limit) to a run that would never end."""
    config = write_config(
        tmp_path,
        f"system: {{path: {packings / 'p0.h5'}}}\n"
        "minimizer: {ftol: 1.0e-300, max_steps: 1000000000, report_every: 50}\n"
        "output: {plots: false}\n",
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "sensitivity.cli", "run", str(config)], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen = []
    try:
        for line in process.stdout:  # log lines: not a terminal
            seen.append(line)
            if "relax step" in line:
                process.send_signal(signal.SIGTERM)
                break
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(seen) + rest
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output
    assert not (tmp_path / "out" / "sensitivity.h5").exists()
    assert not list((tmp_path / "out").glob(".*.tmp"))


# --- progress rendering ---------------------------------------------------------------------------


def test_reporter_modes():
    import io
    import re

    from sensitivity.cli._report import Reporter

    stream = io.StringIO()
    log = Reporter("log", stream=stream)
    with log.task("task 3", ftol=1e-12):
        log.progress("relax", step=1000, max_force=3e-7, energy=0.5)
        log.progress("solve", name="small_diameter", iterations=111, residual=2e-11, converged=True)
        log.progress("done", converged=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[task 3\] ", line) for line in lines)
    assert "relax step 1000: max|F| 3.000e-07 (ftol 1e-12)" in lines[0]
    assert "solve small_diameter: 111 iterations, residual 2.000e-11" in lines[1]

    quiet_stream = io.StringIO()
    quiet = Reporter("quiet", stream=quiet_stream)
    with quiet.task("t", ftol=1e-12):
        quiet.progress("relax", step=1, max_force=1.0)
        quiet.info("hello")
    assert quiet_stream.getvalue() == ""
    quiet.warning("shown anyway")
    assert "warning: shown anyway" in quiet_stream.getvalue()

    rich_stream = io.StringIO()
    fancy = Reporter("rich", stream=rich_stream)
    with fancy.task("t", ftol=1e-12):
        for step, force in ((100, 1e-2), (200, 1e-7), (300, 1e-12)):
            fancy.progress("relax", step=step, max_force=force, energy=1.0)
        fancy.progress("solve", name="theta", iterations=5, residual=1e-12)
    assert "solve theta: 5 iterations" in rich_stream.getvalue()
    assert Reporter(None, stream=io.StringIO()).mode == "log"  # not a terminal


def test_stats_block_names_the_stopping_criterion():
    from sensitivity.cli._report import stats_block

    text = stats_block(
        {"minimizer": "fire", "steps": 10, "max_steps": 10, "energy": 1.0, "max_force": 1e-3,
         "stop_reason": "max_steps", "converged": False, "ftol": 1e-12},
        {"a": {"solver": "cg", "iterations": 3, "residual": 1e-11, "converged": True}},
        {"time_relax_s": 0.5, "time_total_s": 1.0},
        rattlers=2, n=16, result_path="r.h5",
    )
    assert "Minimization stats (FIRE):" in text
    assert "max_steps reached (NOT converged)" in text
    assert "Steps                    = 10 of max 10" in text
    assert "Rattlers                 = 2 of 16 particles" in text
    assert "Timings: relax 0.5 s, total 1 s" in text
    assert text.endswith("Result: r.h5")
