"""CG and MINRES with a null space (sensitivity/_linear_solve.py): the iterates are kept in
range(P) and the operator and preconditioner are projected once per application (not as
P A P and P M P). Checked against dense references (numpy pseudo-inverses of the projected
matrices), and against the same method run on the explicitly projected matrices without
``nullspace=``, whose iteration counts it must match within a couple."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sensitivity import solve_cg, solve_minres
from sensitivity._linear_solve import _UNROLL_K, _project

SOLVERS = {"cg": solve_cg, "minres": solve_minres}


def _basis(n, k, seed):
    """(n, k) orthonormal columns; the first one is the uniform vector."""
    rng = np.random.default_rng(seed)
    raw = np.column_stack([np.ones(n)] + [rng.normal(size=n) for _ in range(k - 1)])
    return np.linalg.qr(raw)[0]


def psd_with_nullspace(n=60, k=2, seed=0, cond=1e4):
    """Symmetric positive semi-definite, null space exactly span(N) (N given, (n, k))."""
    rng = np.random.default_rng(seed)
    N = _basis(n, k, seed)
    # orthonormal basis of the complement, eigenvalues log-spaced over [1, cond]
    C = np.linalg.qr(np.column_stack([N, rng.normal(size=(n, n - k))]))[0][:, k:]
    ev = np.logspace(0, np.log10(cond), n - k)
    A = (C * ev) @ C.T
    return 0.5 * (A + A.T), N


def spring_chain_2d(m=40, seed=3):
    """Hessian of a free 2D chain of m masses (x and y decoupled): 2 translation modes."""
    k = np.random.default_rng(seed).uniform(0.5, 2.0, size=m - 1)
    H1 = np.zeros((m, m))
    for i, ki in enumerate(k):
        H1[i, i] += ki
        H1[i + 1, i + 1] += ki
        H1[i, i + 1] -= ki
        H1[i + 1, i] -= ki
    H = np.kron(H1, np.eye(2))  # unknowns (x0, y0, x1, y1, ...)
    N = np.zeros((2 * m, 2))
    N[0::2, 0] = 1.0
    N[1::2, 1] = 1.0
    return H, N / np.sqrt(m)


def spd_preconditioner(A, seed=5):
    """A symmetric positive definite (non-diagonal) approximation of A's inverse."""
    n = A.shape[0]
    d = np.abs(np.diag(A)) + 1.0
    rng = np.random.default_rng(seed)
    E = rng.normal(size=(n, n)) * 0.02
    Minv = np.diag(d) + E @ E.T
    return np.linalg.inv(Minv)


def _projector(N):
    return np.eye(N.shape[0]) - N @ N.T


def _consistent_rhs(N, seed=7):
    b = np.random.default_rng(seed).normal(size=N.shape[0])
    return _projector(N) @ b


def _mv(A):
    A = jnp.asarray(A)
    return lambda x: A @ x


@pytest.mark.parametrize("precond", [False, True])
@pytest.mark.parametrize("name", ["cg", "minres"])
def test_singular_psd_matches_pinv(name, precond):
    A, N = psd_with_nullspace(cond=1e2)
    b = _consistent_rhs(N)
    M = spd_preconditioner(A) if precond else None
    x, info = SOLVERS[name](_mv(A), jnp.asarray(b), nullspace=jnp.asarray(N.T), tol=1e-12,
                            M=None if M is None else _mv(M), full_output=True)
    ref = np.linalg.pinv(A) @ b
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-9 * np.linalg.norm(ref))
    assert bool(info.converged)
    # the minimum-norm answer: no component along the null space
    assert np.abs(N.T @ np.asarray(x)).max() < 1e-12 * np.linalg.norm(ref)
    # the reported residual is the true one, to the round-off of computing it
    x = np.asarray(x)
    rounding = 4 * np.finfo(float).eps * (np.linalg.norm(A, 2) * np.linalg.norm(x)
                                          + np.linalg.norm(b))
    np.testing.assert_allclose(info.residual_norm, np.linalg.norm(A @ x - b),
                               rtol=1e-6, atol=rounding)


@pytest.mark.parametrize("precond", [False, True])
@pytest.mark.parametrize("name", ["cg", "minres"])
def test_spring_chain_2d_matches_pinv(name, precond):
    H, N = spring_chain_2d()
    b = _consistent_rhs(N, seed=11)
    M = spd_preconditioner(H, seed=2) if precond else None
    # the basis as the pytree convention has it: (k, *b.shape), unnormalized
    basis = jnp.asarray((N * np.sqrt(H.shape[0] // 2)).T)
    x, info = SOLVERS[name](_mv(H), jnp.asarray(b), nullspace=basis, tol=1e-12,
                            M=None if M is None else _mv(M), full_output=True)
    ref = np.linalg.pinv(H) @ b
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-9 * np.linalg.norm(ref))
    assert bool(info.converged)


@pytest.mark.parametrize("precond", [False, True])
@pytest.mark.parametrize("name", ["cg", "minres"])
def test_iterations_match_the_explicitly_projected_system(name, precond):
    """Same Krylov space as the method on P A P (and P M P) without ``nullspace=``: the
    iteration counts may differ by round-off only."""
    A, N = psd_with_nullspace(n=80, k=3, seed=4, cond=1e3)
    b = _consistent_rhs(N, seed=9)
    P = _projector(N)
    M = spd_preconditioner(A, seed=6) if precond else None
    solve = SOLVERS[name]
    kw = dict(tol=1e-10, on_failure="ignore", full_output=True)
    x, info = solve(_mv(A), jnp.asarray(b), nullspace=jnp.asarray(N.T),
                    M=None if M is None else _mv(M), **kw)
    x_ref, info_ref = solve(_mv(P @ A @ P), jnp.asarray(b),
                            M=None if M is None else _mv(P @ M @ P), **kw)
    assert bool(info.converged) and bool(info_ref.converged)
    it, it_ref = int(info.iterations), int(info_ref.iterations)
    assert it_ref > 20, "degenerate check: the reference converged at once"
    # round-off moves the counts of ~160 iterations by a few: the reference's by 2 between
    # XLA's default and the suite's compile flags, MINRES's by 3 between a basis
    # orthonormalized by Gram-Schmidt or by the SVD; a different Krylov space moves them by
    # far more (or never converges)
    assert abs(it - it_ref) <= max(2, 0.02 * it_ref), (it, it_ref)
    np.testing.assert_allclose(x, P @ np.asarray(x_ref), rtol=0,
                               atol=1e-8 * np.linalg.norm(x_ref))


@pytest.mark.parametrize("precond", [False, True])
@pytest.mark.parametrize("name", ["cg", "minres"])
def test_ridge_and_inconsistent_rhs_solve_the_projected_system(name, precond):
    """With a ridge (A + ridge I is not singular along the basis, so the operator no
    longer maps it to zero) and a rhs with a sizable null-space component accepted by
    consistency_tol=inf, the engine solves P (A + ridge I) P x = P b: its answer is
    pinv(P (A + ridge) P) P b, which differs from the plain solve of (A + ridge I) x = b."""
    A, N = psd_with_nullspace(n=50, k=2, seed=12, cond=1e2)
    ridge = 0.3
    rng = np.random.default_rng(13)
    b = rng.normal(size=50) + 0.5 * N[:, 0]
    P = _projector(N)
    M = spd_preconditioner(A, seed=3) if precond else None
    x, info = SOLVERS[name](_mv(A), jnp.asarray(b), ridge=ridge, nullspace=jnp.asarray(N.T),
                            M=None if M is None else _mv(M), tol=1e-11,
                            consistency_tol=float("inf"), full_output=True)
    Ar = A + ridge * np.eye(50)
    ref = np.linalg.pinv(P @ Ar @ P) @ (P @ b)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-9 * np.linalg.norm(ref))
    assert bool(info.converged)
    assert float(info.inconsistency) > 0.05
    # the unprojected solve differs: the check can fail
    assert np.linalg.norm(np.linalg.solve(Ar, b) - ref) > 1e-2


@pytest.mark.parametrize("k", [1, _UNROLL_K, _UNROLL_K + 3])
def test_project_matches_dense_projector(k):
    """Both code paths of the projection (elementwise for k <= _UNROLL_K, dots above)."""
    n = 37
    N = _basis(n, k, seed=k)
    x = np.random.default_rng(k).normal(size=n)
    out = jax.jit(_project)(jnp.asarray(N.T), jnp.asarray(x))
    np.testing.assert_allclose(out, _projector(N) @ x, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ["cg", "minres"])
def test_large_nullspace_uses_the_dot_path(name):
    k = _UNROLL_K + 4
    A, N = psd_with_nullspace(n=70, k=k, seed=21, cond=1e3)
    b = _consistent_rhs(N, seed=22)
    x = SOLVERS[name](_mv(A), jnp.asarray(b), nullspace=jnp.asarray(N.T), tol=1e-12)
    ref = np.linalg.pinv(A) @ b
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-9 * np.linalg.norm(ref))


@pytest.mark.parametrize("name", ["cg", "minres"])
def test_many_iterations_do_not_drift_into_the_null_space(name):
    """Ill-conditioned, hundreds of iterations: the iterate keeps no null-space component
    beyond round-off (the driver re-projects only between cycles)."""
    H, N = spring_chain_2d(m=150, seed=8)
    b = _consistent_rhs(N, seed=3)
    x, info = SOLVERS[name](_mv(H), jnp.asarray(b), nullspace=jnp.asarray(N.T), tol=1e-11,
                            full_output=True)
    assert int(info.iterations) > 100
    ref = np.linalg.pinv(H) @ b
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-8 * np.linalg.norm(ref))
    assert np.abs(N.T @ np.asarray(x)).max() < 1e-12 * np.linalg.norm(ref)


@pytest.mark.parametrize("name", ["cg", "minres"])
def test_pytree_with_nullspace_and_preconditioner(name):
    """A pytree rhs (dict of two arrays), its basis with a leading axis, a preconditioner
    on pytrees: against the dense pseudo-inverse of the flattened system."""
    H, N = spring_chain_2d(m=20, seed=4)
    n = H.shape[0]
    b = _consistent_rhs(N, seed=5)
    split = lambda v: {"a": v[:10], "b": v[10:].reshape(-1, 2)}
    join = lambda t: jnp.concatenate([t["a"], t["b"].reshape(-1)])
    M = spd_preconditioner(H, seed=1)
    basis = {"a": jnp.asarray(N.T[:, :10]), "b": jnp.asarray(N.T[:, 10:].reshape(2, -1, 2))}
    x = SOLVERS[name](lambda t: split(jnp.asarray(H) @ join(t)), split(jnp.asarray(b)),
                      nullspace=basis, M=lambda t: split(jnp.asarray(M) @ join(t)),
                      tol=1e-12)
    ref = np.linalg.pinv(H) @ b
    np.testing.assert_allclose(join(x), ref, rtol=0, atol=1e-9 * np.linalg.norm(ref))
    assert n == 40
