"""systems.hessian and systems.preconditioners: the ELL block Hessian against jax.hessian
of the pair energy, its builder (padding, duplicates, capacity), and every preconditioner:
symmetric, positive on the complement of the translations, and CG with it reaching the
dense pseudo-inverse answer in fewer iterations than without."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sensitivity
from sensitivity.systems import hessian as hs
from sensitivity.systems import preconditioners as pc
from sensitivity.systems.generate import random_packing
from sensitivity.systems.hessian import dense_hessian
from sensitivity.systems.potentials import PairModel, Pairs, resolve_potential
from sensitivity.systems.relax import make_relaxer, resolve_minimizer


def _model(n, seed):
    system = random_packing(n, dim=2, phi=0.9, seed=seed)
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    return system, model, model.default_params(system.diameters)


def _backbone(n, seed):
    """A relaxed 2D packing, rattlers removed: (y, i, j, K, box) of the backbone, from the
    pair stiffness of every contact among non-rattlers (so H's null space is the
    translations)."""
    system, model, params = _model(n, seed)
    relaxer = make_relaxer(model, resolve_minimizer({"ftol": 1e-12}), [params])
    result = relaxer.run(system.positions, params)
    assert result.converged
    y = jnp.asarray(result.positions)
    pairs = Pairs.all_pairs(n)
    _, r, sigma, valid = jax.jit(model.pair_geometry)(y, params, pairs)
    contact = np.asarray(valid) & (np.asarray(r) < np.asarray(sigma))
    i, j = np.asarray(pairs.i)[contact], np.asarray(pairs.j)[contact]
    rattler = np.zeros(n, bool)
    while True:  # fewer than d + 1 contacts, iteratively
        live = ~rattler[i] & ~rattler[j]
        z = np.bincount(i[live], minlength=n) + np.bincount(j[live], minlength=n)
        new = ~rattler & (z < 3)
        if not new.any():
            break
        rattler |= new
    live = ~rattler[i] & ~rattler[j]
    i, j = i[live], j[live]
    stiffness = np.asarray(jax.jit(model.pair_stiffness)(y, params, Pairs.from_arrays(i, j)))
    number = np.cumsum(~rattler) - 1
    return (np.asarray(y)[~rattler], number[i], number[j], stiffness,
            np.asarray(model.box))


@pytest.fixture(scope="module")
def packing():
    y, i, j, K, box = _backbone(32, 3)
    n = len(y)
    H = hs.block_hessian(i, j, K, n)
    dense = dense_hessian(H)
    t = np.zeros((2, n, 2))
    t[0, :, 0] = t[1, :, 1] = 1.0
    return y, i, j, K, box, H, dense, t


@pytest.mark.slow
def test_ell_product_equals_the_dense_hessian_of_the_energy():
    # an unrelaxed packing (many overlaps), every pair: the Hessian is not PSD, still exact
    n = 16
    system, model, params = _model(n, 0)
    y = jnp.asarray(system.positions)
    pairs = Pairs.all_pairs(n)
    K = jax.jit(model.pair_stiffness)(y, params, pairs)
    H = hs.block_hessian(pairs.i, pairs.j, K, n, capacity=n + 3)  # with padding
    ref = np.asarray(jax.jit(jax.hessian(model.energy))(y, params, pairs)).reshape(2 * n, 2 * n)
    scale = np.abs(ref).max()
    assert scale > 1.0  # there are overlaps
    np.testing.assert_allclose(dense_hessian(H), ref, rtol=0, atol=1e-12 * scale)
    v = np.random.default_rng(0).standard_normal((5, n, 2))
    hv = np.asarray(jax.vmap(lambda v: hs.hessian_matvec(H, v))(jnp.asarray(v)))
    np.testing.assert_allclose(hv.reshape(5, -1), v.reshape(5, -1) @ ref, rtol=0,
                               atol=1e-12 * scale * np.abs(v).max() * 2 * n)
    # entry 0 is the particle itself; padding points at the row with a zero block
    idx = np.asarray(H.idx)
    assert (idx[:, 0] == np.arange(n)).all()
    blocks = hs.ell_blocks(H)
    pad = (idx == np.arange(n)[:, None]) & (np.arange(idx.shape[1]) > 0)
    assert pad.any() and np.all(blocks[pad] == 0)


@pytest.mark.slow
def test_builder_ignores_padding_merges_duplicates_and_rounds_capacity(packing):
    y, i, j, K, box, H, dense, t = packing
    n = len(y)
    # padded pairs (index n), a self pair, and every pair split in two halves listed twice
    i2 = np.concatenate([i, i, [n, 0, n]])
    j2 = np.concatenate([j, j, [1, 0, n]])
    K2 = np.concatenate([K / 2, K / 2, np.ones((3, 2, 2))])
    H2 = hs.block_hessian(i2, j2, K2, n)
    np.testing.assert_allclose(dense_hessian(H2), dense, rtol=0,
                               atol=1e-13 * np.abs(dense).max())
    assert H2.idx.shape == H.idx.shape
    kmax = 1 + int((np.bincount(i, minlength=n) + np.bincount(j, minlength=n)).max())
    assert H.idx.shape[1] == hs.ell_capacity(kmax) and H.idx.shape[1] % hs.ELL_STEP == 0
    assert H.idx.dtype == jnp.int32 and H.rows.shape == (n, 2, 2 * H.idx.shape[1])
    wide = hs.block_hessian(i, j, K, n, capacity=H.idx.shape[1] + 5)
    assert wide.idx.shape == (n, H.idx.shape[1] + 5)
    v = jnp.asarray(np.random.default_rng(1).standard_normal((n, 2)))
    np.testing.assert_allclose(hs.hessian_matvec(wide, v), hs.hessian_matvec(H, v),
                               rtol=0, atol=1e-13 * np.abs(dense).max())
    with pytest.raises(ValueError, match="capacity"):
        hs.block_hessian(i, j, K, n, capacity=kmax - 1)
    assert [hs.ell_capacity(k) for k in (1, 4, 5, 8, 9)] == [4, 4, 8, 8, 12]


@pytest.mark.slow
def test_partition_is_balanced_and_shapes_depend_on_n_alone():
    rng = np.random.default_rng(0)
    for n in (37, 64, 100):
        levels, m = pc.schwarz_shape(n, per_cell=8)
        part = pc.partition(rng.uniform(0, 5, (n, 2)) - 5.0, np.array([5.0, 5.0]), levels)
        counts = np.bincount(part, minlength=2 ** levels)
        assert counts.max() - counts.min() <= 1 and counts.max() <= m
    shapes = []
    for seed in (0, 1):
        y, i, j, K, box = _model_pairs(40, seed)
        H = hs.block_hessian(i, j, K, 40, capacity=16)
        P = pc.build_schwarz(H, y, box, per_cell=8)
        shapes.append(jax.tree.map(jnp.shape, P))
    assert shapes[0] == shapes[1]


def _model_pairs(n, seed):
    system, model, params = _model(n, seed)
    y = jnp.asarray(system.positions)
    pairs = Pairs.all_pairs(n)
    _, r, sigma, valid = jax.jit(model.pair_geometry)(y, params, pairs)
    keep = np.asarray(valid) & (np.asarray(r) < np.asarray(sigma))
    K = np.asarray(jax.jit(model.pair_stiffness)(y, params, pairs))[keep]
    return (np.asarray(y), np.asarray(pairs.i)[keep], np.asarray(pairs.j)[keep], K,
            np.asarray(model.box))


PRECONDITIONERS = {
    "block_jacobi": (pc.build_block_jacobi, pc.apply_block_jacobi, {}),
    "schwarz_none": (pc.build_schwarz, pc.apply_schwarz, dict(per_cell=8, coarse="none")),
    "schwarz_translations": (pc.build_schwarz, pc.apply_schwarz,
                             dict(per_cell=8, coarse="translations")),
    "schwarz_spectral": (pc.build_schwarz, pc.apply_schwarz,
                         dict(per_cell=8, coarse="spectral", modes=4)),
    "schwarz_default": (pc.build_schwarz, pc.apply_schwarz, {}),
    "schwarz_float32": (pc.build_schwarz, pc.apply_schwarz,
                        dict(per_cell=8, dtype=np.float32)),
    "schwarz_balanced": (lambda H, y, box, **kw: (H, pc.build_schwarz(H, y, box, **kw)),
                         pc.apply_schwarz_balanced, dict(per_cell=8, coarse="spectral",
                                                         modes=4)),
}


@functools.partial(jax.jit, static_argnums=0)
def _columns(apply, data, eye):
    return jax.vmap(lambda e: apply(data, e))(eye)


def _dense_operator(apply, data, n):
    eye = jnp.eye(2 * n).reshape(2 * n, n, 2)
    return np.asarray(_columns(apply, data, eye)).reshape(2 * n, 2 * n).T


@pytest.mark.parametrize("name", list(PRECONDITIONERS))
def test_preconditioner_symmetric_and_positive_off_the_translations(packing, name):
    y, i, j, K, box, H, dense, t = packing
    n = len(y)
    build, apply, kw = PRECONDITIONERS[name]
    data = build(H, y, box, **kw)
    M = _dense_operator(apply, data, n)
    v, w = np.random.default_rng(2).standard_normal((2, 2 * n))
    # float32 matrices: symmetric up to their rounding
    rel = 1e-6 if name == "schwarz_float32" else 1e-12
    assert abs(v @ M @ w - w @ M @ v) <= rel * abs(v @ M @ w) + rel * np.abs(M).max()
    np.testing.assert_allclose(M, M.T, rtol=0, atol=rel * np.abs(M).max())
    q, _ = np.linalg.qr(t.reshape(2, -1).T)
    P = np.eye(2 * n) - q @ q.T
    evals = np.linalg.eigvalsh(P @ M @ P)
    # two zero eigenvalues (the translations projected out), the rest positive
    assert np.all(np.abs(evals[:2]) <= rel * 100 * evals[-1])
    assert evals[2] > 1e-8 * evals[-1]


@jax.jit
def plain(H, b, basis):
    return sensitivity.solve_cg(lambda v: hs.hessian_matvec(H, v), b, nullspace=basis,
                                tol=1e-12, on_failure="ignore", full_output=True)


@functools.partial(jax.jit, static_argnums=0)
def _solve(apply, H, data, b, basis):
    return sensitivity.solve_cg(lambda v: hs.hessian_matvec(H, v), b,
                                M=lambda r: apply(data, r), nullspace=basis, tol=1e-12,
                                on_failure="ignore", full_output=True)


@pytest.mark.parametrize("name", [k for k in PRECONDITIONERS
                                  if k not in ("schwarz_none", "schwarz_translations")])
@pytest.mark.slow
def test_cg_with_preconditioner_matches_dense_pseudo_inverse(packing, name):
    y, i, j, K, box, H, dense, t = packing
    n = len(y)
    build, apply, kw = PRECONDITIONERS[name]
    data = build(H, y, box, **kw)
    b = np.random.default_rng(3).standard_normal((n, 2))
    b -= b.mean(axis=0)
    ref = (np.linalg.pinv(dense, rcond=1e-10, hermitian=True) @ b.reshape(-1)).reshape(n, 2)

    x, info = _solve(apply, H, data, jnp.asarray(b), jnp.asarray(t))
    x0, info0 = plain(H, jnp.asarray(b), jnp.asarray(t))
    assert bool(info.converged) and bool(info0.converged)
    assert np.linalg.norm(np.asarray(x) - ref) <= 1e-8 * np.linalg.norm(ref)
    assert int(info.iterations) < int(info0.iterations)


@pytest.mark.slow
def test_tethered_extra_particle_diagonal_and_active(packing):
    """A rattler-like particle with no pairs, held by a tether ``k I`` (diagonal=): the null
    space is the translation of the others (active=); CG with the spectral Schwarz
    preconditioner still matches the dense pseudo-inverse."""
    y, i, j, K, box, H, dense, t = packing
    n = len(y) + 1
    y2 = np.concatenate([y, [[0.5 * box[0], 0.5 * box[1]]]])
    tether = np.zeros((n, 2, 2))
    tether[-1] = 3.0 * np.eye(2)
    H2 = hs.block_hessian(i, j, K, n, diagonal=tether)
    ref = np.zeros((2 * n, 2 * n))
    ref[:-2, :-2] = dense
    ref[-2:, -2:] = 3.0 * np.eye(2)
    np.testing.assert_allclose(dense_hessian(H2), ref, rtol=0,
                               atol=1e-13 * np.abs(dense).max())
    active = np.arange(n) < n - 1
    basis = np.zeros((2, n, 2))
    basis[0, active, 0] = basis[1, active, 1] = 1.0
    data = pc.build_schwarz(H2, y2, box, per_cell=8, coarse="spectral", modes=4,
                            active=active)
    M = _dense_operator(pc.apply_schwarz, data, n)
    q, _ = np.linalg.qr(basis.reshape(2, -1).T)
    P = np.eye(2 * n) - q @ q.T
    evals = np.linalg.eigvalsh(P @ M @ P)
    assert np.all(np.abs(evals[:2]) <= 1e-10 * evals[-1]) and evals[2] > 1e-8 * evals[-1]
    b = np.random.default_rng(4).standard_normal((n, 2))
    b[active] -= b[active].mean(axis=0)
    expect = np.linalg.pinv(ref, rcond=1e-10, hermitian=True) @ b.reshape(-1)
    x, info = _solve(pc.apply_schwarz, H2, data, jnp.asarray(b), jnp.asarray(basis))
    assert bool(info.converged)
    assert np.linalg.norm(np.asarray(x).reshape(-1) - expect) <= 1e-8 * np.linalg.norm(expect)


@pytest.mark.parametrize("diagonal_only", [False, True])
@pytest.mark.slow
def test_block_scaling_is_s_h_s_and_matches_preconditioned_cg(packing, diagonal_only):
    """``build_block_scaling``: the scaled blocks are ``S H S`` with ``S² D = I`` (dense
    check), and plain CG on the scaled system gives the pseudo-inverse answer in the
    iterations of CG preconditioned with ``D⁻¹`` (the same Krylov space)."""
    y, i, j, K, box, H, dense, t = packing
    n = len(y)
    sc = pc.build_block_scaling(H, diagonal_only=diagonal_only)
    S = np.zeros((2 * n, 2 * n))
    Sinv = np.zeros((2 * n, 2 * n))
    D = np.zeros((2 * n, 2 * n))
    for p in range(n):
        blk = slice(2 * p, 2 * p + 2)
        S[blk, blk] = np.asarray(sc.scale[p])
        Sinv[blk, blk] = np.asarray(sc.unscale[p])
        D[blk, blk] = dense[blk, blk] * (np.eye(2) if diagonal_only else 1.0)
    np.testing.assert_allclose(S @ S @ D, np.eye(2 * n), rtol=0, atol=1e-12)
    np.testing.assert_allclose(S @ Sinv, np.eye(2 * n), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dense_hessian(sc.hessian), S @ dense @ S, rtol=0,
                               atol=1e-12 * np.abs(S @ dense @ S).max())

    b = np.random.default_rng(5).standard_normal((n, 2))
    b -= b.mean(axis=0)
    ref = (np.linalg.pinv(dense, rcond=1e-10, hermitian=True) @ b.reshape(-1)).reshape(n, 2)
    kw = dict(tol=1e-12, on_failure="ignore", full_output=True)
    z, info = sensitivity.solve_cg(lambda v: hs.hessian_matvec(sc.hessian, v),
                                   hs.scale_blocks(sc.scale, jnp.asarray(b)),
                                   nullspace=hs.scale_blocks(sc.unscale, jnp.asarray(t)), **kw)
    x = np.array(hs.scale_blocks(sc.scale, z))
    x -= x.mean(axis=0)  # the gauge of the pseudo-inverse: mean zero
    assert bool(info.converged)
    assert np.linalg.norm(x - ref) <= 1e-9 * np.linalg.norm(ref)
    inv = np.linalg.inv(D.reshape(n, 2, n, 2)[np.arange(n), :, np.arange(n), :])
    _, info_m = sensitivity.solve_cg(
        lambda v: hs.hessian_matvec(H, v), jnp.asarray(b),
        M=lambda r: jnp.einsum("nab,nb->na", inv, r), nullspace=jnp.asarray(t), **kw)
    _, info0 = plain(H, jnp.asarray(b), jnp.asarray(t))
    assert abs(int(info.iterations) - int(info_m.iterations)) <= 2
    if not diagonal_only:
        assert int(info.iterations) < int(info0.iterations)


def test_small_inverse_matches_numpy():
    """The block-Jacobi scaling inverts the d×d diagonal blocks by an unrolled Gauss-Jordan
    elimination (no LAPACK): NumPy's inverses to LU's accuracy (eps · cond), for general
    blocks and for stiff, nearly singular ones (cond ~1e9, where an adjugate formula loses
    all digits in 3D)."""
    from sensitivity.systems._linear_system import small_inverse

    rng = np.random.default_rng(5)
    for d in (1, 2, 3):
        general = rng.normal(size=(50, d, d))
        v = rng.normal(size=(50, d, 1))  # a stiff contact plus a weak one: condition ~1e8
        stiff = 1e4 * v @ v.transpose(0, 2, 1) + 1e-4 * np.eye(d)
        for a in (general, stiff):
            expect = np.linalg.inv(a)
            got = np.asarray(small_inverse(jnp.asarray(a)))
            scale = np.linalg.norm(expect, axis=(1, 2)) * np.linalg.cond(a)
            assert np.all(np.linalg.norm(got - expect, axis=(1, 2)) <= 1e-14 * scale)
