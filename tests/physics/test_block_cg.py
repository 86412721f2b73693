"""Block CG (systems.block_cg) and the elastic tensor's strain solve against dense
pseudo-inverse solves: rank-deficient blocks, a singular operator, non-convergence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _physics import relaxed

from sensitivity.systems import elasticity as el
from sensitivity.systems import block_cg as block_cg_module
from sensitivity.systems.block_cg import block_cg
from sensitivity.systems.hessian import dense_hessian


def _singular_operator(n=60, null=2, seed=0):
    """A symmetric positive semi-definite (n, n) matrix with a ``null``-dimensional null
    space, condition number ~1e4 on its range, and the projector onto that range."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = np.concatenate([np.zeros(null), np.geomspace(1e-2, 1e2, n - null)])
    a = (q * eig) @ q.T
    p = np.eye(n) - q[:, :null] @ q[:, :null].T
    return a, p


def test_block_cg_matches_the_pseudo_inverse_with_a_rank_deficient_block():
    """Five right-hand sides in the range of a singular operator, one of them zero and one
    a multiple of another (the block loses rank at the start): every column converges to
    the minimum-norm solution, the zero one to zero."""
    a, p = _singular_operator()
    rng = np.random.default_rng(1)
    b = p @ rng.normal(size=(60, 5))
    b[:, 3] = 0.0
    b[:, 4] = -2.5 * b[:, 1]
    matvec = jax.jit(lambda v: v @ jnp.asarray(a))  # v (m, n): row p is the vector b_p
    x, k, res, ok = jax.jit(lambda b: block_cg(matvec, b, 1e-12, 600))(jnp.asarray(b.T))
    expected = (np.linalg.pinv(a) @ b).T
    assert np.all(np.asarray(ok)), (res, k)
    np.testing.assert_allclose(np.asarray(x), expected, rtol=0,
                               atol=1e-9 * np.abs(expected).max())
    assert np.all(np.asarray(x)[3] == 0.0)
    true = np.linalg.norm(np.asarray(x) @ a - b.T, axis=1)
    # the same norm up to round-off of the residual
    np.testing.assert_allclose(np.asarray(res), true, rtol=0,
                               atol=1e-13 * np.linalg.norm(b, axis=0).max())
    assert np.all(true <= 1e-12 * np.linalg.norm(b, axis=0) + 1e-300)


@pytest.mark.parametrize("gram", ["reduce", "dot"])
def test_block_cg_cholesky_and_eigendecomposition_paths_agree(monkeypatch, gram):
    """The m×m factorizations by Cholesky (the default while the Gram matrices are well
    conditioned) and by the eigendecomposition (forced: no pivot passes CHOLESKY_MIN) reach
    the same minimum-norm solutions, with either form of the Gram matrices."""
    a, p = _singular_operator(seed=4)
    b = p @ np.random.default_rng(5).normal(size=(60, 4))
    matvec = jax.jit(lambda v: v @ jnp.asarray(a))
    expected = (np.linalg.pinv(a) @ b).T
    solutions = []
    for cholesky_min in (block_cg_module.CHOLESKY_MIN, np.inf):
        monkeypatch.setattr(block_cg_module, "CHOLESKY_MIN", cholesky_min)
        x, k, res, ok = block_cg(matvec, jnp.asarray(b.T), 1e-12, 600, gram=gram)
        assert np.all(np.asarray(ok)), (cholesky_min, res, k)
        np.testing.assert_allclose(np.asarray(x), expected, rtol=0,
                                   atol=1e-9 * np.abs(expected).max())
        solutions.append(np.asarray(x))
    np.testing.assert_allclose(solutions[0], solutions[1], rtol=0,
                               atol=1e-9 * np.abs(expected).max())


def test_block_cg_reports_a_solve_that_runs_out_of_iterations():
    a, p = _singular_operator(seed=2)
    b = p @ np.random.default_rng(3).normal(size=(60, 3))
    matvec = jax.jit(lambda v: v @ jnp.asarray(a))
    x, k, res, ok = block_cg(matvec, jnp.asarray(b.T), 1e-12, 4)
    assert int(k) == 4
    assert not np.any(np.asarray(ok))
    true = np.linalg.norm(np.asarray(x) @ a - b.T, axis=1)
    np.testing.assert_allclose(np.asarray(res), true, rtol=1e-10)
    assert np.all(true > 1e-12 * np.linalg.norm(b, axis=0))


@pytest.fixture(scope="module")
def packing():
    """32 disks, φ = 0.9, one rattler: the solver and the strain right-hand sides -Ξ."""
    *_, solver = relaxed(32, 2, 0.9, 1, shrink=0.3)
    pk = solver.data
    comps = el.STRAIN_COMPONENTS[2]
    directions = jnp.asarray(np.stack([el.strain_direction(c, 2) for c in comps]))
    base = solver.params
    from sensitivity.systems._linear_system import optimality

    def forces(thetas):
        strain = jnp.einsum("p,pab->ab", thetas, directions)
        return optimality(pk, pk.y, base._replace(strain=strain))

    zeros = jnp.zeros(len(comps))
    xi = jax.jit(jax.vmap(lambda t: jax.jvp(forces, (zeros,), (t,))[1]))(jnp.eye(len(comps)))
    return solver, -xi


@pytest.mark.slow  # the packing's relaxation: ~11 s on 2 shared cores
def test_strain_solve_matches_the_dense_minimum_norm_solve(packing):
    """The tensor's block solve (scaled system, translations projected) against the
    pseudo-inverse of the dense Hessian (rattler tethered), to 1e-10."""
    solver, b = packing
    pk = solver.data
    x, iters, res, rhs, res_s, rhs_s, ok = jax.jit(
        lambda pk, b: el._strain_solve(pk, b, 1e-12, 500))(pk, b)
    assert np.all(np.asarray(ok))
    h = dense_hessian(pk.hessian)
    flat = np.asarray(b).reshape(b.shape[0], -1)
    expected = (np.linalg.pinv(h, rcond=1e-12, hermitian=True) @ flat.T).T
    got = np.asarray(x).reshape(flat.shape)
    assert np.abs(got - expected).max() <= 1e-10 * np.abs(expected).max()
    assert np.all(np.asarray(res) <= 1e-9 * np.asarray(rhs))


@pytest.mark.slow
def test_strain_solve_out_of_iterations_is_not_converged(packing):
    solver, b = packing
    x, iters, res, rhs, res_s, rhs_s, ok = el._strain_solve(solver.data, b, 1e-12, 3)
    assert not np.any(np.asarray(ok))
    assert np.all(np.asarray(iters) == 3)
    assert np.all(np.asarray(res_s) > 1e-12 * np.asarray(rhs_s))
