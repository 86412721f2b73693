"""Smoke runs of every script in examples/ at its small size, asserting each one's headline."""

import importlib.util
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
    r = _run("svm_hyperparameters", tmp_path)
    assert r["val_loss_last"] < r["val_loss_first"]
    losses = r["val_losses"]
    assert sum(b <= a + 1e-6 for a, b in zip(losses, losses[1:])) >= 0.8 * (len(losses) - 1)
    # both fixed points and central differences agree on the hypergradient
    assert r["hypergradient_projected"] == pytest.approx(r["hypergradient_fd"], rel=1e-3)
    assert r["hypergradient_mirror"] == pytest.approx(r["hypergradient_fd"], rel=5e-2)


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
