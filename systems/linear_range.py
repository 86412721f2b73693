"""Where the linear response stops holding: the first contact to open or close along θ.

x*(θ) is smooth only while the contact network stays the same (a harmonic contact's
stiffness jumps when it opens; a new contact adds one). Each pair's gap
``g_k = r_k - reach_k`` (``reach = σ_ij`` for soft spheres, ``r_cutoff σ_ij`` for
Lennard-Jones / Morse; a contact has ``g < 0``) moves linearly with θ along the response,
``g_k(θ0 + Δ) ≈ g_k + Δ dg_k/dθ`` with ``dg_k/dθ`` through x* (the pair vector's affine and
non-affine parts, and σ's own change). Pair k crosses at ``Δ_k = -g_k / (dg_k/dθ)``; the
predicted validity range is

    ``Δθ₊ = min {Δ_k > 0}``,  ``Δθ₋ = max {Δ_k < 0}``,

with the pair that sets each and whether that contact *opens* or *closes*. Pairs are those
within :data:`REACH` times the interaction range at x* (contacts and near-contacts); pairs
with a rattler are left out (a rattler's response is undefined, and it follows freely).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["REACH", "linear_range"]

#: Pairs within this multiple of the interaction range at x* are followed.
REACH = 1.5

REACH_TEXT = (f"pairs within {REACH:g} x the interaction range at x* (rattlers' pairs left "
              "out); gap = r - sigma_ij (soft spheres) or r - r_cutoff sigma_ij; linear in theta")


def _gaps(pk, y, params, pairs):
    """Gap ``r - reach`` of every pair (P,)."""
    model = pk.model
    _, r, sigma, _ = model.pair_geometry(y, params, pairs)
    reach = sigma if model.spec.kind == "soft_sphere" else model.spec.r_cutoff * sigma
    return r - reach


def _gaps_along(cfg, *args):
    from .elasticity import _along

    return _along(cfg, *args, fn=_gaps)


def _crossings(g: np.ndarray, dg: np.ndarray, i: np.ndarray, j: np.ndarray) -> dict:
    """Δθ₊, Δθ₋ and their pairs from the gaps and their slopes (one θ component)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(dg != 0, -g / dg, np.nan)
    delta = np.where(g != 0, delta, np.nan)
    out = {}
    for side, mask, pick in (("plus", delta > 0, np.argmin), ("minus", delta < 0, np.argmax)):
        if not np.any(mask):
            out[side] = (math.inf if side == "plus" else -math.inf, (-1, -1), "none")
            continue
        candidates = np.flatnonzero(mask)
        k = candidates[pick(delta[candidates])]
        out[side] = (float(delta[k]), (int(i[k]), int(j[k])),
                     "opens" if g[k] < 0 else "closes")
    return out


def linear_range(solver, pspecs, responses) -> dict:
    """For every θ, the predicted Δθ₊ > 0 and Δθ₋ < 0 at which the first contact opens or a
    new one closes (see the module docstring).

    Args:
      solver: the :class:`~systems.response.ResponseSolver` of the packing.
      pspecs: the θs; responses: ``{name: {"dx_dtheta": ...}}`` as solved.

    Returns:
      ``{name: {...}}``: for a scalar θ, ``linear_range_plus`` / ``_minus`` (θ units; ±inf
      when no pair crosses), ``linear_range_plus_pair`` / ``_minus_pair`` ``[i, j]``,
      ``linear_range_plus_event`` / ``_minus_event`` (``opens`` / ``closes``) and
      ``linear_range_reach`` (what was followed); for a θ with P components, (P,) and
      (P, 2) arrays of the same.
    """
    from .elasticity import theta_groups
    from .contacts import padded_pairs, pair_capacity

    model = solver.model
    n = model.n
    params = solver.params
    pairs = model.interacting_pairs(np.asarray(solver.y), params, margin=REACH)
    i, j = np.asarray(pairs.i), np.asarray(pairs.j)
    keep = ~solver.rattlers[i] & ~solver.rattlers[j]
    i, j = i[keep], j[keep]
    padded = padded_pairs(i, j, n, pair_capacity(len(i), n, "gaps"))
    out = {}
    for names, vector, tags, thetas0, members, dy, tangents in theta_groups(solver, pspecs,
                                                                         responses):
        cfg = solver._config(tags=tags)
        (g, dg), _, _ = solver._run(_gaps_along, cfg, solver.data, params, thetas0, members,
                                    dy, tangents, padded)
        g, dg = g[: len(i)], dg[:, : len(i)]
        found = [_crossings(g, dg_k, i, j) for dg_k in dg]
        if vector:
            entry = {}
            for side in ("plus", "minus"):
                entry[f"linear_range_{side}"] = np.array([f[side][0] for f in found])
                entry[f"linear_range_{side}_pair"] = np.array([f[side][1] for f in found])
                entry[f"linear_range_{side}_event"] = [f[side][2] for f in found]
            entry["linear_range_reach"] = REACH_TEXT
            out[names[0]] = entry
            continue
        for name, f in zip(names, found):
            entry = {}
            for side in ("plus", "minus"):
                delta, pair, event = f[side]
                entry[f"linear_range_{side}"] = delta
                entry[f"linear_range_{side}_pair"] = list(pair)
                entry[f"linear_range_{side}_event"] = event
            entry["linear_range_reach"] = REACH_TEXT
            out[name] = entry
    return out
