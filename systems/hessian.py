"""A packing's Hessian as a block-sparse operator (padded block rows, "ELL").

The Hessian of a pair energy at a minimum is block-sparse (one d×d block per interacting
pair and per particle), symmetric positive semi-definite, and in a periodic box its null
space is the d rigid translations (once rattlers are removed). Everything here is split in
two so that one compiled solve serves every packing of equal shapes:

* host-side builders (numpy; their cost is paid once per packing, on the host), returning
  pytrees of arrays whose *shapes* depend only on N, d and a few capacity buckets;
* pure-JAX apply functions taking those pytrees as **arguments** (nothing is closed over).

Usage (``i, j`` a half pair list, ``K`` the pair stiffness blocks of
:meth:`~systems.potentials.PairModel.pair_stiffness`, ``y`` the positions, ``box`` the
periodic box)::

    H = block_hessian(i, j, K, n)                       # BlockHessian (ELL form)
    P = build_schwarz(H, y, box)                        # systems.preconditioners

    @jax.jit
    def solve(H, P, b, basis):
        return sensitivity.solve_cg(lambda v: hessian_matvec(H, v), b,
                                    M=lambda r: apply_schwarz(P, r), nullspace=basis,
                                    tol=1e-10, on_failure="ignore", full_output=True)

Public names:

* :class:`BlockHessian` ``(idx (N, K) int32, rows (N, d, K d))``, padded block rows
  ("ELL"): ``(H v)[n] = Σ_k B[n, k] @ v[idx[n, k]]`` with the blocks ``B (N, K, d, d)``
  stored as ``rows[n, a, k d + c] = B[n, k, a, c]`` (:func:`ell_blocks` gives ``B``);
  entry 0 of every row is the particle itself (its diagonal block); padding points at the
  row itself with a zero block. The product is a gather and a batched matrix-vector
  product, no scatter (slow on XLA:CPU).
* :func:`ell_pattern` (host, integers) then :func:`assemble_block_hessian` (pure JAX), or
  both at once: :func:`block_hessian`; :func:`hessian_matvec`; :func:`scale_blocks` (a
  d×d block per particle times a vector).
* Buckets: :func:`ell_capacity` (rows rounded up to a multiple of ``ELL_STEP``). Two
  packings with the same N and the same bucketed row capacity give the same shapes, so one
  compiled solve.

Rattlers tethered in the linear system (a diagonal ``k I`` on their rows, no pairs): pass
the tether as ``block_hessian(..., diagonal=)``. The preconditioners built on this
operator (block Jacobi, the block scaling folded into it, two-level Schwarz) are in
:mod:`systems.preconditioners`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ELL_STEP",
    "BlockHessian",
    "ell_capacity",
    "EllPattern",
    "ell_pattern",
    "assemble_block_hessian",
    "block_hessian",
    "hessian_matvec",
    "hessian_matmat",
    "ell_blocks",
    "scale_blocks",
]

#: Row capacities of :class:`BlockHessian` are rounded up to a multiple of this.
ELL_STEP = 4

# ---------------------------------------------------------------------------------------
# The block-sparse Hessian.


class BlockHessian(NamedTuple):
    """Padded block rows: ``(H v)[n] = Σ_k B[n, k] @ v[idx[n, k]]``.

    The blocks ``B (N, K, d, d)`` are stored row-major per particle as
    ``rows[n, a, k d + c] = B[n, k, a, c]`` (``(N, d, K d)``): the product is then one
    gather and one batched matrix-vector product, 1.6x faster on XLA:CPU than the
    ``(N, K, d, d)`` layout (whose transpose XLA does not hoist out of a solver loop).
    :func:`ell_blocks` gives ``B``.
    """

    idx: jax.Array   # (N, K) int32; column 0 = n itself, padding = n with a zero block
    rows: jax.Array  # (N, d, K d) float64


def ell_blocks(H: BlockHessian) -> np.ndarray:
    """The blocks ``B (N, K, d, d)`` of ``H`` (host)."""
    rows = np.asarray(H.rows)
    n, d, kd = rows.shape
    return rows.reshape(n, d, kd // d, d).transpose(0, 2, 1, 3)


def dense_hessian(H: BlockHessian) -> np.ndarray:
    """``H`` as a dense ``(N d, N d)`` matrix on the host (small packings: diagnostics)."""
    blocks = ell_blocks(H)
    n, k, d, _ = blocks.shape
    dense = np.zeros((n, n, d, d))
    np.add.at(dense, (np.repeat(np.arange(n), k), np.asarray(H.idx).reshape(-1)),
              blocks.reshape(n * k, d, d))  # padding adds a zero block on the diagonal
    return dense.transpose(0, 2, 1, 3).reshape(n * d, n * d)


def ell_capacity(k: int, step: int = ELL_STEP) -> int:
    """The bucketed row capacity for rows of at most ``k`` entries (diagonal included)."""
    return max(step, -(-int(k) // step) * step)


class EllPattern(NamedTuple):
    """Where the blocks of a half pair list go in the ELL layout (:func:`ell_pattern`)."""

    idx: np.ndarray     # (N, K) int32: the column particle of every slot
    slot_i: np.ndarray  # (P,) int32: the slot of pair p in row i[p] (0 for ignored pairs)
    slot_j: np.ndarray  # (P,) int32: the slot of pair p in row j[p]


def ell_pattern(i, j, n: int, capacity: int | None = None,
                step: int = ELL_STEP) -> EllPattern:
    """The ELL sparsity pattern of a half pair list (host, integers only).

    Args:
      i, j: ``(P,)`` particle indices; a pair with an index ``>= n`` (padding) or with
        ``i == j`` is ignored (slot 0; :func:`assemble_block_hessian` drops it); a pair
        listed twice gets the same slots (its blocks add up).
      n: number of particles (rows).
      capacity: row capacity ``K`` (entries per row, diagonal included); default the
        largest row rounded up by :func:`ell_capacity`. Too small raises ValueError.
      step: the rounding of the default capacity.
    """
    i = np.asarray(i).astype(np.int64).ravel()
    j = np.asarray(j).astype(np.int64).ravel()
    keep = (i < n) & (j < n) & (i >= 0) & (j >= 0) & (i != j)
    real = np.flatnonzero(keep)
    rows = np.concatenate([i[real], j[real]])
    cols = np.concatenate([j[real], i[real]])
    key = rows * n + cols
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    first = np.ones(len(key), bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    unique = np.cumsum(first) - 1  # the distinct (row, col) of every sorted entry
    ukey = sorted_key[first]
    urows, ucols = ukey // n, ukey % n
    counts = np.bincount(urows, minlength=n)
    kmax = 1 + (int(counts.max()) if counts.size else 0)
    if capacity is None:
        capacity = ell_capacity(kmax, step)
    elif capacity < kmax:
        raise ValueError(f"block_hessian: capacity {capacity} < {kmax} entries in the "
                         "fullest row (diagonal included)")
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    uslot = 1 + np.arange(len(ukey)) - start[urows]
    idx = np.repeat(np.arange(n, dtype=np.int32)[:, None], capacity, axis=1)
    idx[urows, uslot] = ucols
    slot = np.empty(len(key), np.int64)
    slot[order] = uslot[unique]
    slot_i = np.zeros(len(i), np.int32)
    slot_j = np.zeros(len(i), np.int32)
    slot_i[real] = slot[:len(real)]
    slot_j[real] = slot[len(real):]
    return EllPattern(idx, slot_i, slot_j)


def assemble_block_hessian(pattern: EllPattern, i, j, K_pairs, diagonal=None) -> BlockHessian:
    """The ELL Hessian of pair stiffness blocks on a pattern (pure JAX: jit it).

    Every pair adds ``K`` to the diagonal blocks of ``i`` and ``j`` and ``-K`` to the
    off-diagonal blocks ``(i, j)`` and ``(j, i)`` (a pair with an index ``>= N``, e.g.
    padding, is dropped; give ignored pairs a zero block, or an index ``>= N``).
    ``diagonal``: optional ``(N, d, d)`` blocks added to the diagonal (e.g. the tether
    ``k I`` of rattler coordinates).
    """
    idx = jnp.asarray(pattern.idx)
    n, cap = idx.shape
    K_pairs = jnp.asarray(K_pairs)
    d = K_pairs.shape[-1]
    K_pairs = 0.5 * (K_pairs + jnp.swapaxes(K_pairs, -1, -2))
    i = jnp.where(jnp.asarray(pattern.slot_i) > 0, jnp.asarray(i), n)  # ignored: row N
    j = jnp.where(jnp.asarray(pattern.slot_j) > 0, jnp.asarray(j), n)
    blocks = jnp.zeros((n + 1, cap, d, d), K_pairs.dtype)
    blocks = blocks.at[i, pattern.slot_i].add(-K_pairs, mode="drop")
    blocks = blocks.at[j, pattern.slot_j].add(-K_pairs, mode="drop")[:n]
    # a pair Hessian's diagonal block is minus the sum of its row's off-diagonal blocks
    diag = -jnp.sum(blocks[:, 1:], axis=1)
    if diagonal is not None:
        diag = diag + jnp.asarray(diagonal, K_pairs.dtype)
    blocks = blocks.at[:, 0].set(diag)
    return BlockHessian(idx, jnp.swapaxes(blocks, 1, 2).reshape(n, d, cap * d))


def block_hessian(i, j, K_pairs, n: int, capacity: int | None = None,
                  step: int = ELL_STEP, diagonal=None) -> BlockHessian:
    """The ELL Hessian from a half pair list and its pair stiffness blocks:
    :func:`ell_pattern` then :func:`assemble_block_hessian`.

    Every pair adds ``K`` to the diagonal blocks of ``i`` and ``j`` and ``-K`` to the
    off-diagonal blocks ``(i, j)`` and ``(j, i)``; pairs listed twice are merged.

    Args:
      i, j: ``(P,)`` particle indices; a pair with an index ``>= n`` (padding) or with
        ``i == j`` is ignored.
      K_pairs: ``(P, d, d)`` symmetric stiffness blocks.
      n: number of particles (rows).
      capacity: row capacity ``K`` (entries per row, diagonal included); default the
        largest row rounded up by :func:`ell_capacity`. Too small raises ValueError.
      step: the rounding of the default capacity.
      diagonal: optional ``(n, d, d)`` blocks added to the diagonal (e.g. the tether
        ``k I`` of rattler coordinates).

    Returns:
      :class:`BlockHessian` of jax arrays.
    """
    pattern = ell_pattern(i, j, n, capacity, step)
    i = np.asarray(i).astype(np.int32).ravel()
    j = np.asarray(j).astype(np.int32).ravel()
    return _assemble(pattern, i, j, np.asarray(K_pairs, np.float64),
                     None if diagonal is None else np.asarray(diagonal, np.float64))


_assemble = jax.jit(assemble_block_hessian)


def hessian_matvec(H: BlockHessian, v):
    """``H v`` for ``v`` of shape ``(N, d)``: one row gather and one batched
    matrix-vector product (gathers only)."""
    n = v.shape[0]
    return jnp.einsum("nak,nk->na", H.rows, v[H.idx].reshape(n, -1))


def hessian_matmat(H: BlockHessian, v):
    """``H v_p`` for m vectors ``v`` ``(m, N, d)``: one row gather of all m, so each block
    entry is read once for the m vectors. In 2D the block products are written out term by
    term (one fused pass over the outputs); in 3D, where a row holds three times the
    entries, as one batched matrix product with the m vectors side by side (each measured
    the faster of the two in its dimension inside block CG: benchmarks/README.md, "Elastic
    tensor")."""
    m, n, d = v.shape
    if d == 3:
        gathered = jnp.moveaxis(v, 0, -1)[H.idx].reshape(n, -1, m)  # (N, K d, m)
        return jnp.moveaxis(jnp.einsum("nak,nkm->nam", H.rows, gathered), -1, 0)
    gathered = v[:, H.idx].reshape(m, n, -1)  # (m, N, K d)
    return sum(H.rows[None, :, :, k] * gathered[:, :, None, k]
               for k in range(gathered.shape[-1]))


def scale_blocks(blocks, v):
    """``blocks[n] @ v[n]`` for ``(N, d, d)`` blocks (block Jacobi, ``S v``, ``S⁻¹ v``),
    written out per component; ``v`` ``(..., N, d)`` may have leading batch axes."""
    d = v.shape[-1]
    return jnp.stack([sum(blocks[:, a, c] * v[..., c] for c in range(d)) for a in range(d)],
                     axis=-1)
