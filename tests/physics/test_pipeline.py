"""run_task and audit_task end to end on small H5MD packings."""

import copy

import numpy as np
import pytest

from sensitivity import systems  # noqa: F401
from sensitivity.systems._errors import InputError
from sensitivity.systems.generate import random_packing
from sensitivity.systems.io import read_result, write_packing
from sensitivity.systems.pipeline import audit_task, run_task


def config_for(path, **changes):
    config = {
        "system": {"path": str(path), "group": "all", "frame": -1},
        "potential": {"kind": None, "epsilon": None, "alpha": None, "sigma": None,
                      "r_onset": None, "r_cutoff": None, "morse_alpha": None,
                      "neighbor_list": None, "capacity_multiplier": None},
        "minimizer": {"kind": "fire", "ftol": 1e-12, "etol": 0.0, "max_steps": 200000,
                      "report_every": 1000},
        "parameters": [{"name": "small_diameter", "kind": "diameter", "species": 0},
                       {"name": "box", "kind": "box", "species": None}],
        "sensitivity": {"solver": "cg", "tol": 1e-10, "maxiter": None,
                        "rattler_contacts": None, "audit": True, "fd_step": 1e-5},
        "output": {"directory": "out", "plots": False},
        "seed": 0,
    }
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        config[section][key] = value
    return config


@pytest.fixture(scope="module")
def packing_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "packing.h5"
    write_packing(path, random_packing(24, dim=2, phi=0.9, seed=4))
    return path


@pytest.fixture(scope="module")
def finished(packing_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    events = []
    # compiled functions are shared by the process: start cold to see the compile time
    from sensitivity.systems import relax, response
    relax.clear_compile_cache()
    response.clear_compile_cache()
    summary = run_task(config_for(packing_file), out, config_text="# as written\n",
                       progress=lambda event, **fields: events.append(event))
    return summary, out, events


@pytest.mark.slow
def test_run_task_writes_a_complete_result(finished, packing_file):
    summary, out, events = finished
    assert summary.converged, summary.message
    assert summary.result_path == out / "sensitivity.h5"
    result = read_result(summary.result_path)
    assert result.converged
    assert result.relaxation.stop_reason == "ftol"
    assert set(result.responses) == {"small_diameter", "box"}
    dx = result.responses["small_diameter"]["dx_dtheta"]
    assert dx.shape == (24, 2)
    report = result.responses["small_diameter"]["report"]
    assert report.converged and report.iterations > 0 and report.solver == "cg"
    for key in ("time_relax_s", "time_sensitivity_s", "time_compile_s", "time_total_s"):
        assert result.timings[key] >= 0
    assert result.timings["time_compile_s"] > result.timings["time_sensitivity_s"]
    zero = result.zero_modes
    assert zero["zero_modes_found"] == zero["zero_modes_expected"]
    assert zero["eigenvalue_min_nonzero"] > 0 and "contact_gap_min" in zero
    provenance = result.parameters["provenance"]
    assert provenance["x64"] and len(provenance["input_sha256"]) == 64
    assert result.audit["passed"] and result.audit["small_diameter"]["relative_error"] < 1e-4
    # relaxed positions, with the rattler rows of dx NaN
    assert np.array_equal(np.isnan(dx[:, 0]), result.rattlers)
    assert events[0] == "start" and events[-1] == "done" and "solve" in events


@pytest.mark.slow
def test_audit_task(packing_file):
    config = config_for(packing_file, **{"sensitivity.audit": False})
    config["parameters"] = [{"name": "eps0", "kind": "epsilon", "species": 0}]
    audit = audit_task(config)
    assert audit["passed"], audit
    assert audit["eps0"]["relative_error"] < 1e-4 and audit["eps0"]["contacts_changed"] == 0


def test_non_converged_relaxation_is_flagged_not_differentiated(packing_file, tmp_path):
    config = config_for(packing_file, **{"minimizer.max_steps": 5})
    summary = run_task(config, tmp_path)
    assert not summary.converged
    assert "max_steps" in summary.message and "not differentiated" in summary.message
    result = read_result(summary.result_path)
    assert not result.converged and result.relaxation.stop_reason == "max_steps"
    assert np.isnan(result.responses["small_diameter"]["dx_dtheta"]).all()


@pytest.mark.slow
def test_non_converged_linear_solve_is_flagged(packing_file, tmp_path):
    """CG stopped by maxiter: the result and the message say so, with the residual the
    convergence test compared with tol, and the file keeps what was computed."""
    config = config_for(packing_file, **{"sensitivity.maxiter": 3, "sensitivity.audit": False})
    summary = run_task(config, tmp_path)
    assert not summary.converged
    assert "did not converge" in summary.message and "3 iterations" in summary.message
    result = read_result(summary.result_path)
    assert not result.converged
    report = result.responses["small_diameter"]["report"]
    assert not report.converged and report.iterations == 3
    assert report.solver_relative_residual > 1e-10 and report.relative_residual > 1e-10
    assert f"{report.solver_relative_residual:.1e} > tol" in summary.message


def test_bad_inputs_raise_input_error(packing_file, tmp_path):
    config = config_for(packing_file)
    config["parameters"] = [{"name": "d", "kind": "diameter", "species": 9}]
    with pytest.raises(InputError, match="species 9"):
        run_task(config, tmp_path)
    config = config_for(tmp_path / "missing.h5")
    with pytest.raises(InputError):
        run_task(config, tmp_path)
    config = copy.deepcopy(config_for(packing_file))
    config["potential"]["kind"] = "yukawa"
    with pytest.raises(InputError, match="potential.kind"):
        run_task(config, tmp_path)
