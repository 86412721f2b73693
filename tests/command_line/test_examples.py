"""Smoke runs of every script in examples/ at its small size, asserting each one's headline."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(name, tmp_path, *extra):
    result = _load(name).main(["--output", str(tmp_path), *extra])
    assert Path(result["figure"]).is_file() and Path(result["figure"]).stat().st_size > 1000
    return result


def _run_with_xla_defaults(name, tmp_path, *extra):
    """:func:`_run` in a fresh Python whose XLA keeps its default optimisation, as a user's run.

    The suite compiles without XLA's expensive passes (tests/conftest.py), which pays for
    programs that run a few times; an example whose inner solver runs thousands of steps per
    call runs them about twice as fast optimised, more than the start-up of a new process.
    """
    env = dict(os.environ, SENSITIVITY_TEST_XLA_DEFAULTS="1")
    env["XLA_FLAGS"] = " ".join(
        flag for flag in env.get("XLA_FLAGS", "").split()
        if not flag.startswith(("--xla_backend_optimization_level",
                                "--xla_llvm_disable_expensive_passes",
                                "--xla_cpu_use_fusion_emitters",
                                "--xla_cpu_parallel_codegen_split_count"))
    )
    out = tmp_path / "result.json"
    code = ("import json, runpy, sys; main = runpy.run_path(sys.argv[1])['main']; "
            "json.dump(main(sys.argv[3:]), open(sys.argv[2], 'w'))")
    done = subprocess.run(
        [sys.executable, "-c", code, str(EXAMPLES / f"{name}.py"), str(out),
         "--output", str(tmp_path), *extra],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert Path(result["figure"]).is_file() and Path(result["figure"]).stat().st_size > 1000
    return result


@pytest.mark.slow
def test_ridge_regression(tmp_path):
    r = _run("ridge_regression", tmp_path)
    assert r["max_relative_jacobian_error"] < 1e-8
    assert r["max_relative_hypergradient_fd_error"] < 1e-5


@pytest.mark.slow
def test_jacobian_precision(tmp_path):
    r = _run("jacobian_precision", tmp_path)
    for method in ("gradient_descent", "proximal_gradient"):
        assert abs(r[f"slope_{method}"] - 1.0) < 0.1, r[f"slope_{method}"]
    # the engine's estimate tracks the measured error of the implicit Jacobian
    for rows in r["rows"].values():
        close = [row for row in rows if 1e-10 < row["distance"] < 1e-3]
        assert close
        for row in close:
            assert 0.5 < row["estimate"] / row["implicit"] < 2.0
            assert row["bound"] >= row["implicit"]


@pytest.mark.slow
def test_dataset_distillation(tmp_path):
    r = _run("dataset_distillation", tmp_path)
    assert r["test_accuracy"] > 0.6  # chance is 0.1
    assert r["outer_loss_last"] < r["outer_loss_first"]
    assert r["time_implicit"] > 0 and r["time_unrolled"] > 0


@pytest.mark.slow
def test_svm_hyperparameters(tmp_path):
    r = _run_with_xla_defaults("svm_hyperparameters", tmp_path)
    assert r["val_loss_last"] < r["val_loss_first"]
    losses = r["val_losses"]
    assert sum(b <= a + 1e-6 for a, b in zip(losses, losses[1:])) >= 0.8 * (len(losses) - 1)
    # every inner solve reached its tolerance (the example's table says so too) ...
    assert r["inner_converged"] == {"projected": True, "mirror": True, "outer_path": True}
    # ... and both fixed points agree with central differences on the hypergradient
    # (measured: 1e-7 and 4e-4; mirror descent's step test is looser)
    assert r["hypergradient_projected"] == pytest.approx(r["hypergradient_fd"], rel=1e-5)
    assert r["hypergradient_mirror"] == pytest.approx(r["hypergradient_fd"], rel=2e-3)


@pytest.mark.slow
def test_dictionary_learning(tmp_path):
    r = _run("dictionary_learning", tmp_path)
    assert 0.9 < r["test_auc"] <= 1.0
    for value in r["baselines"].values():
        assert 0.5 < value <= 1.0
    assert r["loss_last"] < r["loss_first"]


@pytest.mark.slow
def test_packing_sensitivity(tmp_path):
    pytest.importorskip("jax_md")
    r = _run("packing_sensitivity", tmp_path, "--n", "32", "--no-audit")
    assert r["converged"]
    assert Path(r["result"]).is_file()
    assert 0 < r["mean_response"] < 1e3
