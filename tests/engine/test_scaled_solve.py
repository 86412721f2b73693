"""The congruence-scaled Krylov solve (``scaling=CongruenceScaling(...)``), the shared solver
options and the convergence test ``within_tolerance``.

References: NumPy's pseudo-inverse of the matrix (the minimum-norm solution), the scaled
residual ``||S (A x - P b)||`` recomputed here with dense matrices, and plain CG
preconditioned with ``D^-1``, which the scaled CG equals in exact arithmetic.
"""

import inspect

import jax.numpy as jnp
import numpy as np
import pytest

import sensitivity
from sensitivity import CongruenceScaling, within_tolerance

N = 16


def _problem(seed=0):
    """A PSD matrix with null space span(1), badly scaled rows, and a consistent rhs."""
    rng = np.random.default_rng(seed)
    P = np.eye(N) - np.full((N, N), 1.0 / N)
    B = rng.normal(size=(N, N))
    D = np.diag(np.logspace(0, 3, N))
    A = P @ (D @ (B @ B.T + N * np.eye(N)) @ D) @ P
    A = 0.5 * (A + A.T)
    b = P @ rng.normal(size=N)
    d = np.sqrt(np.diag(A))
    return A, b, d, np.ones(N)


@pytest.mark.parametrize("name", ["solve_cg", "solve_minres", "solve_gmres", "solve_bicgstab"])
def test_scaled_solve_gives_the_minimum_norm_solution_and_reports_both_systems(name):
    A, b, d, basis = _problem()
    S = 1.0 / d
    scaling = CongruenceScaling(scale=lambda v: S * v, unscale=lambda v: d * v)
    solve = getattr(sensitivity, name)
    x, info = solve(lambda v: A @ v, jnp.asarray(b), nullspace=basis, scaling=scaling,
                    tol=1e-11, full_output=True)
    np.testing.assert_allclose(x, np.linalg.pinv(A) @ b, rtol=0, atol=1e-8 * np.abs(x).max())
    assert bool(info.converged) and int(info.iterations) > 0
    # the unscaled system's residual, and the scaled one the test compared
    np.testing.assert_allclose(info.residual_norm, np.linalg.norm(A @ x - b),
                               atol=1e-3 * np.linalg.norm(b) * 1e-11)
    scaled_rhs = S * b
    assert float(info.solver_rhs_norm) == pytest.approx(np.linalg.norm(scaled_rhs), rel=1e-12)
    assert float(info.solver_residual_norm) <= 1e-11 * float(info.solver_rhs_norm)
    np.testing.assert_allclose(info.solver_residual_norm, np.linalg.norm(S * (A @ x - b)),
                               atol=1e-11 * float(info.solver_rhs_norm))


def test_scaled_cg_is_cg_preconditioned_with_the_inverse_diagonal():
    A, b, d, basis = _problem(1)
    S = 1.0 / d
    folded = (S[:, None] * A) * S[None, :]  # S A S given explicitly (the folded operator)
    scaling = CongruenceScaling(scale=lambda v: S * v, scaled_matvec=lambda v: folded @ v)
    x_s, info_s = sensitivity.solve_cg(lambda v: A @ v, b, nullspace=basis, scaling=scaling,
                                       tol=1e-10, full_output=True)
    x_p, info_p = sensitivity.solve_cg(lambda v: A @ v, b, nullspace=basis, M=lambda v: S * S * v,
                                       tol=1e-10, full_output=True)
    assert abs(int(info_s.iterations) - int(info_p.iterations)) <= 2
    np.testing.assert_allclose(x_s, x_p, atol=1e-7 * np.abs(x_p).max())
    # without scaling, the reported solver norms are the plain ones
    assert float(info_p.solver_residual_norm) == float(info_p.residual_norm)
    assert float(info_p.solver_rhs_norm) == float(info_p.rhs_norm)


def test_scaled_solve_with_a_ridge_and_its_errors():
    A, b, d, basis = _problem(2)
    S = 1.0 / d
    scaling = CongruenceScaling(scale=lambda v: S * v)
    x = sensitivity.solve_cg(lambda v: A @ v, b, ridge=0.5, scaling=scaling, tol=1e-12)
    expected = np.linalg.solve(A + 0.5 * np.eye(N), b)
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-9 * np.abs(expected).max())
    with pytest.raises(ValueError, match="unscale"):  # GMRES needs S^-1 N for the null space
        sensitivity.solve_gmres(lambda v: A @ v, b, nullspace=basis, scaling=scaling)
    with pytest.raises(TypeError, match="CongruenceScaling"):
        sensitivity.solve_cg(lambda v: A @ v, b, scaling=S)
    with pytest.raises(TypeError, match="scaling"):  # the dense solvers take no scaling
        sensitivity.solve_lu(lambda v: A @ v, b, scaling=scaling)


def test_every_solver_declares_the_shared_options_once():
    """The shared options are real keywords of each solver's signature, with one default."""
    shared = {"tol": None, "atol": 0.0, "maxiter": None, "nullspace": None,
              "on_failure": "raise", "full_output": False, "consistency_tol": None}
    for name in ("solve_cg", "solve_normal_cg", "solve_bicgstab", "solve_gmres", "solve_minres",
                 "solve_lu", "solve_cholesky", "solve_lstsq"):
        params = inspect.signature(getattr(sensitivity, name)).parameters
        assert list(params)[:4] == ["matvec", "b", "ridge", "init"], name
        for option, default in shared.items():
            assert params[option].kind is inspect.Parameter.KEYWORD_ONLY, (name, option)
            assert params[option].default == default, (name, option)
        assert ("M" in params) == ("scaling" in params) == (name in (
            "solve_cg", "solve_normal_cg", "solve_bicgstab", "solve_gmres", "solve_minres"))
    with pytest.raises(TypeError, match="nullspac"):
        sensitivity.solve_cg(lambda v: v, jnp.ones(3), nullspac=jnp.ones(3))


def test_within_tolerance_is_the_solvers_test():
    res, rhs = np.array([1e-9, 2e-9, np.nan, 0.0]), np.array([10.0, 10.0, 1.0, 0.0])
    np.testing.assert_array_equal(within_tolerance(res, rhs, 1e-10),
                                  [True, False, False, True])
    np.testing.assert_array_equal(within_tolerance(res, rhs, 1e-12, atol=1.5e-9),
                                  [True, False, False, True])
    # the same figure a solve reports as converged
    A, b, _, _ = _problem(3)
    _, info = sensitivity.solve_cg(lambda v: A @ v, b, ridge=1.0, tol=1e-8, full_output=True)
    assert bool(within_tolerance(info.residual_norm, info.rhs_norm, 1e-8)) == bool(info.converged)
