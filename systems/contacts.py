"""Contacts, rattlers and the zero modes of a relaxed packing, and the pair lists' buckets.

:func:`contact_analysis` finds the contacts (a soft-sphere contact carries a force above ten
times the minimization's residual force), the rattlers (particles with fewer than ``d + 1``
contacts, peeled recursively) and the closest gaps and overlaps of the backbone.
:func:`rigid_motions` and :func:`nullspace_basis` are the Hessian's known zero modes;
:func:`gauge_fix` removes them from a response.
"""

from __future__ import annotations

import math
import threading

import jax
import jax.numpy as jnp
import numpy as np

from . import _compile
from .hessian import ELL_STEP, ell_capacity
from .linear_range import REACH
from .potentials import INTERACTING_MARGIN, PairModel, Pairs, PotentialParams

__all__ = ["clear_capacities", "contact_analysis", "find_rattlers", "gauge_fix",
           "nullspace_basis", "pair_capacity", "padded_pairs", "rigid_motions", "row_capacity"]


# Pair lists are padded (index N, weight 0) to a capacity bucket so that packings with the
# same N usually share array shapes, hence compiled functions (issue: a sweep in one process
# compiles once). The buckets used are remembered per (N, list) and reused when they fit.
_CAPACITIES: dict[tuple, list[int]] = {}
_LOCK = threading.Lock()  # the tasks of a sweep are differentiated in threads too
#: The spare fraction of a new pair-list capacity (:func:`pair_capacity`).
HEAD_ROOM = 1 / 16


def pair_capacity(count: int, n: int, tag: str = "pairs") -> int:
    """A padded length for a list of ``count`` pairs over ``n`` particles.

    Multiples of ``max(16, n/8)``; a capacity already used for this ``(n, tag)`` is reused
    when it holds ``count`` with less than ~25% padding, so a sweep over packings of one N
    keeps its shapes. A new capacity has :data:`HEAD_ROOM` to spare: the counts of packings
    with one N spread by a few per cent, and one just above the first packing's bucket would
    compile anew (``benchmarks/README.md``, the sweep).
    """
    step = max(16, -(-n // 8))
    with _LOCK:
        used = _CAPACITIES.setdefault((n, tag), [])
        for c in sorted(used):
            if count <= c <= 1.25 * count + step:
                return c
        c = max(step, -(-(count + int(count * HEAD_ROOM)) // step) * step)
        used.append(c)
        return c


def row_capacity(entries: int, n: int) -> int:
    """Entries per block row of the Hessian (:func:`~systems.hessian.block_hessian`),
    bucketed like :func:`pair_capacity`: a capacity already used for ``n`` particles is
    reused when it holds ``entries`` with at most one bucket to spare."""
    with _LOCK:
        used = _CAPACITIES.setdefault((n, "hessian rows"), [])
        for c in sorted(used):
            if entries <= c <= entries + ELL_STEP:
                return c
        c = ell_capacity(entries)
        used.append(c)
        return c


def padded_pairs(i, j, n: int, capacity: int) -> Pairs:
    """The half list ``(i, j)`` padded to ``capacity`` with index ``n`` and weight 0."""
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    pad = capacity - len(i)
    if pad < 0:
        raise ValueError(f"{len(i)} pairs do not fit a capacity of {capacity}")
    weight = np.concatenate([np.ones(len(i)), np.zeros(pad)])
    return Pairs(np.concatenate([i, np.full(pad, n)]).astype(np.int32),
                 np.concatenate([j, np.full(pad, n)]).astype(np.int32), weight)


def _pair_geometry(cfg, model: PairModel, y, params: PotentialParams, pairs: Pairs):
    _, r, sigma, valid = model.pair_geometry(y, params, pairs)
    n = model.n
    i = jnp.minimum(pairs.i, n - 1)
    j = jnp.minimum(pairs.j, n - 1)
    si, sj = model.species[i], model.species[j]
    eps = params.epsilon[si, sj]
    dv = jax.vmap(jax.grad(lambda rr, s, e, a, b: model.pair_law(rr, s, e, a, b)))(
        r, sigma, eps, si, sj)
    return r, sigma, jnp.abs(dv), valid


def _pair_table(model: PairModel, y, params: PotentialParams, pairs: Pairs):
    """Host arrays per pair: i, j, r, σ, |dV/dr| (real units)."""
    n = model.n
    params = jax.tree.map(lambda a: _compile.device_array(a, np.float64), params)
    i, j = np.asarray(pairs.i), np.asarray(pairs.j)
    keep = (i < n) & (j < n)
    i, j = i[keep], j[keep]
    padded = padded_pairs(i, j, n, pair_capacity(len(i), n, "table"))
    y = _compile.device_array(y, np.float64)
    exe, _ = _compile.compiled("response", _pair_geometry, None, model, y, params, padded)
    r, sigma, force, valid = (np.asarray(a)[:len(i)] for a in exe(model, y, params, padded))
    return i[valid], j[valid], r[valid], sigma[valid], force[valid]


def _contacts(model: PairModel, table, force_tol: float) -> np.ndarray:
    """Which pairs of the table are contacts (soft sphere: overlapping and carrying a force
    above ``force_tol``; Lennard-Jones / Morse: within the cutoff)."""
    i, j, r, sigma, force = table
    if model.spec.kind == "soft_sphere":
        return (r < sigma) & (force > force_tol)
    return r < model.spec.r_cutoff * sigma


def find_rattlers(n: int, i: np.ndarray, j: np.ndarray, contact: np.ndarray,
                  min_contacts: int) -> np.ndarray:
    """Particles with fewer than ``min_contacts`` contacts, removed iteratively.

    Removing a rattler removes its contacts, which can make a neighbour a rattler, so the
    count is repeated until nothing changes.

    Args:
      n: number of particles.
      i, j: pair indices; contact: bool per pair.
      min_contacts: usually ``d + 1``.

    Returns:
      ``(n,)`` bool, True for rattlers.
    """
    i = np.asarray(i)[contact]
    j = np.asarray(j)[contact]
    rattler = np.zeros(n, bool)
    while True:
        live = ~rattler[i] & ~rattler[j]
        z = np.bincount(i[live], minlength=n) + np.bincount(j[live], minlength=n)
        new = ~rattler & (z < min_contacts)
        if not new.any():
            return rattler
        rattler |= new


def rigid_motions(positions, active, periodic: bool, xp=np):
    """``(k, N, d)``: the rigid motions of the ``active`` particles (others do not move).

    ``d`` translations and, in free space, the ``d(d-1)/2`` rotations about the active
    particles' centroid. ``xp`` is ``numpy`` (on the host) or ``jax.numpy`` (traced). Not
    orthonormal (the engine orthonormalizes).
    """
    n, d = positions.shape
    a = xp.asarray(active, dtype=positions.dtype)[:, None]
    unit = xp.eye(d, dtype=positions.dtype)
    vectors = [a * unit[c] for c in range(d)]
    if not periodic:
        centre = xp.sum(positions * a, axis=0) / xp.maximum(xp.sum(a), 1.0)
        centred = (positions - centre) * a
        for p in range(d):
            for q in range(p + 1, d):
                vectors.append(centred[:, p, None] * unit[q] - centred[:, q, None] * unit[p])
    return xp.stack(vectors)


def nullspace_basis(positions: np.ndarray, rattlers: np.ndarray, periodic: bool) -> np.ndarray:
    """Known zero modes of the rattler-masked Hessian, as a ``(k, N, d)`` array.

    The rigid motions of the non-rattlers (:func:`rigid_motions`) and every rattler
    coordinate (``d`` per rattler). Not orthonormal (the engine orthonormalizes).
    """
    positions = np.asarray(positions, np.float64)
    n, d = positions.shape
    vectors = list(rigid_motions(positions, ~rattlers, periodic))
    for p in np.flatnonzero(rattlers):
        for a in range(d):
            e = np.zeros((n, d))
            e[p, a] = 1.0
            vectors.append(e)
    return np.stack(vectors)


def gauge_fix(dx: np.ndarray, rattlers: np.ndarray, positions: np.ndarray | None = None,
              periodic: bool = True) -> np.ndarray:
    """Fix the gauge of a response field ``(..., N, d)``: rattler rows NaN, and the rigid
    motions of the non-rattlers projected out (the mean response is zero; in free space
    also the rigid rotation about the centroid)."""
    dx = np.array(dx, dtype=np.float64, copy=True)
    active = ~np.asarray(rattlers)
    sub = dx[..., active, :]
    sub = sub - sub.mean(axis=-2, keepdims=True)
    if not periodic and positions is not None:
        centred = positions[active] - positions[active].mean(axis=0)
        d = positions.shape[1]
        rots = []
        for a in range(d):
            for b in range(a + 1, d):
                rot = np.zeros_like(centred)
                rot[:, a] = -centred[:, b]
                rot[:, b] = centred[:, a]
                rots.append(rot.reshape(-1))
        if rots:
            q, _ = np.linalg.qr(np.stack(rots, axis=1))
            flat = sub.reshape(sub.shape[:-2] + (-1,))
            flat = flat - (flat @ q) @ q.T
            sub = flat.reshape(sub.shape)
    dx[..., active, :] = sub
    dx[..., ~active, :] = np.nan
    return dx


def contact_analysis(model: PairModel, y, params: PotentialParams, *, max_force: float,
                     min_contacts: int | None = None) -> dict:
    """Contacts, rattlers and the smallest gap / overlap of the backbone.

    A soft-sphere contact must carry a force above ``10 × max_force`` (the residual force
    of the minimization): a grazing touch that carries no more force than the residual
    cannot be told from no contact.

    Returns:
      dict with ``rattlers`` (N,) bool, ``pairs`` (the interacting half list), ``n_contacts``,
      ``mean_contacts`` (of the backbone), ``contact_gap_min``, ``contact_overlap_min``
      (relative to σ_ij for soft spheres, to the cutoff distance otherwise; NaN if none).
    """
    n, d = model.n, model.dim
    min_contacts = d + 1 if min_contacts is None else int(min_contacts)
    # one search and one table over the wide list (the near contacts within REACH × the
    # range, for the gaps, as the linear range follows them); the interacting pairs are
    # those within INTERACTING_MARGIN × the interaction range
    wide = _pair_table(model, y, params, model.interacting_pairs(y, params, margin=REACH))
    near = wide[2] < INTERACTING_MARGIN * model.interaction_range(params)
    table = tuple(a[near] for a in wide)
    pairs = Pairs.from_arrays(table[0], table[1])
    force_tol = 10.0 * max(float(max_force), 1e-300)
    contact = _contacts(model, table, force_tol)
    rattlers = find_rattlers(n, table[0], table[1], contact, min_contacts)
    per_particle = np.bincount(np.concatenate([table[0][contact], table[1][contact]]),
                               minlength=n)
    i, j, r, sigma, _ = wide
    backbone = ~rattlers[i] & ~rattlers[j]
    reach = sigma if model.spec.kind == "soft_sphere" else model.spec.r_cutoff * sigma
    rel = r / reach - 1.0
    gaps = rel[backbone & (rel >= 0)]
    overlaps = -rel[backbone & (rel < 0)]
    live = contact & ~rattlers[table[0]] & ~rattlers[table[1]]
    n_backbone = int((~rattlers).sum())
    return {
        "rattlers": rattlers,
        "pairs": pairs,
        "n_contacts": int(live.sum()),
        "mean_contacts": float(2 * live.sum() / max(n_backbone, 1)),
        "contact_gap_min": float(gaps.min()) if gaps.size else math.nan,
        "contact_overlap_min": float(overlaps.min()) if overlaps.size else math.nan,
        "contact_force_tol": force_tol,
        "min_contacts": min_contacts,
        "max_contacts_per_particle": int(per_particle.max()) if n else 0,
    }




def clear_capacities() -> None:
    """Forget the pair-list capacity buckets seen (with the compile cache)."""
    with _LOCK:
        _CAPACITIES.clear()
