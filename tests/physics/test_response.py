"""∂x*/∂θ of relaxed packings: every θ kind against central finite differences and a dense
pseudo-inverse, rattlers, zero modes, gauge and translation invariance, 2D and 3D, periodic
and free boundaries."""

import jax
import numpy as np
import pytest
from _physics import central_difference, relative_error, relaxed

from sensitivity.systems._errors import InputError
from sensitivity.systems.generate import random_packing
from sensitivity.systems.potentials import resolve_potential
from sensitivity.systems.contacts import find_rattlers, gauge_fix, nullspace_basis
from sensitivity.systems.response import ResponseSolver, resolve_sensitivity
from sensitivity.systems.theta import ParameterSpec, resolve_parameters, theta_apply

KINDS = [
    ParameterSpec("small_diameter", "diameter", 0),
    ParameterSpec("large_diameter", "diameter", 1),
    ParameterSpec("epsilon_small", "epsilon", 0),
    ParameterSpec("epsilon", "epsilon", None),
    ParameterSpec("box", "box", None),
]


@pytest.fixture(scope="module")
def packing_2d():
    """32 disks, φ = 0.9, particle 0 shrunk to a rattler; every scalar θ at once."""
    system, model, params, relaxer, result, solver = relaxed(32, 2, 0.9, 1, shrink=0.3)
    scalars = solver.scalar_derivatives(KINDS)
    vector = solver.vector_derivative(ParameterSpec("diameters", "diameters"))
    return system, model, params, relaxer, result, solver, scalars, vector


@pytest.mark.slow
def test_2d_has_the_rattler_and_zero_modes(packing_2d):
    system, model, params, relaxer, result, solver, scalars, vector = packing_2d
    assert np.flatnonzero(solver.rattlers).tolist() == [0]
    zero = solver.zero_modes()
    assert zero["expected"] == 2 * (1 + 1)
    assert zero["found"] == zero["expected"] and zero["matches"]
    assert zero["method"] == "dense eigendecomposition"
    assert zero["basis_max_residual"] < 1e-12
    assert 0 < zero["eigenvalue_min_nonzero"] < zero["eigenvalue_max"]
    assert zero["negative_eigenvalues"] == 0
    contacts = solver.contacts
    assert contacts["contact_overlap_min"] > 0 and contacts["contact_gap_min"] > 0


@pytest.mark.parametrize("k", [1, 2, 200])
def test_tridiagonal_eigenvalues_match_scipy(k, monkeypatch):
    """The Lanczos matrix's eigenvalues by NumPy's dense solver (no scipy.linalg import at
    start-up) and, above DENSE_TRIDIAGONAL_MAX, by SciPy's tridiagonal solver: SciPy's
    values either way, for a matrix with clustered and negative eigenvalues."""
    from scipy.linalg import eigvalsh_tridiagonal

    from sensitivity.systems import diagnostics

    rng = np.random.default_rng(k)
    alphas = np.concatenate([np.full(k // 2, 1e-9), rng.normal(size=k - k // 2)])
    betas = 1e-3 * rng.normal(size=k - 1)
    expect = eigvalsh_tridiagonal(alphas, betas)
    np.testing.assert_allclose(diagnostics.tridiagonal_eigenvalues(alphas, betas), expect,
                               rtol=0, atol=1e-14)
    monkeypatch.setattr(diagnostics, "DENSE_TRIDIAGONAL_MAX", 0)
    np.testing.assert_allclose(diagnostics.tridiagonal_eigenvalues(alphas, betas), expect,
                               rtol=0, atol=1e-14)


@pytest.mark.slow
def test_lanczos_diagnostics_against_the_dense_eigendecomposition(packing_2d, monkeypatch):
    """The Lanczos path of zero_modes (forced by a zero dense limit) against the dense one:
    run to the whole backbone space it gives the same spectrum ends; after 12 steps the
    largest Ritz value is close and the smallest an upper bound; with no steps, the zero
    modes of the construction and no eigenvalue figures (NaN)."""
    import sensitivity.systems.diagnostics as diagnostics

    system, model, params, relaxer, result, solver, scalars, vector = packing_2d
    dense = solver.zero_modes()
    assert dense["method"] == "dense eigendecomposition"
    monkeypatch.setattr(diagnostics, "DENSE_EIGEN_MAX_DOF", 0)
    live = 2 * int((~solver.rattlers).sum()) - 2  # backbone coordinates off the translations
    for steps in (live, 12):
        monkeypatch.setitem(solver.settings, "lanczos_steps", steps)
        lz = solver.zero_modes()
        assert lz["method"].startswith(f"construction + Lanczos ({steps} steps)")
        assert lz["found"] == lz["expected"] == dense["expected"] and lz["matches"]
        assert lz["negative_eigenvalues"] == 0
        if steps == live:
            for key in ("eigenvalue_min_nonzero", "eigenvalue_max"):
                np.testing.assert_allclose(lz[key], dense[key], rtol=1e-8)
        else:
            np.testing.assert_allclose(lz["eigenvalue_max"], dense["eigenvalue_max"], rtol=1e-2)
            assert lz["eigenvalue_min_nonzero"] >= dense["eigenvalue_min_nonzero"] * (1 - 1e-9)
    monkeypatch.setitem(solver.settings, "lanczos_steps", 0)  # the construction alone
    lz = solver.zero_modes()
    assert lz["found"] == lz["expected"] and np.isnan(lz["eigenvalue_min_nonzero"])
    assert np.isnan(lz["condition_number"])


@pytest.mark.parametrize("pspec", KINDS, ids=[p.name for p in KINDS])
@pytest.mark.slow
def test_2d_scalar_theta_matches_central_differences(packing_2d, pspec):
    system, model, params, relaxer, result, solver, scalars, vector = packing_2d
    dx, report = scalars[pspec.name]
    assert report.converged and report.iterations >= 0
    # converged: ‖S r‖ <= tol ‖S b‖ on the block-Jacobi-scaled system; the residual of
    # H dx = b itself is reported (same order: the diagonal blocks are well conditioned)
    assert report.relative_residual <= 1e-9
    fd = central_difference(system, model, params, relaxer, solver, pspec)
    backbone = ~solver.rattlers
    if pspec.kind == "epsilon" and pspec.species is None:
        # a uniform ε scales the energy: the minimum does not move
        assert np.max(np.abs(dx[backbone])) < 1e-9  # = -H⁺F_res/ε: the error of x*
        assert np.max(np.abs(fd[backbone])) < 1e-6
        return
    assert relative_error(dx, fd, backbone) < 1e-5
    # rattler rows are NaN, the backbone's mean response is zero (the gauge)
    assert np.all(np.isnan(dx[0])) and np.all(np.isfinite(dx[backbone]))
    assert np.abs(dx[backbone].mean(axis=0)).max() < 1e-10


def _dense_system(packing, pspec):
    """The backbone's dense Hessian of the energy (jax.hessian) and right-hand side
    ``-∂(∇E)/∂θ`` (jax.jacfwd), restricted to the backbone's coordinates."""
    system, model, params, relaxer, result, solver, scalars, vector = packing
    y = solver.y
    n, d = y.shape
    rows = np.repeat(~solver.rattlers, d)
    hessian = jax.jit(jax.hessian(lambda y: model.energy(y, params, solver.pairs)))(y)
    theta0, apply = theta_apply(pspec, params, system.species)
    rhs = -jax.jit(jax.jacfwd(
        lambda t: jax.grad(model.energy)(y, apply(params, t), solver.pairs)))(theta0)
    return (np.asarray(hessian).reshape(n * d, n * d)[np.ix_(rows, rows)],
            np.asarray(rhs).reshape(-1)[rows])


@pytest.mark.slow
def test_2d_matches_dense_pseudo_inverse(packing_2d):
    system, model, params, relaxer, result, solver, scalars, vector = packing_2d
    backbone = ~solver.rattlers
    d = solver.y.shape[1]
    for pspec in KINDS[:3] + KINDS[4:]:
        hessian, rhs = _dense_system(packing_2d, pspec)
        dy = (np.linalg.pinv(hessian, rcond=1e-10, hermitian=True) @ rhs).reshape(-1, d)
        expected = np.full((system.n, d), np.nan)
        expected[backbone] = dy
        if pspec.kind == "box":  # x = λ y: the affine part
            expected[backbone] += np.asarray(solver.y)[backbone]
        expected = gauge_fix(expected, solver.rattlers)
        assert relative_error(scalars[pspec.name][0], expected, backbone) < 1e-8, pspec.name


@pytest.mark.slow
def test_2d_vector_theta(packing_2d):
    """Every diameter: [N][N][d], dense factorization, against differences and the scalar θ."""
    system, model, params, relaxer, result, solver, scalars, vector = packing_2d
    dx, report = vector
    n, d = system.n, system.dim
    assert dx.shape == (n, n, d)
    assert report.converged and report.solver == "dense"
    backbone = ~solver.rattlers
    for component in (3, 17):
        fd = central_difference(system, model, params, relaxer, solver,
                                ParameterSpec("diameters", "diameters"), component=component)
        assert relative_error(dx[component], fd, backbone) < 1e-5
    # the species θ moves every diameter of the species: the sum of those rows
    small = system.species == 0
    assert relative_error(np.nansum(dx[small], axis=0), scalars["small_diameter"][0],
                          backbone) < 1e-8
    # a rattler's own diameter moves nothing
    assert np.max(np.abs(dx[0][backbone])) < 1e-12


@pytest.mark.slow
def test_vector_theta_batched_iterative_equals_dense(packing_2d):
    system, model, params, relaxer, result, solver, scalars, vector = packing_2d
    iterative = ResponseSolver(model, result.positions, params, max_force=result.max_force,
                               settings=resolve_sensitivity({"many_rhs": "iterative"}))
    dx, report = iterative.vector_derivative(ParameterSpec("diameters", "diameters"))
    assert report.solver == "cg" and report.n_solves == system.n and report.converged
    assert report.many_rhs == "iterative" and "many_rhs" in report.reason
    # iterations of a batched solve: the most any column took (not -1), and their sum
    assert 5 < report.iterations <= report.iterations_total <= system.n * report.iterations
    backbone = ~solver.rattlers
    assert relative_error(dx.reshape(-1, 2), vector[0].reshape(-1, 2),
                          np.tile(backbone, system.n)) < 1e-8


@pytest.mark.parametrize("options", [{"preconditioner": "two_level"},
                                     {"preconditioner": "schwarz"},
                                     {"preconditioner": "none"},
                                     {"preconditioner": "jacobi"},
                                     {"preconditioner": "none", "solver": "minres"},
                                     {"solver": "minres"},
                                     {"solver": "gmres"}],
                         ids=["cg-two-level", "cg-schwarz", "cg-plain", "cg-jacobi", "minres",
                              "minres-block-jacobi", "gmres-block-jacobi"])
@pytest.mark.slow
def test_other_solvers_and_preconditioners_agree(packing_2d, options):
    system, model, params, relaxer, result, solver, scalars, vector = packing_2d
    other = ResponseSolver(model, result.positions, params, max_force=result.max_force,
                           settings=resolve_sensitivity(options))
    dx, report = other.scalar_derivatives([KINDS[0]])["small_diameter"]
    assert report.converged
    assert relative_error(dx, scalars["small_diameter"][0], ~solver.rattlers) < 1e-8


@pytest.mark.slow
def test_scaled_solve_reports_the_residual_of_the_unscaled_system(packing_2d):
    """The default (block-Jacobi scaled) solve reports ``‖H dx - b‖`` of the Hessian system
    itself: recomputed here with the dense Hessian of the energy (jax.hessian)."""
    system, model, params, relaxer, result, solver, scalars, vector = packing_2d
    backbone = ~solver.rattlers
    pspec = KINDS[1]
    hessian, rhs = _dense_system(packing_2d, pspec)
    dx, report = scalars[pspec.name]
    residual = np.linalg.norm(hessian @ dx[backbone].reshape(-1) - rhs)
    assert report.preconditioner == "block_jacobi" and report.iterations > 5
    assert 0 < report.residual < 1e-9 * np.linalg.norm(rhs)
    np.testing.assert_allclose(report.residual, residual, rtol=1e-2)
    np.testing.assert_allclose(report.relative_residual, residual / np.linalg.norm(rhs),
                               rtol=1e-2)
    # the convergence test's own figure: the scaled system's relative residual
    assert report.converged and report.solver_relative_residual <= 1e-10 * (1 + 1e-6)
    assert report.solver_relative_residual != report.relative_residual


@pytest.mark.slow
def test_translation_gauge(packing_2d):
    """Translating the packing rigidly does not change the (gauge-fixed) response."""
    system, model, params, relaxer, result, solver, scalars, vector = packing_2d
    shift = np.array([1.234, -0.567])
    moved = np.mod(result.positions + shift, system.box)
    other = ResponseSolver(model, moved, params, max_force=result.max_force,
                           settings=resolve_sensitivity({}))
    dx = other.scalar_derivatives([KINDS[0]])["small_diameter"][0]
    backbone = ~solver.rattlers
    assert relative_error(dx, scalars["small_diameter"][0], backbone) < 1e-8


@pytest.mark.slow
def test_3d_packing_with_rattler():
    system, model, params, relaxer, result, solver = relaxed(32, 3, 0.72, 1, shrink=0.5)
    assert np.flatnonzero(solver.rattlers).tolist() == [0]
    kinds = [KINDS[0], KINDS[4]]
    out = solver.scalar_derivatives(kinds)
    backbone = ~solver.rattlers
    for pspec in kinds:
        fd = central_difference(system, model, params, relaxer, solver, pspec)
        assert relative_error(out[pspec.name][0], fd, backbone) < 1e-5, pspec.name
    zero = solver.zero_modes()
    assert zero["found"] == zero["expected"] == 3 * 2


@pytest.mark.slow
def test_free_boundary_lennard_jones_cluster():
    """A 2D Lennard-Jones cluster in free space: translations and the rotation are gauge."""
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2) * 1.12
    system = random_packing(16, dim=2, phi=0.5, seed=0).replace(
        positions=grid + 0.05 * rng.standard_normal((16, 2)), box=None, periodic=False,
        diameters=np.ones(16))
    system, model, params, relaxer, result, solver = relaxed(
        16, 2, 0, 0, system=system, potential={"kind": "lennard_jones"},
        minimizer={"dt_start": 0.002, "dt_max": 0.02})
    assert not solver.rattlers.any()
    pspec = KINDS[0]
    dx = solver.scalar_derivatives([pspec])[pspec.name][0]
    fd = central_difference(system, model, params, relaxer, solver, pspec)
    assert relative_error(dx, fd, np.ones(16, bool)) < 1e-5
    zero = solver.zero_modes()
    assert zero["expected"] == 3 and zero["found"] == 3
    # no rigid rotation left in the response
    centred = np.asarray(solver.y) - np.asarray(solver.y).mean(axis=0)
    rotation = np.stack([-centred[:, 1], centred[:, 0]], -1)
    assert abs(np.sum(rotation * dx)) < 1e-8 * np.linalg.norm(dx) * np.linalg.norm(rotation)


def test_find_rattlers_is_iterative():
    # a chain 0-1-2 hanging off a rigid triangle 3-4-5 (each with 3 contacts)
    i = np.array([0, 1, 2, 3, 3, 4, 3, 4, 5])
    j = np.array([1, 2, 3, 4, 5, 5, 6, 6, 6])
    rattlers = find_rattlers(7, i, j, np.ones(len(i), bool), 3)
    assert rattlers.tolist() == [True, True, True, False, False, False, False]


def test_nullspace_basis_and_gauge():
    positions = np.random.default_rng(0).random((5, 2))
    rattlers = np.array([False, True, False, False, False])
    basis = nullspace_basis(positions, rattlers, periodic=True)
    assert basis.shape == (2 + 2, 5, 2)
    free = nullspace_basis(positions, rattlers, periodic=False)
    assert free.shape == (2 + 1 + 2, 5, 2)
    dx = gauge_fix(np.ones((5, 2)), rattlers)
    assert np.isnan(dx[1]).all() and np.allclose(dx[~rattlers], 0)


def test_parameter_validation():
    system = random_packing(8, dim=2, phi=0.9, seed=0)
    spec = resolve_potential({}, system.n_species)
    good = resolve_parameters([{"name": "d", "kind": "diameter", "species": 1}], system, spec)
    assert good[0].species == 1
    for bad in ([{"name": "d", "kind": "diameter", "species": 7}],
                [{"name": "d", "kind": "diameter", "species": None}],
                [{"name": "d", "kind": "volume", "species": None}],
                [{"name": "b", "kind": "box", "species": 0}],
                [{"name": "a/b", "kind": "box", "species": None}],
                [{"name": "x", "kind": "box"}, {"name": "x", "kind": "epsilon"}]):
        with pytest.raises(InputError):
            resolve_parameters(bad, system, spec)
    free = system.replace(box=None, periodic=False)
    with pytest.raises(InputError, match="periodic"):
        resolve_parameters([{"name": "b", "kind": "box", "species": None}], free, spec)
    with pytest.raises(InputError, match="solver"):
        resolve_sensitivity({"solver": "qr"})


@pytest.mark.slow
def test_scalar_path_equals_custom_root_through_jacfwd(packing_2d):
    """scalar_derivatives (root_jvp, reports as values) and jax.jacfwd through the
    custom_root-decorated relaxed solver give the same derivative and the same solve."""
    import sensitivity

    system, model, params, relaxer, result, solver, scalars, vector = packing_2d
    pspec = KINDS[0]
    theta0, apply = theta_apply(pspec, params, system.species)
    relaxed_fn = solver.relaxed_solver()
    with sensitivity.record_solves() as reports:
        dx = jax.jit(jax.jacfwd(lambda t: solver.positions_of(relaxed_fn, apply(params, t))))(
            theta0)
        jax.effects_barrier()
    dx = gauge_fix(np.asarray(dx), solver.rattlers, np.asarray(solver.y))
    backbone = ~solver.rattlers
    assert relative_error(dx, scalars[pspec.name][0], backbone) < 1e-12
    assert reports and int(reports[-1].iterations) == scalars[pspec.name][1].iterations


def test_reverse_mode_through_the_relaxed_solver(packing_2d):
    """jax.grad of ``Σ w · x*(θ)`` through the custom_root-decorated solver (the adjoint
    solve, with a cotangent ``w`` that is *not* orthogonal to the translations) equals
    ``Σ w · ∂x*/∂θ`` from the forward-mode derivative in its gauge."""
    system, model, params, relaxer, result, solver, scalars, vector = packing_2d
    pspec = KINDS[0]
    theta0, apply = theta_apply(pspec, params, system.species)
    w = np.random.default_rng(11).normal(size=(system.n, 2)) + 0.7  # mean far from zero
    relaxed_fn = solver.relaxed_solver(report=False)
    grad = jax.jit(jax.grad(
        lambda t: jax.numpy.sum(w * solver.positions_of(relaxed_fn, apply(params, t)))))
    dx = scalars[pspec.name][0]
    expected = np.nansum(w * dx)
    assert abs(expected) > 1e-3
    np.testing.assert_allclose(float(grad(theta0)), expected, rtol=1e-8)
