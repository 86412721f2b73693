"""The whole ``diameters`` Jacobian by one sparse factorization (systems.many_rhs): every
column against the dense path (one dense factorization through custom_root) and against
central differences of re-relaxed packings; the method chosen and the reason; 3D and free
boundaries (rotations in the null space)."""

import numpy as np
import pytest
from _physics import central_difference, relaxed

from sensitivity.systems._errors import InputError
from sensitivity.systems.generate import random_packing
from sensitivity.systems.many_rhs import choose_method, sparse_hessian
from sensitivity.systems.response import ResponseSolver, resolve_sensitivity
from sensitivity.systems.theta import ParameterSpec

DIAMETERS = ParameterSpec("diameters", "diameters")


def _both(model, result, params, **extra):
    """The diameters Jacobian by the dense path and by the factorization."""
    out = {}
    events = []
    for method in ("dense", "factorization"):
        solver = ResponseSolver(model, result.positions, params, max_force=result.max_force,
                                settings=resolve_sensitivity({"many_rhs": method, **extra}))
        out[method] = solver.vector_derivative(
            DIAMETERS, lambda event, **fields: events.append((event, fields)))
    # the factorization reports every chunk of columns
    n = result.positions.shape[0]
    assert events and all(e == "jacobian" and f["of"] == n for e, f in events)
    assert events[-1][1]["columns"] == n
    return solver, out


def _column_errors(a, b, backbone):
    """Relative error of every column on the backbone (absolute where the column is 0)."""
    errors = []
    for p in range(a.shape[0]):
        diff = np.linalg.norm(a[p][backbone] - b[p][backbone])
        norm = np.linalg.norm(b[p][backbone])
        errors.append(diff / norm if norm > 1e-12 else diff)
    return np.asarray(errors)


@pytest.fixture(scope="module")
def packing_2d():
    """32 disks, φ = 0.9, particle 0 a rattler."""
    system, model, params, relaxer, result, _ = relaxed(32, 2, 0.9, 1, shrink=0.3)
    solver, out = _both(model, result, params)
    return system, model, params, relaxer, result, solver, out


@pytest.mark.slow
def test_factorization_equals_dense_every_column(packing_2d):
    system, model, params, relaxer, result, solver, out = packing_2d
    (dense, dense_report), (fac, report) = out["dense"], out["factorization"]
    backbone = ~solver.rattlers
    assert np.flatnonzero(solver.rattlers).tolist() == [0]
    assert fac.shape == dense.shape == (32, 32, 2)
    assert np.isnan(fac[:, 0]).all() and np.isfinite(fac[:, backbone]).all()
    assert _column_errors(fac, dense, backbone).max() < 1e-10
    # the gauge: the backbone's mean response is zero in every column
    assert np.abs(fac[:, backbone].mean(axis=1)).max() < 1e-12 * np.abs(fac[:, backbone]).max()
    # the report: method, reason, residuals, iterations that mean something
    assert report.many_rhs == "factorization" and report.solver == "sparse_lu"
    assert dense_report.many_rhs == "dense" and dense_report.solver == "dense"
    assert "many_rhs" in report.reason
    assert report.converged and report.n_solves == 32
    assert 1 <= report.iterations <= 2 and 32 <= report.iterations_total <= 64
    assert report.relative_residual < 1e-10
    assert report.factor_unknowns == 2 * 31 and report.factor_fill >= 1


@pytest.mark.slow
def test_factorization_every_column_against_central_differences(packing_2d):
    system, model, params, relaxer, result, solver, out = packing_2d
    fac = out["factorization"][0]
    backbone = ~solver.rattlers
    fd = np.stack([central_difference(system, model, params, relaxer, solver, DIAMETERS,
                                      component=p) for p in range(system.n)])
    errors = _column_errors(fac, fd, backbone)
    assert errors.max() <= 1e-5, (errors.argmax(), errors.max())


@pytest.mark.slow
def test_factorization_columns_against_central_differences(packing_2d):
    """Three columns (the whole set is the slow test above)."""
    system, model, params, relaxer, result, solver, out = packing_2d
    fac = out["factorization"][0]
    backbone = ~solver.rattlers
    for p in (0, 5, 30):  # 0 is the rattler: its diameter moves nothing
        fd = central_difference(system, model, params, relaxer, solver, DIAMETERS, component=p)
        assert _column_errors(fac[p:p + 1], fd[None], backbone)[0] <= 1e-5, p


@pytest.mark.slow
def test_sparse_hessian_is_the_dense_hessian(packing_2d):
    """The scipy matrix against jax.hessian of the energy over the backbone's pairs."""
    import jax

    system, model, params, relaxer, result, solver, out = packing_2d
    backbone = ~solver.rattlers
    n, d = system.n, system.dim
    hessian = jax.jit(jax.hessian(lambda y: model.energy(y, params, solver.pairs)))(solver.y)
    coords = np.repeat(backbone, d)
    expected = np.asarray(hessian).reshape(n * d, n * d)[np.ix_(coords, coords)]
    got = sparse_hessian(solver.data.hessian, backbone).toarray()
    np.testing.assert_allclose(got, expected, atol=1e-10 * np.abs(expected).max())


@pytest.mark.slow
def test_3d_factorization_equals_dense():
    system, model, params, relaxer, result, _ = relaxed(24, 3, 0.72, 1, shrink=0.5)
    solver, out = _both(model, result, params)
    backbone = ~solver.rattlers
    assert solver.rattlers.any()
    assert _column_errors(out["factorization"][0], out["dense"][0], backbone).max() < 1e-10


@pytest.mark.slow
def test_free_boundary_cluster_rotation_is_gauge():
    """Free space: the backbone's rotation is in the null space too (grounded and projected)."""
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2) * 1.12
    system = random_packing(16, dim=2, phi=0.5, seed=0).replace(
        positions=grid + 0.05 * rng.standard_normal((16, 2)), box=None, periodic=False,
        diameters=np.ones(16))
    system, model, params, relaxer, result, _ = relaxed(
        16, 2, 0, 0, system=system, potential={"kind": "lennard_jones"},
        minimizer={"dt_start": 0.002, "dt_max": 0.02})
    solver, out = _both(model, result, params)
    fac, report = out["factorization"]
    assert report.converged
    all_rows = np.ones(16, bool)
    assert _column_errors(fac, out["dense"][0], all_rows).max() < 1e-9
    fd = central_difference(system, model, params, relaxer, solver, DIAMETERS, component=5)
    assert _column_errors(fac[5:6], fd[None], all_rows)[0] < 1e-5


def test_choose_method_by_size_and_by_config():
    settings = resolve_sensitivity({})
    assert choose_method(settings, 64, 32, 2)[0] == "dense"
    method, reason = choose_method(settings, 8192, 4096, 2)
    assert method == "factorization" and "8192 unknowns" in reason
    assert choose_method(settings, 10_000_000, 5_000_000, 2)[0] == "iterative"
    assert choose_method(resolve_sensitivity({"solver": "lu"}), 8192, 4096, 2)[0] == "dense"
    assert choose_method(resolve_sensitivity({"dense_max_dof": 10}), 64, 32, 2)[0] \
        == "factorization"
    forced = choose_method(resolve_sensitivity({"many_rhs": "iterative"}), 64, 32, 2)
    assert forced == ("iterative", "sensitivity.many_rhs is 'iterative'")
    with pytest.raises(InputError,
                       match="sensitivity.many_rhs = .cholmod.: must be one of auto, dense"):
        resolve_sensitivity({"many_rhs": "cholmod"})


@pytest.mark.slow
def test_colored_right_hand_sides_equal_one_jvp_per_column(packing_2d):
    """One JVP per colour, decompressed, against one JVP per column (jax.linearize)."""
    import jax.numpy as jnp

    from sensitivity.systems.many_rhs import _ColoredRHS, _rhs_columns, distance2_coloring
    from sensitivity.systems.theta import theta_data

    system, model, params, relaxer, result, solver, out = packing_2d
    n = system.n
    backbone = ~solver.rattlers
    tag, theta0, member = theta_data(DIAMETERS, solver.params, system.species)
    colored = _ColoredRHS(solver, tag, theta0, member, backbone)
    assert colored.colors < n
    (columns, dscale), _, _ = solver._run(_rhs_columns, solver._config(tags=[tag], chunk=n),
                                          solver.data, solver.params, theta0, member,
                                          jnp.asarray(0))
    expected = np.asarray(columns)[:, backbone, :].reshape(n, -1)
    assert np.abs(expected).max() > 0 and not np.any(np.asarray(dscale))
    np.testing.assert_allclose(colored.block(0, n), expected, rtol=0,
                               atol=1e-13 * np.abs(expected).max())
    np.testing.assert_array_equal(colored.block(5, 9), colored.block(0, n)[5:9])
    # the colouring: no two particles within two pair steps share a colour
    i, j = np.asarray(solver.pairs.i), np.asarray(solver.pairs.j)
    color = distance2_coloring(n, i, j)
    adjacency = np.eye(n, dtype=int)
    adjacency[i, j] = adjacency[j, i] = 1
    near = (adjacency @ adjacency) > 0
    np.fill_diagonal(near, False)
    assert not np.any(near & (color[:, None] == color[None, :]))


def test_a_result_too_large_is_refused_before_relaxing(tmp_path, monkeypatch):
    """run_task refuses, naming the size and what to do, before any relaxation; the
    default limit is half the free memory (here pretended to be 1 MiB)."""
    import psutil

    from sensitivity.systems.io import write_packing
    from sensitivity.systems.many_rhs import check_result_size, result_bytes
    from sensitivity.systems.pipeline import run_task

    path = tmp_path / "p.h5"
    write_packing(path, random_packing(64, dim=2, phi=0.9, seed=0))
    config = {"system": {"path": str(path)},
              "parameters": [{"name": "all", "kind": "diameters"}],
              "sensitivity": {"max_result_gib": 1e-5},
              "output": {"plots": False}}
    import sensitivity.systems.relax as relax

    def no_relaxation(*args, **kwargs):
        raise AssertionError("relaxed before refusing")

    monkeypatch.setattr(relax.Relaxer, "run", no_relaxation)
    need = 64 * 64 * 2 * 8
    with pytest.raises(InputError, match=r"the result would take 0\.00 GiB \(all: \[N\]\[N\]\[d\] "
                                         r"= \[64\]\[64\]\[2\] float64 each\), more than "
                                         r"0\.00 GiB \(sensitivity\.max_result_gib = 1e-05\); "
                                         "use a kind 'diameter'"):
        run_task(config, tmp_path / "out")
    assert result_bytes([DIAMETERS, ParameterSpec("s", "diameter", 0)], 64, 2) \
        == need + 64 * 2 * 8
    settings = resolve_sensitivity({})
    assert check_result_size([DIAMETERS], 64, 2, settings) == need

    class Little:
        available = 2**20

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Little())
    with pytest.raises(InputError, match=r"0\.5 of the free memory \(0\.0 GiB\)"):
        check_result_size([DIAMETERS], 1024, 2, settings)
    with pytest.raises(InputError, match="max_result_gib = -1: must be null or a number > 0"):
        resolve_sensitivity({"max_result_gib": -1})


def test_reverse_mode_for_a_few_observables_equals_the_forward_jacobian(packing_2d):
    """One adjoint solve per observable against the rows of the forward Jacobian: one
    particle's coordinate, and a random weighting (its rattler row ignored)."""
    from sensitivity.systems.many_rhs import reverse_vector_derivative

    system, model, params, relaxer, result, solver, out = packing_2d
    forward = out["dense"][0]  # (P, N, d), gauge-fixed, rattler rows NaN
    n, d = system.n, system.dim
    backbone = ~solver.rattlers
    c = np.zeros((2, n, d))
    c[0, 7, 1] = 1.0  # y of particle 7
    c[1] = np.random.default_rng(0).standard_normal((n, d))
    got, report = reverse_vector_derivative(solver, DIAMETERS, c)
    assert got.shape == (2, n) and report.converged and report.n_solves == 2
    expected = np.einsum("kia,pia->kp", c[:, backbone], forward[:, backbone])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    np.testing.assert_allclose(got[0], forward[:, 7, 1], atol=1e-10 * np.abs(got[0]).max())


@pytest.mark.slow
def test_a_failed_factorization_falls_back_to_krylov_solves(packing_2d, monkeypatch):
    import sensitivity

    system, model, params, relaxer, result, solver, out = packing_2d

    def singular(*args, **kwargs):
        raise np.linalg.LinAlgError("singular beyond its given null space (test)")

    monkeypatch.setattr(sensitivity, "factorize_sparse", singular)
    fresh = ResponseSolver(model, result.positions, params, max_force=result.max_force,
                           settings=resolve_sensitivity({"many_rhs": "factorization"}))
    dx, report = fresh.vector_derivative(DIAMETERS)
    assert report.many_rhs == "iterative" and report.converged
    assert "the factorization failed (singular beyond its given null space (test))" \
        in report.reason
    assert _column_errors(dx, out["dense"][0], ~solver.rattlers).max() < 1e-8
