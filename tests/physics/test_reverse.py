"""dO/dθ of a few observables of a vector θ (systems.reverse): reverse mode (one adjoint
solve per observable) against forward mode (the whole Jacobian), against the elasticity
module's forward dU/dθ and dp/dθ, and against central differences of re-relaxed packings;
the mode chosen and the reason; bad observables named by key."""

import numpy as np
import pytest
from _physics import relaxed, task_config

from sensitivity.systems._errors import InputError
from sensitivity.systems.elasticity import observable_derivatives as elastic_derivatives
from sensitivity.systems.elasticity import observables as energy_stress_pressure
from sensitivity.systems.pipeline import central_difference
from sensitivity.systems.reverse import choose_mode, observable_derivatives, resolve_observables
from sensitivity.systems.theta import ParameterSpec, theta_apply

DIAMETERS = ParameterSpec("diameters", "diameters")
ITEMS = ["pressure", "energy", {"position": {"particle": 7, "axis": None}},
         {"position": {"particle": 0, "axis": 1}}]  # particle 0: the rattler


@pytest.fixture(scope="module")
def packing():
    """32 disks, φ = 0.9, particle 0 a rattler; forward and reverse dO/dθ."""
    system, model, params, relaxer, result, solver = relaxed(
        32, 2, 0.9, 1, shrink=0.3, sensitivity={"many_rhs": "dense"})
    obs = resolve_observables(ITEMS, 32, 2)
    dx, _ = solver.vector_derivative(DIAMETERS)
    forward = observable_derivatives(solver, DIAMETERS, obs, "forward", "test", dx)
    reverse = observable_derivatives(solver, DIAMETERS, obs, "reverse", "test")
    return system, model, params, relaxer, solver, obs, dx, forward, reverse


def test_names_and_shapes(packing):
    *_, obs, dx, forward, reverse = packing
    assert obs.names == ("pressure", "energy", "x[7]", "y[7]", "y[0]")
    assert reverse["d_observable_d_theta"].shape == (5, 32)
    assert reverse["report"].n_solves == 5 and reverse["report"].converged
    assert np.isnan(reverse["d_observable_d_theta"][4]).all()  # a rattler's position
    assert np.isnan(forward["d_observable_d_theta"][4]).all()


def test_reverse_equals_forward(packing):
    system, model, params, relaxer, solver, obs, dx, forward, reverse = packing
    f, r = forward["d_observable_d_theta"][:4], reverse["d_observable_d_theta"][:4]
    for k in range(4):
        np.testing.assert_allclose(r[k], f[k], rtol=0, atol=1e-10 * np.abs(f[k]).max(),
                                   err_msg=obs.names[k])
    np.testing.assert_allclose(reverse["value"], forward["value"], rtol=1e-14)
    # the positions: rows of the Jacobian itself
    np.testing.assert_allclose(r[2], dx[:, 7, 0], atol=1e-10 * np.abs(dx[:, 7, 0]).max())
    # U and p: the elasticity module's forward contraction
    other = elastic_derivatives(solver, [DIAMETERS], {"diameters": {"dx_dtheta": dx}})
    np.testing.assert_allclose(r[0], other["diameters"]["dp_dtheta"],
                               atol=1e-10 * np.abs(r[0]).max())
    np.testing.assert_allclose(r[1], other["diameters"]["dU_dtheta"],
                               atol=1e-10 * np.abs(r[1]).max())


@pytest.mark.slow
def test_reverse_against_central_differences(packing):
    system, model, params, relaxer, solver, obs, dx, forward, reverse = packing
    theta0, apply = theta_apply(DIAMETERS, params, system.species)
    h = 1e-5
    for p in (5, 20):
        fd, runs = central_difference(relaxer, model, params, apply, theta0, solver.y, h,
                                      solver.rattlers, component=p, ftol=1e-13)
        (_, p_plus, y_plus), (_, p_minus, y_minus) = runs
        pairs = solver.data.pairs
        plus = energy_stress_pressure(model, y_plus, p_plus, pairs)
        minus = energy_stress_pressure(model, y_minus, p_minus, pairs)
        fd_pressure = (float(plus[2]) - float(minus[2])) / (2 * h)
        fd_energy = (float(plus[0]) - float(minus[0])) / (2 * h)
        got = reverse["d_observable_d_theta"][:, p]
        assert abs(got[0] - fd_pressure) <= 1e-5 * abs(fd_pressure), (p, got[0], fd_pressure)
        assert abs(got[1] - fd_energy) <= 1e-5 * abs(fd_energy), (p, got[1], fd_energy)
        np.testing.assert_allclose(got[2:4], fd[7], rtol=1e-5, atol=1e-5 * np.nanmax(np.abs(fd)))


def test_choose_mode_by_counts():
    assert choose_mode({"mode": "auto"}, 0, 100)[0] == "forward"
    mode, reason = choose_mode({"mode": "auto"}, 3, 100)
    assert mode == "reverse" and reason.startswith("3 observable(s) < 100 θ components")
    assert choose_mode({"mode": "auto"}, 100, 100)[0] == "forward"
    assert choose_mode({"mode": "forward"}, 1, 100) == ("forward",
                                                        "sensitivity.mode is 'forward'")


def test_out_of_range_observables_name_the_key():
    with pytest.raises(InputError, match=r"sensitivity.observables\[1\].position.particle = "
                                         r"32: out of range; the packing has 32 particles"):
        resolve_observables(["energy", {"position": {"particle": 32}}], 32, 2)
    with pytest.raises(InputError, match=r"observables\[0\].position.axis = 2: out of range; "
                                         r"the packing is 2D"):
        resolve_observables([{"position": {"particle": 3, "axis": 2}}], 32, 2)


@pytest.mark.slow
def test_run_task_reverse_and_forward_write_the_same_derivatives(tmp_path):
    """auto with 3 observables of 40 components: reverse, no Jacobian in the file; forced
    forward: the Jacobian and the same dO/dθ from it."""
    from sensitivity.systems.generate import random_packing
    from sensitivity.systems.io import read_result, write_packing
    from sensitivity.systems.pipeline import run_task

    path = tmp_path / "p.h5"
    write_packing(path, random_packing(40, dim=2, phi=0.9, seed=2))
    observables = ["pressure", {"position": {"particle": 3}}]
    events = []
    auto = run_task(task_config(path, observables=observables), tmp_path / "auto",
                    progress=lambda event, **fields: events.append((event, fields)))
    forward = run_task(task_config(path, observables=observables, mode="forward"),
                       tmp_path / "forward")
    assert auto.converged and forward.converged, (auto.message, forward.message)
    a, f = read_result(auto.result_path), read_result(forward.result_path)
    assert a.names == ["box"] and f.names == ["diameters", "box"]
    ra, rf = a.observable_derivatives["diameters"], f.observable_derivatives["diameters"]
    assert ra["report"].mode == "reverse" and rf["report"].mode == "forward"
    assert ra["report"].reason.startswith("3 observable(s) < 40 θ components")
    assert ra["report"].observables == ["pressure", "x[3]", "y[3]"]
    assert ra["report"].n_solves == 3 and ra["report"].converged
    got, expected = ra["d_observable_d_theta"], rf["d_observable_d_theta"]
    assert got.shape == (3, 40)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * np.nanmax(np.abs(expected)))
    np.testing.assert_allclose(expected[1:], f.dx_dtheta("diameters")[:, 3, :].T,
                               atol=1e-12 * np.nanmax(np.abs(expected)))
    assert [e for e, _ in events if e == "observables"] == ["observables"]
    np.testing.assert_allclose(a.dx_dtheta("box"), f.dx_dtheta("box"), atol=1e-12)
