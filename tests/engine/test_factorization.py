"""The engine's factor-once sparse solve against dense reference solves (NumPy pinv / solve)."""

import numpy as np
import pytest
import scipy.sparse as sp

import sensitivity


def _laplacian(n, seed, extra=3.0):
    """A random connected weighted graph Laplacian (SPD off the constant vector)."""
    rng = np.random.default_rng(seed)
    i = np.concatenate([np.arange(n - 1), rng.integers(0, n, 3 * n)])
    j = np.concatenate([np.arange(1, n), rng.integers(0, n, 3 * n)])
    keep = i != j
    w = rng.uniform(0.5, extra, keep.sum())
    a = sp.coo_matrix((w, (i[keep], j[keep])), shape=(n, n))
    a = a + a.T
    return (sp.diags(np.asarray(a.sum(axis=1)).ravel()) - a).tocsr()


@pytest.mark.parametrize("ordering", ["MMD_AT_PLUS_A", "COLAMD"])
def test_singular_laplacian_minimum_norm_against_pinv(ordering):
    n = 60
    a = _laplacian(n, 0)
    ones = np.ones((1, n))
    fac = sensitivity.factorize_sparse(a, nullspace=ones, ordering=ordering)
    assert fac.nullspace_size == 1
    b = np.random.default_rng(1).standard_normal((7, n))
    x, info = fac.solve(b, full_output=True, chunk=3)
    pb = b - b.mean(axis=1, keepdims=True)
    expected = (np.linalg.pinv(a.toarray(), hermitian=True) @ pb.T).T
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-11 * np.abs(expected).max())
    assert info.iterations.shape == (7,) and set(info.iterations.tolist()) <= {1, 2}
    assert info.converged.all() and (info.residual_norm <= 1e-10 * info.rhs_norm).all()
    # the inconsistency reported is the component along the null space
    np.testing.assert_allclose(info.inconsistency, np.abs(b.sum(axis=1)) / np.sqrt(n)
                               / np.linalg.norm(b, axis=1), rtol=1e-10)
    # into a given array (e.g. a memory map)
    out = np.empty_like(b)
    into = fac.solve(b, out=out, chunk=2)
    assert np.shares_memory(into, out) and np.array_equal(out, x)
    # one right-hand side: same answer, shape (n,)
    np.testing.assert_allclose(fac.solve(b[2]), x[2], atol=1e-13 * np.abs(x).max())


def test_nonsingular_nonsymmetric_against_dense_solve():
    n = 40
    rng = np.random.default_rng(2)
    a = sp.random(n, n, density=0.1, random_state=3) + sp.eye(n) * 4.0
    fac = sensitivity.factorize_sparse(a, symmetric=False, ordering="COLAMD")
    b = rng.standard_normal((5, n))
    np.testing.assert_allclose(fac.solve(b), np.linalg.solve(a.toarray(), b.T).T, atol=1e-12)


def test_two_dimensional_null_space_and_singular_error():
    """Two disconnected graphs: a null space of two vectors; with only one given, refused."""
    a = sp.block_diag([_laplacian(20, 4), _laplacian(30, 5)]).tocsr()
    t = np.zeros((2, 50))
    t[0, :20] = 1.0
    t[1, 20:] = 1.0
    b = np.random.default_rng(6).standard_normal((3, 50))
    x = sensitivity.factorize_sparse(a, nullspace=t).solve(b)
    q, _ = np.linalg.qr(t.T)
    pb = b.T - q @ (q.T @ b.T)
    np.testing.assert_allclose(x.T, np.linalg.pinv(a.toarray(), hermitian=True) @ pb,
                               atol=1e-11)
    with pytest.raises(np.linalg.LinAlgError, match="singular beyond its given null space"):
        sensitivity.factorize_sparse(a, nullspace=t[:1])
