"""Preconditioners for CG on a packing's block-sparse Hessian (:mod:`systems.hessian`).

Host-side builders (numpy, once per packing) return pytrees whose shapes depend only on N,
d and capacity buckets; pure-JAX apply functions take them as arguments, so one compiled
solve serves every packing of equal shapes.

* :func:`build_block_jacobi` / :func:`apply_block_jacobi`: inverse diagonal blocks
  (pseudo-inverse where singular).
* :func:`build_block_scaling` / :class:`BlockScaling`: the same preconditioner folded into
  the operator, ``S H S`` with ``S = D^(-1/2)``: plain CG on it takes the iterations of
  block-Jacobi CG at the cost of plain CG per iteration (the response's default).
* :func:`build_schwarz` / :func:`apply_schwarz`: two-level additive Schwarz,
  ``M = Σ_p R_pᵀ A_p⁻¹ R_p + Φ A_0⁺ Φᵀ``. The particles are split by recursive coordinate
  bisection (:func:`partition`) into ``2^L`` compact parts of equal size (±1) of about
  ``per_cell`` particles; each part's principal submatrix ``A_p`` of H is inverted
  exactly (dense, padded to the part capacity; pseudo-inverse where singular); the
  coarse space ``Φ`` has ``c`` vectors per part: none, its d translations
  (``coarse="translations"``, default) or the ``modes`` softest eigenvectors of its
  Neumann matrix (``"spectral"``), with the pseudo-inverse of the Galerkin matrix
  ``A_0 = Φᵀ H Φ``. Symmetric positive semi-definite, positive on the complement of the
  translations (tested), so CG applies. ``dtype=np.float32`` stores the local and coarse
  matrices in single precision. :func:`schwarz_shape` gives the levels and part capacity
  from N alone.
* :func:`apply_schwarz_balanced` with data ``(H, schwarz)``: the balancing (hybrid) form
  ``Q + (I - Q H) M_loc (I - H Q)``, ``Q = Φ A_0⁺ Φᵀ``: fewer iterations for two more
  Hessian products and coarse solves per application.
* :func:`two_level`: block Jacobi plus the rigid translations of the cells of a grid.

Rattlers tethered in the linear system: pass the backbone as ``build_schwarz(...,
active=)`` (its translation is the null space).

Which one: block scaling folded into the operator costs what plain CG costs per iteration
and saves a fifth of the iterations, so it is the response's default; the Schwarz solves
halve the iterations and pay when one build serves several right-hand sides (the figures:
``benchmarks/README.md``, ``bench_preconditioners.py``). The spectral coarse space grows as
N/per_cell × modes (dense: keep it ≲ 512 rows).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._system import wrap_positions
from .hessian import BlockHessian, ell_blocks, hessian_matvec, scale_blocks

if TYPE_CHECKING:
    from .potentials import PairModel, Pairs

__all__ = [
    "two_level",
    "BlockJacobi",
    "build_block_jacobi",
    "apply_block_jacobi",
    "BlockScaling",
    "build_block_scaling",
    "Schwarz",
    "COARSE",
    "schwarz_shape",
    "partition",
    "build_schwarz",
    "apply_schwarz",
    "apply_schwarz_balanced",
]


@functools.lru_cache(maxsize=1)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional
        return None
    with contextlib.suppress(ImportError):  # its own OpenBLAS: load it before looking
        import scipy.linalg.lapack  # noqa: F401
    return ThreadpoolController()


def _single_threaded_blas(fn):
    """Run a builder with one BLAS thread: its matrices are small, and a multi-threaded
    OpenBLAS on a loaded machine spin-waits: measured on 2 shared cores, the Cholesky
    inverse of a 128×128 matrix took 370 ms with 2 threads and 0.22 ms with 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        controller = _blas_controller()
        ctx = (controller.limit(limits=1, user_api="blas") if controller is not None
               else contextlib.nullcontext())
        with ctx:
            return fn(*args, **kwargs)

    return wrapper


def _sym_pinv(a: np.ndarray, rcond: float) -> np.ndarray:
    """Batched symmetric pseudo-inverse by eigendecomposition (eigenvalues below
    ``rcond × max |eigenvalue|`` of each matrix dropped); exactly symmetric."""
    a = 0.5 * (a + np.swapaxes(a, -1, -2))
    w, v = np.linalg.eigh(a)
    top = np.max(np.abs(w), axis=-1, keepdims=True)
    keep = w > rcond * np.where(top > 0, top, 1.0)
    inv_w = np.where(keep, 1.0 / np.where(keep, w, 1.0), 0.0)
    out = (v * inv_w[..., None, :]) @ np.swapaxes(v, -1, -2)
    return 0.5 * (out + np.swapaxes(out, -1, -2))


# ---------------------------------------------------------------------------------------
# Block Jacobi.


class BlockJacobi(NamedTuple):
    inverse: jax.Array  # (N, d, d)


#: Eigenvalues below ``RCOND × max`` are dropped in the pseudo-inverses (the default of
#: every builder here).
RCOND = 1e-10
#: Target particles per part / coarse cell (the default of the Schwarz and two-level
#: builders).
PER_CELL = 16


@_single_threaded_blas
def build_block_jacobi(H: BlockHessian, positions=None, box=None, *,
                       rcond: float = RCOND) -> BlockJacobi:
    """Pseudo-inverses of the diagonal blocks of ``H`` (``positions``, ``box`` unused;
    accepted for a uniform signature)."""
    d = H.rows.shape[1]
    diag = np.asarray(H.rows[:, :, :d])
    return jax.device_put(BlockJacobi(_sym_pinv(diag, rcond)))


def apply_block_jacobi(data: BlockJacobi, r):
    """``M r`` with ``M = blockdiag(H_nn)⁺``."""
    return scale_blocks(data.inverse, r)


class BlockScaling(NamedTuple):
    """Symmetric block-Jacobi scaling of :func:`build_block_scaling`."""

    scale: jax.Array      # (N, d, d) S = D^(-1/2), symmetric
    unscale: jax.Array    # (N, d, d) S⁻¹ = D^(1/2)
    hessian: BlockHessian  # S H S, same sparsity as H


def build_block_scaling(H: BlockHessian, *, diagonal_only: bool = False,
                        rcond: float = 1e-14) -> BlockScaling:
    """Block-Jacobi preconditioning folded into the operator: ``S H S`` with
    ``S = D^(-1/2)``, ``D`` the d×d diagonal blocks of ``H`` (their diagonal with
    ``diagonal_only``: plain Jacobi). Pure JAX (jit it; ``diagonal_only`` static).

    CG on ``S H S z = S b`` (then ``x = S z``) is preconditioned CG with ``M = D⁻¹`` in
    exact arithmetic, so the same iterations, but each costs one product with the scaled
    blocks and nothing else: no preconditioner application (measured at N = 1024: 432
    iterations either way, 13.9 against 19.4 µs each). Its null space is ``S⁻¹`` times
    that of ``H``. ``D`` is shifted by ``rcond`` × its largest trace first, so a singular
    block (an empty row) does not divide by zero.
    """
    d = H.rows.shape[1]
    diag = H.rows[:, :, :d]  # entry 0 of every block row
    diag = 0.5 * (diag + jnp.swapaxes(diag, -1, -2))
    if diagonal_only:
        diag = diag * jnp.eye(d, dtype=diag.dtype)
    floor = rcond * jnp.max(jnp.trace(diag, axis1=-2, axis2=-1))
    scale, unscale = _inverse_sqrt(diag + floor * jnp.eye(d, dtype=diag.dtype))
    n, _, kd = H.rows.shape
    blocks = H.rows.reshape(n, d, kd // d, d)  # [n, a, k, c] = B[n, k, a, c]
    right = scale[H.idx]  # (N, K, d, d): S of each column particle
    scaled = jnp.einsum("nab,nbke,nkec->nakc", scale, blocks, right)
    return BlockScaling(scale, unscale, BlockHessian(H.idx, scaled.reshape(n, d, kd)))


def _inverse_sqrt(a):
    """``(a^(-1/2), a^(1/2))`` of symmetric positive definite ``(N, d, d)`` blocks: 2x2 in
    closed form (``√a = (a + √det I) / √(tr + 2 √det)``), larger ones by ``eigh``."""
    d = a.shape[-1]
    if d == 2:
        root_det = jnp.sqrt(a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0])
        norm = jnp.sqrt(a[:, 0, 0] + a[:, 1, 1] + 2.0 * root_det)
        root = (a + root_det[:, None, None] * jnp.eye(2, dtype=a.dtype)) / norm[:, None, None]
        adjugate = jnp.stack([jnp.stack([root[:, 1, 1], -root[:, 0, 1]], -1),
                              jnp.stack([-root[:, 1, 0], root[:, 0, 0]], -1)], -2)
        return adjugate / root_det[:, None, None], root  # det √a = √det a
    w, v = jnp.linalg.eigh(a)
    vt = jnp.swapaxes(v, -1, -2)
    return (v * (1.0 / jnp.sqrt(w))[:, None, :]) @ vt, (v * jnp.sqrt(w)[:, None, :]) @ vt


# ---------------------------------------------------------------------------------------
# Two-level additive Schwarz.


class Schwarz(NamedTuple):
    """Data of :func:`apply_schwarz` (P parts of capacity m, c coarse vectors per part)."""

    members: jax.Array   # (P, m) int32: particle of each slot (padding: 0, masked)
    mask: jax.Array      # (P, m) float64: 1 for a real slot
    slot: jax.Array      # (N,) int32: flat slot (p m + s) of each particle
    local: jax.Array     # (P, m d, m d): pseudo-inverse of each part's block of H
    basis: jax.Array     # (P, m d, c): coarse vectors restricted to each part
    coarse: jax.Array    # (P c, P c): pseudo-inverse of Φᵀ H Φ


COARSE = ("none", "translations", "spectral")


def schwarz_shape(n: int, per_cell: int = PER_CELL) -> tuple[int, int]:
    """``(levels L, part capacity m)``: ``2^L`` parts of at most ``m`` particles, from the
    number of particles alone (so every packing of N particles shares them)."""
    levels = max(0, int(round(math.log2(max(n, 1) / per_cell))))
    return levels, -(-n // 2 ** levels)


def partition(positions, box, levels: int) -> np.ndarray:
    """Recursive coordinate bisection into ``2^levels`` parts of equal size (±1).

    Positions are wrapped into the periodic box (``box`` None: free space, its bounding
    box). Every level halves each group at its median along the axis whose parts are
    then longest (box edge over the number of cuts so far along it). Returns the part of
    each particle, numbered so that parts ``2q`` and ``2q + 1`` are the halves of ``q``.
    """
    y = np.asarray(positions, np.float64)
    n, d = y.shape
    if box is not None and np.ndim(box) == 2:  # a sheared cell: cut along its cell vectors
        box = np.asarray(box, np.float64)
        edges = np.linalg.norm(box, axis=0)
        y = wrap_positions(y, box) @ np.linalg.inv(box).T * edges
    elif box is not None:
        edges = np.asarray(box, np.float64)
        y = wrap_positions(y, edges)
    else:
        edges = np.ptp(y, axis=0) if n else np.ones(d)
    cuts = np.zeros(d)
    group = np.zeros(n, np.int64)
    for _ in range(levels):
        ax = int(np.argmax(edges / 2.0 ** cuts))
        cuts[ax] += 1
        order = np.lexsort((y[:, ax], group))  # by group, then along the axis
        size = np.bincount(group, minlength=int(group.max(initial=0)) + 1)
        start = np.concatenate([[0], np.cumsum(size)[:-1]])
        g = group[order]
        rank = np.arange(n) - start[g]
        new = np.empty(n, np.int64)
        new[order] = 2 * g + (rank >= size[g] // 2)
        group = new
    return group


def _inverse_spd(a: np.ndarray, rcond: float) -> np.ndarray:
    """Inverse of symmetric matrices (batched): Cholesky for a single matrix where SciPy is
    there, LU otherwise. A matrix whose inverse fails the check ``‖A X v - v‖ ≤ 1e-8 ‖v‖``
    on a random ``v`` (singular, or nearly) gets the pseudo-inverse instead."""
    single = a.ndim == 2
    a = 0.5 * (a + np.swapaxes(a, -1, -2))
    if single:
        a = a[None]
    x = None
    if single:
        try:
            from scipy.linalg import lapack
            c, info = lapack.dpotrf(a[0], lower=True)
            if info == 0:
                inv, info = lapack.dpotri(c, lower=True)
                if info == 0:
                    x = np.tril(inv) + np.tril(inv, -1).T
                    x = x[None]
        except ImportError:  # optional
            pass
    with np.errstate(all="ignore"):
        if x is None:
            try:
                x = np.linalg.inv(a)
            except np.linalg.LinAlgError:
                x = np.full_like(a, np.nan)
        v = np.random.default_rng(0).standard_normal(a.shape[:-1])
        w = np.einsum("pij,pj->pi", a, np.einsum("pij,pj->pi", x, v))
        res = np.linalg.norm(w - v, axis=-1) / np.linalg.norm(v, axis=-1)
        bad = ~(res <= 1e-8)
    if bad.any():
        x[bad] = _sym_pinv(a[bad], rcond)
    x = 0.5 * (x + np.swapaxes(x, -1, -2))
    return x[0] if single else x


@_single_threaded_blas
def build_schwarz(H: BlockHessian, positions, box, *, per_cell: int = PER_CELL,
                  coarse: str = "translations", modes: int = 12, active=None,
                  rcond: float = RCOND, dtype=np.float64) -> Schwarz:
    """Two-level additive Schwarz data (host, numpy).

    Args:
      H: the Hessian (rows: particles; its translations are its null space).
      positions: ``(N, d)`` positions (any periodic image; wrapped into ``box``).
      box: the periodic box edges ``(d,)``, or None for free space.
      per_cell: target particles per part (parts and capacity: :func:`schwarz_shape`).
      coarse: the coarse space, per part: ``"none"``; ``"translations"`` (its d rigid
        translations); ``"spectral"`` (the ``modes`` lowest eigenvectors of the part's
        Neumann matrix, i.e. the Hessian of its internal pairs alone: its translations
        and softest motions, which the local solves cannot see).
      modes: coarse vectors per part for ``"spectral"``.
      active: optional ``(N,)`` bool, the particles whose common translation is H's null
        space (default all; e.g. the backbone when rattler rows are tethered).
      rcond: eigenvalues below ``rcond × max`` are dropped in the pseudo-inverses.
      dtype: of the local and coarse matrices (float32 halves the memory traffic of an
        application; the product is accumulated in that precision and returned in the
        precision of ``r``).
    """
    if coarse not in COARSE:
        raise ValueError(f"build_schwarz: coarse must be one of {', '.join(COARSE)}, "
                         f"got {coarse!r}")
    idx = np.asarray(H.idx).astype(np.int64)
    blocks = ell_blocks(H)
    n, cap, d, _ = blocks.shape
    levels, m = schwarz_shape(n, per_cell)
    n_parts = 2 ** levels
    md = m * d
    y = np.asarray(positions, np.float64)
    part = partition(y, box, levels)
    # slots: the particles of each part, in order
    order = np.argsort(part, kind="stable")
    counts = np.bincount(part, minlength=n_parts)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.empty(n, np.int64)
    slot[order] = part[order] * m + np.arange(n) - start[part[order]]
    members = np.zeros(n_parts * m, np.int64)
    mask = np.zeros(n_parts * m)
    members[slot] = np.arange(n)
    mask[slot] = 1.0
    pad = np.repeat(1.0 - mask.reshape(n_parts, m), d, axis=1)  # (P, m d)
    # the entries of H, padding dropped
    rows = np.repeat(np.arange(n), cap)
    cols = idx.ravel()
    vals = blocks.reshape(-1, d, d)
    live = (cols != rows) | (np.arange(n * cap) % cap == 0)
    rows, cols, vals = rows[live], cols[live], vals[live]
    same = part[rows] == part[cols]
    # each part's principal submatrix (Dirichlet matrix), padded slots decoupled
    local = np.zeros((n_parts, m, m, d, d))
    rs, cs = slot[rows[same]], slot[cols[same]]
    local[rs // m, rs % m, cs % m] = vals[same]
    local = local.transpose(0, 1, 3, 2, 4).reshape(n_parts, md, md)
    local_inv = _inverse_spd(local + pad[:, :, None] * np.eye(md), rcond)
    local_inv *= (1.0 - pad)[:, :, None] * (1.0 - pad)[:, None, :]
    # coarse space
    if coarse == "none":
        c = 0
        basis = np.zeros((n_parts, md, 0))
    elif coarse == "translations":
        c = d
        basis = np.tile(np.eye(d), (n_parts, m, 1)) * (1.0 - pad)[:, :, None]
        basis /= np.sqrt(np.maximum(counts, 1))[:, None, None]  # orthonormal per part
    else:
        c = int(modes)
        # Neumann matrix: the diagonal blocks without the pairs leaving the part (a pair
        # Hessian's diagonal block is minus its row's off-diagonal sum; any extra diagonal
        # term, such as a tether, stays)
        neumann = local.reshape(n_parts, m, d, m, d).copy()
        outer = np.zeros((n_parts * m, d, d))
        off = ~same
        np.add.at(outer, slot[rows[off]], vals[off])
        s_idx = np.arange(m)
        neumann[:, s_idx, :, s_idx, :] += outer.reshape(n_parts, m, d, d).transpose(1, 0, 2, 3)
        neumann = neumann.reshape(n_parts, md, md)
        big = 1e3 * np.max(np.abs(neumann))
        neumann += big * pad[:, :, None] * np.eye(md)
        _, vec = np.linalg.eigh(0.5 * (neumann + np.swapaxes(neumann, 1, 2)))
        basis = vec[:, :, :c] * (1.0 - pad)[:, :, None]
    if c:
        phi = basis.reshape(n_parts * m, d, c)[slot]  # (N, d, c)
        # A0 = Φᵀ H Φ: within a part from its Dirichlet matrix, across parts entry by entry
        a0 = np.zeros((n_parts, n_parts, c, c))
        diag = np.swapaxes(basis, 1, 2) @ local @ basis
        a0[np.arange(n_parts), np.arange(n_parts)] = diag
        cross = ~same
        if cross.any():
            rc, cc = rows[cross], cols[cross]
            contrib = np.swapaxes(phi[rc], 1, 2) @ (vals[cross] @ phi[cc])
            key = part[rc] * n_parts + part[cc]
            o = np.argsort(key, kind="stable")
            key, contrib = key[o], contrib[o]
            first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
            summed = np.add.reduceat(contrib, first, axis=0)
            a0[key[first] // n_parts, key[first] % n_parts] = summed
        a0 = a0.transpose(0, 2, 1, 3).reshape(n_parts * c, n_parts * c)
        # The global translations are (nearly) null vectors of A0: add them back as a
        # stiffness, invert, and project them out again (the pseudo-inverse when they span
        # the null space; SPD either way).
        # the global translations in coarse coordinates (Φ orthonormal per part)
        on = np.ones(n) if active is None else np.asarray(active, np.float64)
        on_slot = np.zeros(n_parts * m)
        on_slot[slot] = on
        t = (basis.reshape(n_parts, m, d, c) * on_slot.reshape(n_parts, m, 1, 1)).sum(
            axis=1).transpose(0, 2, 1).reshape(-1, d)
        q, sv, _ = np.linalg.svd(t, full_matrices=False)
        q = q[:, sv > 1e-8 * max(sv.max(), 1e-300)]
        shift = np.trace(a0) / a0.shape[0]
        x = _inverse_spd(a0 + shift * (q @ q.T), rcond)
        xq = x @ q  # (I - q qᵀ) X (I - q qᵀ), in O(n² d)
        coarse_inv = x - xq @ q.T - q @ xq.T + q @ (q.T @ xq) @ q.T
        coarse_inv = 0.5 * (coarse_inv + coarse_inv.T)
    else:
        coarse_inv = np.zeros((0, 0))
    return jax.device_put(Schwarz(members.reshape(n_parts, m).astype(np.int32),
                                  mask.reshape(n_parts, m), slot.astype(np.int32),
                                  local_inv.astype(dtype), basis.astype(dtype),
                                  coarse_inv.astype(dtype)))


def apply_schwarz(data: Schwarz, r):
    """``M r = Σ_p R_pᵀ A_p⁺ R_p r + Φ A_0⁺ Φᵀ r`` for ``r`` of shape ``(N, d)``."""
    d = r.shape[-1]
    rc = _slots(data, r)
    z = _local_slots(data, rc)
    if data.basis.shape[-1]:
        z = z + _coarse_slots(data, rc)
    return z.reshape(-1, d)[data.slot].astype(r.dtype)


def _slots(data: Schwarz, r):
    """``r`` gathered into the parts' slots ``(P, m d)``, in the data's precision."""
    n_parts, m = data.members.shape
    rc = r[data.members].astype(data.local.dtype) * data.mask[..., None].astype(data.local.dtype)
    return rc.reshape(n_parts, -1)


def _local_slots(data: Schwarz, rc):
    return jnp.einsum("pij,pj->pi", data.local, rc)


def _coarse_slots(data: Schwarz, rc):
    n_parts = rc.shape[0]
    rcoarse = jnp.einsum("pjc,pj->pc", data.basis, rc).reshape(-1)
    zc = (data.coarse @ rcoarse).reshape(n_parts, -1)
    return jnp.einsum("pjc,pc->pj", data.basis, zc)


def apply_schwarz_balanced(data: tuple[BlockHessian, Schwarz], r):
    """The balancing (hybrid) two-level form, ``data = (H, schwarz)``:
    ``M r = Q r + (I - Q H) M_loc (I - H Q) r`` with ``Q = Φ A_0⁺ Φᵀ`` (two extra
    Hessian products per application; symmetric positive semi-definite)."""
    H, s = data
    d = r.shape[-1]

    def back(z):
        return z.reshape(-1, d)[s.slot].astype(r.dtype)

    qr = back(_coarse_slots(s, _slots(s, r)))
    w = back(_local_slots(s, _slots(s, r - hessian_matvec(H, qr))))
    return qr + w - back(_coarse_slots(s, _slots(s, hessian_matvec(H, w))))


def two_level(model: PairModel, blocks, pairs: Pairs, positions, *, per_cell: int = PER_CELL,
              tether: float = 0.0, rattlers=None):
    """A two-level additive preconditioner ``M = D⁻¹ + R A_c⁺ Rᵀ`` (on the host, numpy).

    ``D⁻¹`` is block-Jacobi; the coarse space is the rigid translation of each cell of a
    grid of the box holding about ``per_cell`` particles (``R`` spreads a coarse vector over
    each cell's particles), and ``A_c = Rᵀ H R`` is assembled from the pair stiffness
    blocks and pseudo-inverted. The soft, long-wavelength modes of a packing that limit CG
    are what the coarse space captures.

    Returns:
      (cell index (n,), A_c⁺ (nc d, nc d)) as jax arrays (the block-Jacobi part is
      computed with the solve).
    """
    n, d = model.n, model.dim
    y = np.asarray(positions)
    if model.periodic and np.ndim(model.box) == 2:  # fractional coordinates of the cell
        y = wrap_positions(y, model.box) @ np.linalg.inv(model.box).T
        lo, box = np.zeros(d), np.ones(d)
    elif model.periodic:
        box = np.asarray(model.box)
        lo = np.zeros(d)
    else:
        lo, box = y.min(axis=0), np.ptp(y, axis=0) + 1e-9
    g = max(1, int(round((n / per_cell) ** (1.0 / d))))
    cell = np.clip(np.floor((y - lo) / box * g).astype(int), 0, g - 1)
    cid = np.ravel_multi_index(tuple(cell.T), (g,) * d)
    nc = g ** d  # empty cells too: the shapes depend on N and d only
    i, j = np.asarray(pairs.i), np.asarray(pairs.j)
    keep = (i < n) & (j < n)
    k = np.asarray(blocks)[keep]
    ci, cj = cid[i[keep]], cid[j[keep]]
    coarse = np.zeros((nc, nc, d, d))
    np.add.at(coarse, (ci, ci), k)
    np.add.at(coarse, (cj, cj), k)
    np.add.at(coarse, (ci, cj), -k)
    np.add.at(coarse, (cj, ci), -k)
    if rattlers is not None and tether > 0:  # the tethered rattler coordinates
        for c in cid[np.asarray(rattlers)]:
            coarse[c, c] += tether * np.eye(d)
    coarse = coarse.transpose(0, 2, 1, 3).reshape(nc * d, nc * d)
    # pseudo-inverse with a cutoff on the scale of the fine Hessian: the rigid translation
    # of every cell together is a (round-off) zero mode of the coarse matrix
    fine = np.zeros((n, d))
    np.add.at(fine, i[keep], np.einsum("kaa->ka", k))
    np.add.at(fine, j[keep], np.einsum("kaa->ka", k))
    cutoff = RCOND * max(float(np.abs(fine).max()) if fine.size else 0.0, float(tether), 1e-300)
    w, v = np.linalg.eigh(0.5 * (coarse + coarse.T))
    inv_w = np.where(np.abs(w) > cutoff, 1.0 / np.where(np.abs(w) > cutoff, w, 1.0), 0.0)
    coarse_inv = (v * inv_w) @ v.T
    return jnp.asarray(cid, jnp.int32), jnp.asarray(coarse_inv)
