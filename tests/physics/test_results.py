"""Loading results: one line, no jax, typed, with the prediction x* + Δθ·∂x*/∂θ checked
against a re-relaxation at θ + Δθ."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from sensitivity.systems import Response, SolveReport, random_packing, read_result, write_result

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_io import make_result_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def result_path(tmp_path):
    return write_result(tmp_path / "sensitivity.h5", **make_result_inputs(n=9, dim=2))


def test_loading_a_result_imports_no_jax_and_leaves_x64_alone(result_path):
    code = (
        "import sys, json\nfrom sensitivity import systems\n"
        f"r = systems.read_result({str(result_path)!r})\n"
        "response = r.response('small_diameter')\n"
        "moved = r.predicted_system('small_diameter', 1e-3)\n"
        "print(json.dumps({'jax': sorted(m for m in sys.modules if m.split('.')[0] in "
        "('jax', 'jaxlib', 'jax_md', 'matplotlib')), 'n': int(r.positions.shape[0]), "
        "'unit': response.unit}))\n"
    )
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report == {"jax": [], "n": 9, "unit": "1"}
    # -X importtime lists every module imported: none of jax's
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    assert "sensitivity.systems._system" in imported and "h5py" in imported
    assert not [m for m in imported if m.split(".")[0] in ("jax", "jaxlib", "jax_md")]


@pytest.mark.slow
def test_import_systems_changes_no_jax_state():
    code = ("import jax, sensitivity.systems.io, sensitivity.systems.plots;"
            "assert not jax.config.jax_enable_x64, 'import systems turned on x64'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_physics_without_x64_is_a_clear_error():
    code = (
        "from sensitivity import systems\n"
        "from sensitivity.systems.potentials import PairModel, resolve_potential\n"
        "s = systems.random_packing(6)\n"
        "try:\n"
        "    PairModel.build(s, resolve_potential({}, s.n_species))\n"
        "except RuntimeError as e:\n"
        "    assert 'jax_enable_x64' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_typed_result(result_path):
    inputs = make_result_inputs(n=9, dim=2)
    result = read_result(result_path)
    system = inputs["system"]
    np.testing.assert_array_equal(result.positions, system.positions)
    np.testing.assert_array_equal(result.box, system.box)
    np.testing.assert_array_equal(result.diameters, system.diameters)
    np.testing.assert_array_equal(result.species, system.species)
    assert result.provenance["input_sha256"] == "ab" * 32
    assert result.config["system"]["path"] == "packing.h5"

    scalar = result.response("small_diameter")
    assert isinstance(scalar, Response) and not scalar.vector
    assert scalar.kind == "diameter" and scalar.theta == 1.0
    assert scalar.unit == "1" and scalar.theta_unit == "sigma"
    assert scalar.converged is True and scalar.report.iterations == 42
    assert scalar.description["gauge"].startswith("backbone mean zero")
    assert "NaN" in scalar.description["rattlers"]
    expected = np.linalg.norm(inputs["responses"]["small_diameter"]["dx_dtheta"], axis=1)
    np.testing.assert_array_equal(result.magnitudes("small_diameter"), expected)  # NaN-aware

    vector = result.response("diameters")
    assert vector.vector and vector.converged is False
    np.testing.assert_array_equal(vector.theta, system.diameters)
    jacobian = inputs["responses"]["diameters"]["dx_dtheta"]
    np.testing.assert_allclose(vector.magnitudes(component=3), np.linalg.norm(jacobian[3], axis=1))
    assert result.response().name == "small_diameter"  # the first θ by default
    assert repr(result) == (f"Result({str(result_path)!r}, n=9, dim=2, "
                            "thetas=['small_diameter', 'diameters'], rattlers=1, converged=False)")
    assert repr(scalar) == ("Response('small_diameter', kind='diameter', theta=1 sigma, "
                            "dx_dtheta 9x2 [1], converged=True)")
    with pytest.raises(ValueError, match="small_diameter"):
        result.response("sigma")


def test_dx_dtheta_attributes_describe_it(result_path):
    with h5py.File(result_path) as f:
        scalar = f["sensitivity/small_diameter/dx_dtheta"].attrs
        assert list(scalar["axes"]) == [b"particle", b"dimension"] or list(scalar["axes"]) == [
            "particle", "dimension"]
        assert scalar["unit"] == b"1" and scalar["theta_unit"] == "sigma"
        assert scalar["theta"] == 1.0 and scalar["theta_name"] == "small_diameter"
        assert scalar["converged"] and scalar["residual"] == 3.5e-11
        vector = f["sensitivity/diameters/dx_dtheta"].attrs
        assert "[P][N][d], P = 9" in vector["axes_text"]
        assert "diameter of particle p" in vector["axes_text"]
        np.testing.assert_array_equal(vector["theta"], make_result_inputs()["system"].diameters)
        assert f["observables/potential_energy/value"].attrs["unit"] == b"epsilon"


def test_predicted_system_arithmetic(result_path):
    result = read_result(result_path)
    inputs = make_result_inputs(n=9, dim=2)
    field = inputs["responses"]["small_diameter"]["dx_dtheta"]
    delta = 0.05
    predicted = result.predicted_system("small_diameter", delta)
    expected = result.positions + delta * np.nan_to_num(field)
    expected = np.mod(expected, result.box)
    np.testing.assert_allclose(predicted.positions, expected, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(predicted.positions[2], result.positions[2])  # the rattler stays
    species0 = result.species == 0
    np.testing.assert_array_equal(predicted.diameters[species0], result.diameters[species0] + delta)
    np.testing.assert_array_equal(predicted.diameters[~species0], result.diameters[~species0])

    jacobian = inputs["responses"]["diameters"]["dx_dtheta"]
    step = np.linspace(-1e-3, 1e-3, 9)
    predicted = result.predicted_system("diameters", step)
    expected = np.mod(result.positions + np.nan_to_num(np.einsum("p,pnd->nd", step, jacobian)),
                      result.box)
    expected[2] = result.positions[2]
    np.testing.assert_allclose(predicted.positions, expected, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(predicted.diameters, result.diameters + step)
    with pytest.raises(ValueError, match=r"shape \(9,\)"):
        result.predicted_system("diameters", 0.1)


@pytest.mark.slow
def test_prediction_matches_a_re_relaxation(tmp_path):
    """x* + Δθ ∂x*/∂θ against FIRE at θ + Δθ: the error is O(Δθ²), far below the move."""
    import jax

    assert jax.config.jax_enable_x64
    from sensitivity.systems import write_packing
    from sensitivity.systems.pipeline import _prepare, run_task
    from sensitivity.systems.theta import theta_apply

    sys.path.insert(0, str(ROOT / "tests" / "physics"))
    from test_pipeline import config_for

    packing = write_packing(tmp_path / "packing.h5", random_packing(24, dim=2, phi=0.9, seed=4))
    config = config_for(packing, **{"sensitivity.audit": False})
    summary = run_task(config, tmp_path / "out")
    assert summary.converged, summary.message
    result = read_result(summary.result_path)
    task = _prepare(config, for_audit=False)
    backbone = ~result.rattlers
    for pspec in task.pspecs:
        theta0, apply = theta_apply(pspec, task.params, task.system.species)
        errors = []
        for delta in (1e-4, 1e-5):
            params = apply(task.params, theta0 + delta)
            relaxed = task.relaxer.run(result.positions, params, ftol=1e-14)
            assert relaxed.converged
            scale = float(np.asarray(params.scale))
            moved_by = np.asarray(relaxed.positions) / scale - result.positions
            moved_by -= result.box * np.round(moved_by / result.box)  # next to x*, not wrapped
            actual = scale * (result.positions + moved_by)
            predicted = result.predicted_system(pspec.name, delta)
            if pspec.kind == "box":
                np.testing.assert_allclose(predicted.box, result.box * scale, rtol=1e-14)
            difference = predicted.positions - actual
            difference -= predicted.box * np.round(difference / predicted.box)  # minimum image
            difference = difference[backbone] - difference[backbone].mean(axis=0)  # the gauge
            moved = actual[backbone] - result.positions[backbone]
            moved -= moved.mean(axis=0)
            assert np.abs(moved).max() > 1e-7  # θ moved the packing
            errors.append(np.abs(difference).max() / np.abs(moved).max())
        # measured 1.2e-3 and 1.2e-4: the error of a linear prediction, O(Δθ²)
        assert errors[1] < 5e-4, (pspec.name, errors)
        assert 5 < errors[0] / errors[1] < 20, (pspec.name, errors)


@pytest.mark.parametrize("epsilon, unit, theta_unit", [
    (2.0, "sigma epsilon-1", "epsilon"),                 # θ = the uniform ε
    ([[1.0, 0.5], [0.5, 1.0]], "sigma", "1"),            # θ multiplies the ε matrix
])
def test_epsilon_units(tmp_path, epsilon, unit, theta_unit):
    inputs = make_result_inputs(n=8, vector=False)
    inputs["responses"]["stiffness"] = {"dx_dtheta": np.zeros((8, 2)),
                                        "report": SolveReport(kind="epsilon", species=-1,
                                                              theta=1.0)}
    inputs["parameters"]["potential"]["epsilon"] = epsilon
    result = read_result(write_result(tmp_path / "r.h5", **inputs))
    response = result.response("stiffness")
    assert (response.unit, response.theta_unit) == (unit, theta_unit)
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["sensitivity/stiffness/dx_dtheta"].attrs["unit"] == unit.encode()
