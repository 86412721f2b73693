"""Linear solvers (sensitivity/_linear_solve.py), each against an independent numpy reference.

Checks that solve systems of one shape with one solver many times go through :func:`solve`,
one jitted program per solver and static options that takes the matrix, rhs and array
options as arguments, so that they share one compilation (an eager call compiles its loop
again for every matrix it closes over, while its other operations are shared). A check made
once per solver and shape stays eager, as do the eager paths (raise and warn policies, the
warning's location, errors found before the solve).
"""

import functools
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sensitivity import (
    LinearSolveError,
    LinearSolveInfo,
    LinearSolveWarning,
    get_solver,
    solve_bicgstab,
    solve_cg,
    solve_cholesky,
    solve_gmres,
    solve_lstsq,
    solve_lu,
    solve_minres,
    solve_normal_cg,
)
from sensitivity._linear_solve import default_maxiter

ITERATIVE = ["cg", "normal_cg", "gmres", "bicgstab", "minres"]
DENSE = ["lu", "cholesky", "lstsq"]
ALL = ITERATIVE + DENSE
# which solvers handle which kind of system
SYMMETRIC_INDEFINITE = ["minres", "gmres", "bicgstab", "normal_cg", "lu", "lstsq"]
NONSYMMETRIC = ["gmres", "bicgstab", "normal_cg", "lu", "lstsq"]


def _rng(seed=0):
    return np.random.default_rng(seed)


def spd(n=12, seed=0):
    B = _rng(seed).normal(size=(n, n))
    return B @ B.T / n + np.eye(n)


def symmetric_indefinite(n=12, seed=1):
    rng = _rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    ev = rng.uniform(0.5, 3.0, size=n) * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    return Q @ np.diag(ev) @ Q.T


def nonsymmetric(n=12, seed=2):
    rng = _rng(seed)
    return rng.normal(size=(n, n)) / np.sqrt(n) + 3.0 * np.eye(n)


def matvec_of(A):
    A = jnp.asarray(A)
    return lambda x: A @ x


def spring_chain(n=10, seed=3):
    """Hessian of a free chain of n unit-spaced masses joined by springs: singular, with
    the uniform translation as its only zero mode."""
    k = _rng(seed).uniform(0.5, 2.0, size=n - 1)
    D = np.zeros((n - 1, n))
    D[np.arange(n - 1), np.arange(n - 1)] = -1.0
    D[np.arange(n - 1), np.arange(1, n)] = 1.0
    return D.T @ np.diag(k) @ D


def rhs(n, seed=4):
    return _rng(seed).normal(size=n)


@functools.cache
def _compiled(name, static):
    solver = get_solver(name)

    def run(A, b, init, nullspace, maxiter):
        return solver(lambda x: A @ x, b, None, init, maxiter=maxiter, nullspace=nullspace,
                      full_output=True, **dict(static))

    return jax.jit(run)


def solve(name, A, b, *, init=None, nullspace=None, maxiter=None, **static):
    """``get_solver(name)(matvec_of(A), b, init=init, ..., full_output=True, **static)`` in a
    program compiled once per solver, ``static`` options and argument shapes.
    ``maxiter=None`` is passed as its value, :func:`default_maxiter` of the size, so that it
    is an argument too."""
    b = jnp.asarray(b)
    if maxiter is None:
        maxiter = default_maxiter(b.size)
    args = [None if v is None else jnp.asarray(v) for v in (A, b, init, nullspace, maxiter)]
    return _compiled(name, tuple(sorted(static.items())))(*args)


# ------------------------------------------------------------------ accuracy vs numpy


@pytest.mark.parametrize("name", ALL)
def test_spd(name):
    A, b = spd(), rhs(12)
    x, info = solve(name, A, b)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-8, atol=1e-9)
    assert isinstance(info, LinearSolveInfo)
    assert bool(info.converged)
    true_res = np.linalg.norm(A @ np.asarray(x) - b)
    np.testing.assert_allclose(info.residual_norm, true_res, rtol=1e-3, atol=1e-14)
    assert float(info.residual_norm) <= float(info.tolerance)
    np.testing.assert_allclose(info.rhs_norm, np.linalg.norm(b))
    np.testing.assert_allclose(info.tolerance, 1e-10 * np.linalg.norm(b))
    assert float(info.inconsistency) == 0.0


@pytest.mark.parametrize("name", SYMMETRIC_INDEFINITE)
def test_symmetric_indefinite(name):
    A, b = symmetric_indefinite(), rhs(12)
    x, info = solve(name, A, b)  # the program of test_spd
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-7, atol=1e-8)
    assert bool(info.converged)


@pytest.mark.parametrize("name", NONSYMMETRIC)
def test_nonsymmetric(name):
    A, b = nonsymmetric(), rhs(12)
    x, info = solve(name, A, b)  # the program of test_spd
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-7, atol=1e-8)
    assert bool(info.converged)


@pytest.mark.parametrize("name", ["cg", "minres"])
def test_symmetric_methods_report_nonsymmetric_failure(name):
    # CG/MINRES on a non-symmetric matrix must not claim success
    A, b = nonsymmetric(), rhs(12)
    x, info = get_solver(name)(matvec_of(A), jnp.asarray(b), maxiter=200,
                               on_failure="ignore", full_output=True)
    assert not bool(info.converged)
    assert float(info.residual_norm) > float(info.tolerance)


def test_cholesky_of_indefinite_is_reported():
    A, b = symmetric_indefinite(), rhs(12)
    with pytest.raises(LinearSolveError, match="solve_cholesky"):
        solve_cholesky(matvec_of(A), jnp.asarray(b))


def test_lu_of_singular_is_reported():
    A, b = spring_chain(), rhs(10)
    with pytest.raises(LinearSolveError, match="solve_lu"):
        solve_lu(matvec_of(A), jnp.asarray(b))


def test_matrix_instead_of_matvec():
    A, b = spd(), rhs(12)
    np.testing.assert_allclose(solve_cg(jnp.asarray(A), jnp.asarray(b)), np.linalg.solve(A, b),
                               rtol=1e-8)


# ------------------------------------------------------------------ null spaces


def singular_consistent(n=12, k=2, seed=5, indefinite=False):
    """Symmetric matrix with a k-dimensional null space (given by a non-orthonormal basis)
    and a consistent rhs. ``indefinite`` flips the sign of every other nonzero eigenvalue."""
    rng = _rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    ev = rng.uniform(0.5, 3.0, size=n)
    if indefinite:
        ev[1::2] *= -1.0
    ev[:k] = 0.0
    A = Q @ np.diag(ev) @ Q.T
    basis = (Q[:, :k] @ rng.normal(size=(k, k))).T  # (k, n), not orthonormal
    b = A @ rng.normal(size=n)
    return A, basis, b


@pytest.mark.parametrize("name", ALL)
def test_singular_consistent_min_norm(name):
    A, basis, b = singular_consistent()
    x, info = solve(name, A, b, nullspace=basis)
    np.testing.assert_allclose(x, np.linalg.pinv(A) @ b, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(basis @ np.asarray(x), 0.0, atol=1e-10)  # gauge-fixed
    assert bool(info.converged)
    assert float(info.inconsistency) < 1e-12


@pytest.mark.parametrize("name", SYMMETRIC_INDEFINITE)
def test_singular_indefinite_min_norm(name):
    A, basis, b = singular_consistent(indefinite=True, seed=6)
    x, _ = solve(name, A, b, nullspace=basis)  # that of test_singular_consistent_min_norm
    np.testing.assert_allclose(x, np.linalg.pinv(A) @ b, rtol=1e-7, atol=1e-8)


@pytest.mark.slow
def test_redundant_nullspace_basis_and_ridge():
    # a dependent third vector is dropped by the internal orthonormalization
    A, basis, b = singular_consistent(seed=7)
    redundant = np.vstack([basis, basis[0] + 2.0 * basis[1]])
    for name in ["cg", "minres", "lu"]:
        x = get_solver(name)(matvec_of(A), jnp.asarray(b), nullspace=jnp.asarray(redundant))
        np.testing.assert_allclose(x, np.linalg.pinv(A) @ b, rtol=1e-7, atol=1e-8)
        # with a ridge: (A + r I) restricted to the range, i.e. pinv(A + r P) P b
        P = np.eye(12) - np.linalg.pinv(basis) @ basis
        xr = get_solver(name)(matvec_of(A), jnp.asarray(b), ridge=0.3,
                              nullspace=jnp.asarray(basis))
        np.testing.assert_allclose(xr, np.linalg.pinv(A + 0.3 * P) @ (P @ b), rtol=1e-7,
                                   atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_null_space_orthonormalization_is_the_svds_projector(dtype):
    """Small null spaces are orthonormalized by Gram-Schmidt (no LAPACK); larger ones by the
    SVD. Either way: orthonormal columns whose projector is that of NumPy's SVD of the basis,
    dependent vectors dropped as zero columns, whatever the vectors' scales."""
    from sensitivity._linear_solve import _UNROLL_K, _orthonormal_basis

    rng = np.random.default_rng(3)
    n = 40
    for k in (1, 3, _UNROLL_K, _UNROLL_K + 1):
        basis = rng.normal(size=(k, n)) * np.logspace(0, 3, k)[:, None]  # scales 1 to 1e3
        cases = [(basis, k)]
        if k > 1:  # one vector a combination of the others: rank k - 1
            dependent = basis.copy()
            dependent[k // 2] = 3.0 * basis[0] - 0.5 * basis[-1]
            cases.append((dependent, k - 1))
        for vectors, rank in cases:
            q = np.asarray(_orthonormal_basis(jnp.asarray(vectors, dtype), jnp.zeros(n, dtype),
                                              dtype, "test"))
            assert q.shape == (n, k) and q.dtype == dtype
            kept = np.linalg.norm(q, axis=0) > 0.5
            assert kept.sum() == rank
            eps = float(np.finfo(dtype).eps)
            np.testing.assert_allclose(q[:, kept].T @ q[:, kept], np.eye(rank), atol=50 * eps)
            u = np.linalg.svd(vectors.T, full_matrices=False)[0][:, :rank]
            np.testing.assert_allclose(q @ q.T, u @ u.T, atol=1e3 * eps)


@pytest.mark.parametrize("name", ITERATIVE)
def test_reported_residual_is_the_true_one(name):
    # ill-conditioned SPD (cond 1e7; CG and MINRES converge, the others run out of
    # iterations): whatever happens, the report must match numpy
    rng = _rng(8)
    Q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    A = Q @ np.diag(np.logspace(-7, 0, 40)) @ Q.T
    b = rhs(40)
    x, info = get_solver(name)(matvec_of(A), jnp.asarray(b), tol=1e-9, maxiter=400,
                               on_failure="ignore", full_output=True)
    x = np.asarray(x)
    true_res = np.linalg.norm(A @ x - b)
    # a residual computed in float64 is known to eps (||A|| ||x|| + ||b||), whoever computes
    # it; at cond 1e7 that is the size of a converged residual, so XLA's order of summation
    # decides the last digits (the compile flags change them by 1e-3 relative)
    rounding = 4 * np.finfo(float).eps * (np.linalg.norm(A, 2) * np.linalg.norm(x)
                                          + np.linalg.norm(b))
    np.testing.assert_allclose(info.residual_norm, true_res, rtol=1e-6, atol=rounding)
    threshold = 1e-9 * np.linalg.norm(b)
    if abs(true_res - threshold) > rounding:
        assert bool(info.converged) == (true_res <= threshold)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.slow
def test_spring_chain_projected_solution(name):
    H = spring_chain()
    n = H.shape[0]
    b = rhs(n)
    b = b - b.mean()  # consistent: no net force
    ones = jnp.ones((1, n))
    x, info = get_solver(name)(matvec_of(H), jnp.asarray(b), nullspace=ones, full_output=True)
    np.testing.assert_allclose(x, np.linalg.pinv(H) @ b, rtol=1e-8, atol=1e-9)
    assert abs(float(jnp.sum(x))) < 1e-10
    assert bool(info.converged)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.slow
def test_spring_chain_inconsistent_rhs(name):
    H = spring_chain()
    n = H.shape[0]
    b = rhs(n) + 0.3  # net force along the translation: no solution
    ones = jnp.ones(n)  # a single vector shaped like b also works as a basis
    x, info = get_solver(name)(matvec_of(H), jnp.asarray(b), nullspace=ones,
                               on_failure="ignore", full_output=True)
    assert not bool(info.converged)
    expected = abs(b.mean()) * np.sqrt(n) / np.linalg.norm(b)
    np.testing.assert_allclose(info.inconsistency, expected, rtol=1e-10)
    # the answer is that of the projected system: minimum-norm least squares
    np.testing.assert_allclose(x, np.linalg.pinv(H) @ b, rtol=1e-7, atol=1e-8)
    with pytest.raises(LinearSolveError, match="null space"):
        get_solver(name)(matvec_of(H), jnp.asarray(b), nullspace=ones)
    # accepting any rhs: solves the projection and reports success
    x2, info2 = get_solver(name)(matvec_of(H), jnp.asarray(b), nullspace=ones,
                                 consistency_tol=float("inf"), full_output=True)
    assert bool(info2.converged)
    np.testing.assert_allclose(x2, x, rtol=1e-7, atol=1e-8)


@pytest.mark.slow
def test_spring_chain_without_nullspace_is_not_silent():
    H = spring_chain()
    b = rhs(H.shape[0]) + 0.3
    for name in ["cg", "minres", "gmres", "lu"]:
        _, info = get_solver(name)(matvec_of(H), jnp.asarray(b), maxiter=100,
                                   on_failure="ignore", full_output=True)
        assert not bool(info.converged), name


@pytest.mark.parametrize("name", ["cg", "minres", "gmres", "lstsq"])
@pytest.mark.slow
def test_spring_chain_in_custom_linear_solve_both_modes(name):
    """Inside jax.lax.custom_linear_solve, forward and reverse mode give the same
    gauge-fixed pseudo-inverse, even for (co)tangents along the translation."""
    H = spring_chain()
    n = H.shape[0]
    ones = jnp.ones((1, n))
    solve = functools.partial(get_solver(name), nullspace=ones, consistency_tol=float("inf"))

    def f(b):
        return jax.lax.custom_linear_solve(matvec_of(H), b, solve=solve,
                                           transpose_solve=solve, symmetric=True)

    b0 = jnp.asarray(rhs(n))
    pinv = np.linalg.pinv(H)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(f))(b0), pinv, atol=1e-8)
    np.testing.assert_allclose(jax.jit(jax.jacrev(f))(b0), pinv, atol=1e-8)


@pytest.mark.slow
def test_pytree_nullspace():
    # two decoupled spring chains stored as a dict; null space = translating either chain
    H1, H2 = spring_chain(5, seed=1), spring_chain(4, seed=2)

    def mv(x):
        return {"a": jnp.asarray(H1) @ x["a"], "b": jnp.asarray(H2) @ x["b"]}

    basis = {"a": jnp.stack([jnp.ones(5), jnp.zeros(5)]),
             "b": jnp.stack([jnp.zeros(4), jnp.ones(4)])}
    rng = _rng(7)
    ba, bb = rng.normal(size=5), rng.normal(size=4)
    b = {"a": jnp.asarray(ba - ba.mean()), "b": jnp.asarray(bb - bb.mean())}
    for name in ["cg", "minres", "gmres", "lu"]:
        x = get_solver(name)(mv, b, nullspace=basis)
        np.testing.assert_allclose(x["a"], np.linalg.pinv(H1) @ b["a"], atol=1e-9)
        np.testing.assert_allclose(x["b"], np.linalg.pinv(H2) @ b["b"], atol=1e-9)


# ------------------------------------------------------------------ options


@pytest.mark.parametrize("name", ALL)
@pytest.mark.slow
def test_ridge(name):
    A, b = spd(), rhs(12)
    x = get_solver(name)(matvec_of(A), jnp.asarray(b), ridge=0.7)
    np.testing.assert_allclose(x, np.linalg.solve(A + 0.7 * np.eye(12), b), rtol=1e-8)


def test_ridge_makes_singular_solvable():
    H, b = spring_chain(), rhs(10)
    x = solve_cg(matvec_of(H), jnp.asarray(b), ridge=1e-2)
    np.testing.assert_allclose(x, np.linalg.solve(H + 1e-2 * np.eye(10), b), rtol=1e-7)


def laplacian_2d(m):
    """5-point Dirichlet Laplacian on an m x m grid (SPD, condition ~ m^2)."""
    T = 2 * np.eye(m) - np.eye(m, k=1) - np.eye(m, k=-1)
    return np.kron(T, np.eye(m)) + np.kron(np.eye(m), T)


@pytest.mark.parametrize("name", ["cg", "minres", "gmres", "bicgstab", "normal_cg"])
@pytest.mark.slow
def test_warm_start_reduces_iterations(name):
    A = laplacian_2d(8)
    b = rhs(64)
    ref = np.linalg.solve(A, b)
    _, cold = solve(name, A, b)
    near = ref + 1e-6 * rhs(64, seed=9)
    x, warm = solve(name, A, b, init=near)
    np.testing.assert_allclose(x, ref, rtol=1e-7)
    assert int(warm.iterations) < int(cold.iterations)
    _, exact = solve(name, A, b, init=ref)
    assert int(exact.iterations) == 0


@pytest.mark.parametrize("name", ["cg", "minres", "gmres", "bicgstab"])
@pytest.mark.slow
def test_preconditioner_reduces_iterations(name):
    # badly scaled SPD matrix: Jacobi preconditioning fixes the scaling
    d = np.logspace(0, 4, 40)
    A = np.diag(np.sqrt(d)) @ spd(40, seed=3) @ np.diag(np.sqrt(d))
    b = rhs(40)
    dinv = jnp.asarray(1.0 / np.diag(A))
    solver = get_solver(name)
    x0, plain = solver(matvec_of(A), jnp.asarray(b), full_output=True, maxiter=2000)
    x1, prec = solver(matvec_of(A), jnp.asarray(b), M=lambda r: dinv * r, full_output=True)
    ref = np.linalg.solve(A, b)
    np.testing.assert_allclose(x1, ref, rtol=1e-6)
    assert bool(prec.converged) and bool(plain.converged)
    assert int(prec.iterations) < int(plain.iterations) / 2


def test_minres_preconditioned_indefinite():
    A = symmetric_indefinite(30, seed=4)
    scale = np.logspace(0, 3, 30)
    A = np.diag(scale) @ A @ np.diag(scale)
    b = rhs(30)
    dinv = jnp.asarray(1.0 / scale**2)
    x, info = solve_minres(matvec_of(A), jnp.asarray(b), M=lambda r: dinv * r,
                           full_output=True)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-6)
    roundoff = 1e-14 * np.linalg.norm(A) * np.linalg.norm(x)
    np.testing.assert_allclose(info.residual_norm, np.linalg.norm(A @ np.asarray(x) - b),
                               rtol=1e-2, atol=roundoff)


def test_atol_and_tol_are_2norm_over_the_whole_pytree():
    # a rhs with exact zeros must not stop after one iteration (lineax's elementwise test did)
    A = laplacian_2d(6)
    b = np.zeros(36)
    b[0] = 1.0
    x, info = solve_cg(matvec_of(A), jnp.asarray(b), full_output=True)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), atol=1e-10)
    assert int(info.iterations) > 1
    _, loose = solve_cg(matvec_of(A), jnp.asarray(b), tol=0.0, atol=1e-3, full_output=True)
    assert float(loose.tolerance) == 1e-3
    assert float(loose.residual_norm) <= 1e-3
    assert int(loose.iterations) < int(info.iterations)


@pytest.mark.slow
def test_zero_rhs():
    A = spd()
    for name in ALL:
        x, info = solve(name, A, np.zeros(12))  # the programs of test_spd
        np.testing.assert_array_equal(x, 0.0)
        assert bool(info.converged)
        assert int(info.iterations) == 0


@pytest.mark.slow
def test_float32_default_tolerance():
    A, b = spd(), rhs(12)
    A32 = jnp.asarray(A, jnp.float32)
    x, info = solve_cg(lambda v: A32 @ v, jnp.asarray(b, jnp.float32), full_output=True)
    assert x.dtype == jnp.float32
    assert bool(info.converged)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ iteration counts


@pytest.mark.parametrize("name,bound", [("cg", 4), ("minres", 4), ("gmres", 4)])
@pytest.mark.slow
def test_iteration_count_k_distinct_eigenvalues(name, bound):
    # Krylov methods on a diagonal matrix with k distinct eigenvalues finish in <= k steps
    d = np.repeat([1.0, 2.0, 5.0, 11.0], 10)
    b = rhs(40)
    x, info = get_solver(name)(lambda v: jnp.asarray(d) * v, jnp.asarray(b), full_output=True)
    np.testing.assert_allclose(x, b / d, rtol=1e-9)
    assert bool(info.converged)
    assert 1 <= int(info.iterations) <= bound


@pytest.mark.slow
def test_iteration_count_one_for_eigenvector():
    d = np.arange(1.0, 21.0)
    b = np.zeros(20)
    b[3] = 2.0
    for name in ["cg", "minres", "gmres", "bicgstab"]:
        _, info = get_solver(name)(lambda v: jnp.asarray(d) * v, jnp.asarray(b),
                                   full_output=True)
        assert int(info.iterations) == 1, name


@pytest.mark.slow
def test_gmres_restart_counts_all_steps():
    A = nonsymmetric(40, seed=8) + 0.0 * np.eye(40)
    b = rhs(40)
    x, info = solve_gmres(matvec_of(A), jnp.asarray(b), restart=5, full_output=True)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-7)
    _, full = solve_gmres(matvec_of(A), jnp.asarray(b), restart=40, full_output=True)
    assert int(info.iterations) > 5  # several cycles, all counted
    assert int(full.iterations) <= 40


# ------------------------------------------------------------------ failure policies


def _unconverged(name, **kw):
    A = laplacian_2d(8)
    b = jnp.asarray(rhs(64))
    return get_solver(name)(matvec_of(A), b, maxiter=2, **kw)


@pytest.mark.parametrize("name", ITERATIVE)
def test_unconverged_full_output(name):
    x, info = _unconverged(name, on_failure="ignore", full_output=True)
    assert not bool(info.converged)
    assert int(info.iterations) == 2
    assert float(info.residual_norm) > float(info.tolerance)
    assert np.all(np.isfinite(x))


@pytest.mark.parametrize("name", ITERATIVE)
def test_unconverged_raise(name):
    msg = re.escape(f"solve_{name} did not converge in 2 iterations")
    with pytest.raises(LinearSolveError, match=msg) as exc:
        _unconverged(name)
    text = str(exc.value)
    assert "tolerance" in text and "maxiter" in text
    assert isinstance(exc.value, RuntimeError)


@pytest.mark.parametrize("name", ITERATIVE)
def test_unconverged_raise_under_jit(name):
    # under jit JAX re-raises the callback's LinearSolveError as a RuntimeError whose
    # message carries it (the program of test_warm_start_reduces_iterations' cold start)
    with pytest.raises(RuntimeError, match=f"LinearSolveError: solve_{name} did not converge"):
        jax.block_until_ready(solve(name, laplacian_2d(8), rhs(64), maxiter=2))


@pytest.mark.parametrize("name", ITERATIVE)
def test_unconverged_warn(name):
    with pytest.warns(LinearSolveWarning, match="did not converge"):
        x = _unconverged(name, on_failure="warn")
    assert np.all(np.isfinite(x))


def test_unconverged_warn_under_jit():
    A = jnp.asarray(laplacian_2d(8))
    f = jax.jit(lambda b: solve_cg(lambda v: A @ v, b, maxiter=2, on_failure="warn"))
    with pytest.warns(LinearSolveWarning, match="did not converge in 2 iterations"):
        jax.block_until_ready(f(jnp.asarray(rhs(64))))
        jax.effects_barrier()


@pytest.mark.parametrize("name", ITERATIVE)
def test_unconverged_nan(name):
    x, _ = solve(name, laplacian_2d(8), rhs(64), maxiter=2, on_failure="nan")
    assert np.all(np.isnan(x))
    # converged solves are untouched
    y, _ = solve(name, laplacian_2d(8), rhs(64), on_failure="nan")
    assert np.all(np.isfinite(y))


@pytest.mark.slow
def test_nan_policy_pytree_and_vmap():
    A = jnp.asarray(laplacian_2d(4))
    b = {"u": jnp.asarray(rhs(16)), "v": jnp.ones(3)}
    mv = lambda x: {"u": A @ x["u"], "v": 2.0 * x["v"]}
    x = solve_cg(mv, b, maxiter=1, on_failure="nan")
    assert np.all(np.isnan(x["u"])) and np.all(np.isnan(x["v"]))
    # vmap: only the unconverged batch element becomes NaN
    easy = np.zeros(16)
    easy[0] = 1.0
    B = jnp.stack([jnp.asarray(easy), jnp.asarray(rhs(16))])
    d = jnp.where(jnp.arange(16) == 0, 1.0, 2.0 + jnp.arange(16.0))
    xs = jax.vmap(lambda bb: solve_cg(lambda v: d * v, bb, maxiter=1, on_failure="nan"))(B)
    assert np.all(np.isfinite(xs[0])) and np.all(np.isnan(xs[1]))


def test_raise_under_vmap_names_the_failures():
    A = jnp.asarray(laplacian_2d(8))
    B = jnp.stack([jnp.asarray(rhs(64, seed=s)) for s in range(3)])
    f = jax.jit(jax.vmap(lambda b: solve_cg(lambda v: A @ v, b, maxiter=2)))
    # JAX calls the callback once per batch element (or once with the batch): either way
    # the failure surfaces
    with pytest.raises(RuntimeError, match="solve_cg did not converge in 2 iterations"):
        jax.block_until_ready(f(B))


def test_warning_points_at_the_caller():
    with pytest.warns(LinearSolveWarning) as rec:
        _unconverged("cg", on_failure="warn")
    assert rec[0].filename == __file__


def test_nonfinite_rhs_is_named():
    b = jnp.asarray(rhs(12)).at[3].set(jnp.nan)
    with pytest.raises(LinearSolveError, match="right-hand side is not finite"):
        solve_cg(matvec_of(spd()), b, nullspace=jnp.ones(12))
    with pytest.raises(LinearSolveError, match="right-hand side is not finite"):
        solve_lu(matvec_of(spd()), b)


def test_bad_policy():
    with pytest.raises(ValueError, match="on_failure"):
        solve_cg(matvec_of(spd()), jnp.asarray(rhs(12)), on_failure="silent")


def test_bad_matvec_structure():
    with pytest.raises(TypeError, match="structure of b"):
        solve_cg(lambda x: (x, x), {"a": jnp.ones(3)})


# ------------------------------------------------------------------ pytrees, jit, vmap


@pytest.mark.parametrize("name", ALL)
@pytest.mark.slow
def test_pytree_rhs(name):
    A = spd(9, seed=11)
    Aj = jnp.asarray(A)

    def mv(x):
        flat = jnp.concatenate([x["a"], x["b"].reshape(-1)])
        y = Aj @ flat
        return {"a": y[:3], "b": y[3:].reshape(2, 3)}

    bflat = rhs(9)
    b = {"a": jnp.asarray(bflat[:3]), "b": jnp.asarray(bflat[3:]).reshape(2, 3)}
    x = get_solver(name)(mv, b)
    ref = np.linalg.solve(A, bflat)
    np.testing.assert_allclose(x["a"], ref[:3], rtol=1e-8)
    np.testing.assert_allclose(x["b"], ref[3:].reshape(2, 3), rtol=1e-8)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.slow
def test_vmap_over_b_and_jit(name):
    A = spd()
    B = np.stack([rhs(12, seed=s) for s in range(4)])
    f = jax.jit(jax.vmap(lambda b: get_solver(name)(matvec_of(A), b, full_output=True)))
    X, info = f(jnp.asarray(B))
    np.testing.assert_allclose(X, np.linalg.solve(A, B.T).T, rtol=1e-8)
    assert info.converged.shape == (4,) and bool(jnp.all(info.converged))


@pytest.mark.slow
def test_vmap_iteration_counts_are_per_element():
    d = jnp.arange(1.0, 21.0)
    e = jnp.zeros(20).at[3].set(1.0)
    B = jnp.stack([e, jnp.asarray(rhs(20))])
    for name in ["cg", "minres", "gmres", "bicgstab"]:
        _, info = jax.jit(jax.vmap(
            lambda b: get_solver(name)(lambda v: d * v, b, full_output=True)))(B)
        assert int(info.iterations[0]) == 1, name
        assert int(info.iterations[1]) > 1, name


A0_INSIDE, B0_INSIDE = jnp.asarray(spd(8, seed=12)), jnp.asarray(rhs(8))
THETAS_INSIDE = jnp.array([0.1, 0.5, 2.0])


@functools.cache
def _inside_reference():
    """The dense-solve references of :func:`test_inside_custom_linear_solve`: the same for
    every solver, so computed once (one compiled program) and shared by its parameters."""

    def fref(theta, b):
        x = jnp.linalg.solve(A0_INSIDE + theta * jnp.eye(8), b)
        return jnp.sum(x**2) + jnp.sum(jnp.sin(x))

    return jax.jit(lambda theta, b, thetas: (
        jax.grad(fref, argnums=(0, 1))(theta, b),
        jax.jvp(fref, (theta, b), (1.0, b))[1],
        jax.vmap(jax.grad(fref), (0, None))(thetas, b),
    ))(0.5, B0_INSIDE, THETAS_INSIDE)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.slow
def test_inside_custom_linear_solve(name):
    """The engine passes these functions as solve/transpose_solve; grad, jvp, jit, vmap and
    the default raise policy (a debug callback inside) must all go through."""
    A0, b0 = A0_INSIDE, B0_INSIDE
    solve = get_solver(name)

    def f(theta, b):
        mv = lambda x: A0 @ x + theta * x
        x = jax.lax.custom_linear_solve(mv, b, solve=lambda m, c: solve(m, c),
                                        transpose_solve=lambda m, c: solve(m, c),
                                        symmetric=True)
        return jnp.sum(x**2) + jnp.sum(jnp.sin(x))

    gref, tref, gvref = _inside_reference()
    g = jax.grad(f, argnums=(0, 1))(0.5, b0)
    np.testing.assert_allclose(g[0], gref[0], rtol=1e-7)
    np.testing.assert_allclose(g[1], gref[1], rtol=1e-7, atol=1e-10)
    t = jax.jvp(f, (0.5, b0), (1.0, b0))[1]
    np.testing.assert_allclose(t, tref, rtol=1e-7)
    gj = jax.jit(jax.grad(f))(0.5, b0)
    np.testing.assert_allclose(gj, gref[0], rtol=1e-7)
    gv = jax.jit(jax.vmap(jax.grad(f), (0, None)))(THETAS_INSIDE, b0)
    np.testing.assert_allclose(gv, gvref, rtol=1e-7)


def test_custom_linear_solve_failure_raises():
    A0 = jnp.asarray(laplacian_2d(6))
    solve = functools.partial(solve_cg, maxiter=2)

    def f(b):
        x = jax.lax.custom_linear_solve(lambda x: A0 @ x, b, solve=solve,
                                        transpose_solve=solve, symmetric=True)
        return jnp.sum(x**2)

    with pytest.raises(RuntimeError, match="did not converge in 2 iterations"):
        jax.block_until_ready(jax.jit(jax.grad(f))(jnp.asarray(rhs(36))))


# ------------------------------------------------------------------ dispatcher


def test_get_solver():
    assert get_solver("cg") is solve_cg
    assert get_solver("solve_minres") is solve_minres
    assert get_solver("dense") is solve_lstsq
    assert get_solver("normal_cg") is solve_normal_cg
    assert get_solver("gmres") is solve_gmres
    assert get_solver("bicgstab") is solve_bicgstab
    assert get_solver("lu") is solve_lu
    assert get_solver("cholesky") is solve_cholesky
    assert get_solver(solve_cg) is solve_cg
    with pytest.raises(ValueError, match="unknown linear solver"):
        get_solver("qmr")
    loose = get_solver("cg", tol=1e-3)
    _, info = loose(matvec_of(spd()), jnp.asarray(rhs(12)), full_output=True)
    np.testing.assert_allclose(info.tolerance, 1e-3 * np.linalg.norm(rhs(12)))


def test_jaxopt_calling_convention():
    # jaxopt: solve_cg(matvec, b, ridge=None, init=None, **kwargs)
    A, b = spd(), rhs(12)
    x = solve_cg(matvec_of(A), jnp.asarray(b), 0.5, jnp.zeros(12))
    np.testing.assert_allclose(x, np.linalg.solve(A + 0.5 * np.eye(12), b), rtol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve_gmres(matvec_of(A), jnp.asarray(b), tol=1e-6, maxiter=100)
