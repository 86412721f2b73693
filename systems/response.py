"""The linear response of a packing's energy minimum, ∂x*/∂θ, by implicit differentiation.

At a minimum the forces vanish: ``F(x*, θ) = ∇ₓE(x*, θ) = 0``. That is the optimality
condition handed to :func:`sensitivity.custom_root`, whose linear solves (Hessian-vector
products of ``E``, matrix-free) give ``∂x*/∂θ``; nothing here writes the implicit function
theorem by hand. The decorated "solver" returns the already-relaxed positions: the
relaxation (:mod:`systems.relax`) is never differentiated.

Zero modes. A periodic packing's Hessian is singular: the ``d`` rigid translations, and
``d`` more per *rattler* (a particle held by fewer than ``d + 1`` contacts, found by
iterative removal; O'Hern et al. 2003). Rattlers carry no force at the minimum, so they
are removed: the unknowns of the linear system are the backbone (non-rattler) coordinates
and the pair terms that involve a rattler are dropped. What remains of the null space is
the ``d`` translations of the backbone (plus its rigid rotations in free space), handed to
the engine's solver as ``nullspace=``: it solves on the orthogonal complement and returns
the minimum-norm answer. That *is* the gauge: the mean response of the backbone is zero;
rattler rows are reported as NaN with a mask. The diagnostics count the zero modes of the
whole (rattler-masked) Hessian against ``d (1 + rattlers)``.

Cost. Every Hessian-vector product is taken at ``(x*, θ0)``, so the pair stiffness blocks
are computed once and each product is a gather, a d×d block product and a scatter
(:meth:`~systems.potentials.PairModel.gradient_fn`); CG is preconditioned with the inverse
d×d diagonal blocks of the Hessian (``block_jacobi``, default), their diagonal
(``jacobi``), nothing, or ``two_level`` (block-Jacobi plus a coarse correction on the
translations of grid cells of ~16 particles: fewer iterations, dearer ones; it pays from
N ≈ 4096). The default ``tol = 1e-10`` matches the accuracy of x* at ``ftol = 1e-12``:
measured at N = 1024, the derivative changes by 2e-10 (relative) between x* relaxed to
1e-12 and to 1e-14, while a solve to ``tol`` errs by about 5 ``tol``; a looser tolerance
would throw away accuracy that x* has.

θ kinds (tangents of :class:`~systems.potentials.PotentialParams`):

- ``diameter`` (species s, scalar): every diameter of species s moves by the same amount;
  θ is the species' mean diameter. One forward-mode solve.
- ``diameters`` (vector, P = N): the full ``[N][N][d]`` Jacobian. Forward mode needs N
  solves, reverse mode N·d, so forward; where the Hessian fits (``n_dof ≤ dense_max_dof``)
  one dense factorization serves all N right-hand sides (``vmap`` of the dense solve keeps
  the factorization outside the batch), else chunks of batched iterative solves.
- ``epsilon`` (scalar): with species s, ε of every pair involving s moves by the same
  amount (θ = ε_ss); without, a uniform ε (θ = ε) or a multiplier of the ε matrix (θ = 1).
  A single uniform ε scales the energy, so ∂x*/∂ε = 0 exactly; a species' ε does not.
- ``box`` (scalar): θ = λ scales every box edge at fixed fractional positions (θ = 1 is the
  input box); ``x*(λ) = λ y*(λ)`` so ∂x*/∂λ = y* + ∂y*/∂λ (affine + non-affine parts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import InputError
from .potentials import PairModel, Pairs, PotentialParams, PotentialSpec, resolve_potential

__all__ = [
    "SENSITIVITY_DEFAULTS",
    "PARAMETER_KINDS",
    "ParameterSpec",
    "resolve_parameters",
    "resolve_sensitivity",
    "find_rattlers",
    "contact_analysis",
    "nullspace_basis",
    "gauge_fix",
    "theta_map",
    "ResponseSolver",
    "response",
]

PARAMETER_KINDS = ("diameter", "diameters", "epsilon", "box")

SENSITIVITY_DEFAULTS: dict[str, Any] = {
    "solver": "cg",
    "tol": 1e-10,
    "maxiter": None,
    "rattler_contacts": None,
    "audit": False,
    "fd_step": 1e-5,
    "preconditioner": "block_jacobi",
    "dense_max_dof": 4096,
    "lanczos_steps": 40,
}

SOLVERS = ("cg", "minres", "gmres", "bicgstab", "normal_cg", "dense", "lstsq", "lu", "cholesky")
_TAKES_PRECONDITIONER = ("cg", "minres", "gmres", "bicgstab")
_DENSE = ("dense", "lstsq", "lu", "cholesky")

#: Diagnostics by dense eigendecomposition up to this many degrees of freedom.
DENSE_EIGEN_MAX_DOF = 1024


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    """One θ: ``name`` (dataset name), ``kind`` (see :data:`PARAMETER_KINDS`), ``species``."""

    name: str
    kind: str
    species: int | None = None


def resolve_parameters(parameter_cfgs, system, spec: PotentialSpec,
                       where: str = "config") -> list[ParameterSpec]:
    """Validate the ``parameters`` config list against the system and potential."""
    if parameter_cfgs is None:
        parameter_cfgs = [{"name": "small_diameter", "kind": "diameter", "species": 0}]
    out: list[ParameterSpec] = []
    names = set()
    for k, cfg in enumerate(parameter_cfgs):
        key = f"{where}: parameters[{k}]"
        kind = cfg.get("kind")
        name = cfg.get("name")
        species = cfg.get("species")
        if kind not in PARAMETER_KINDS:
            raise InputError(
                f"{key}.kind must be one of {', '.join(PARAMETER_KINDS)}, got {kind!r}")
        if not isinstance(name, str) or not name or "/" in name:
            raise InputError(f"{key}.name must be a non-empty name without '/', got {name!r}")
        if name in names:
            raise InputError(f"{key}.name {name!r} is used twice; names must be unique")
        names.add(name)
        if species is not None:
            if not isinstance(species, (int, np.integer)) or isinstance(species, bool):
                raise InputError(f"{key}.species must be an integer or null, got {species!r}")
            if not 0 <= species < system.n_species or not np.any(system.species == species):
                present = sorted(set(np.asarray(system.species).tolist()))
                raise InputError(
                    f"{key}.species {species} has no particles; species present: {present}")
        if kind == "diameter" and species is None:
            raise InputError(f"{key}: kind 'diameter' needs species (the species whose "
                             "diameter is θ); use kind 'diameters' for every particle")
        if kind in ("diameters", "box") and species is not None:
            raise InputError(f"{key}: kind {kind!r} takes no species (set species: null)")
        if kind in ("diameter", "diameters") and spec.sigma is not None:
            raise InputError(f"{key}: kind {kind!r} has no effect when potential.sigma is "
                             "set (σ does not come from the diameters); set sigma to null")
        if kind == "box" and not system.periodic:
            raise InputError(f"{key}: kind 'box' needs a periodic box; this system has free "
                             "boundaries")
        out.append(ParameterSpec(name=name, kind=kind,
                                 species=None if species is None else int(species)))
    if not out:
        raise InputError(f"{where}: parameters is empty; list at least one θ")
    return out


def resolve_sensitivity(config: Mapping[str, Any] | None, where: str = "config") -> dict:
    """Defaults updated by the ``sensitivity`` config block, with checks."""
    merged = dict(SENSITIVITY_DEFAULTS)
    for key, value in (config or {}).items():
        if key not in merged:
            raise InputError(f"{where}: unknown key sensitivity.{key}; expected one of "
                             f"{', '.join(merged)}")
        if value is not None or key in ("maxiter", "rattler_contacts"):
            merged[key] = value
    if merged["solver"] not in SOLVERS:
        raise InputError(f"{where}: sensitivity.solver must be one of {', '.join(SOLVERS)}, "
                         f"got {merged['solver']!r}")
    if not float(merged["tol"]) > 0:
        raise InputError(f"{where}: sensitivity.tol must be > 0, got {merged['tol']}")
    if not float(merged["fd_step"]) > 0:
        raise InputError(f"{where}: sensitivity.fd_step must be > 0, got {merged['fd_step']}")
    if merged["preconditioner"] not in ("none", "jacobi", "block_jacobi", "two_level", None):
        raise InputError(f"{where}: sensitivity.preconditioner must be none, jacobi, "
                         f"block_jacobi or two_level, got {merged['preconditioner']!r}")
    return merged


# ---------------------------------------------------------------------------------------
# Contacts, rattlers, zero modes, gauge.


def _pair_table(model: PairModel, y, params: PotentialParams, pairs: Pairs):
    """Host arrays per pair: i, j, r, σ, |dV/dr| (real units)."""
    n = model.n
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)

    def geometry(y):
        _, r, sigma, valid = model.pair_geometry(y, params, pairs)
        i = jnp.minimum(pairs.i, n - 1)
        j = jnp.minimum(pairs.j, n - 1)
        si, sj = model.species[i], model.species[j]
        eps = params.epsilon[si, sj]
        dv = jax.vmap(jax.grad(lambda rr, s, e, a, b: model.pair_law(rr, s, e, a, b)))(
            r, sigma, eps, si, sj)
        return r, sigma, jnp.abs(dv), valid

    r, sigma, force, valid = jax.jit(geometry)(jnp.asarray(y))
    valid = np.asarray(valid)
    return (np.asarray(pairs.i)[valid], np.asarray(pairs.j)[valid], np.asarray(r)[valid],
            np.asarray(sigma)[valid], np.asarray(force)[valid])


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


def nullspace_basis(positions: np.ndarray, rattlers: np.ndarray, periodic: bool) -> np.ndarray:
    """Known zero modes of the rattler-masked Hessian, as a ``(k, N, d)`` array.

    ``d`` translations of the non-rattlers, the rigid rotations of the non-rattlers about
    their centroid in free space (``d(d-1)/2``), and every rattler coordinate (``d`` per
    rattler). Not orthonormal (the engine orthonormalizes).
    """
    n, d = positions.shape
    active = ~rattlers
    vectors = []
    for a in range(d):
        t = np.zeros((n, d))
        t[active, a] = 1.0
        vectors.append(t)
    if not periodic:
        centred = positions - positions[active].mean(axis=0)
        for a in range(d):
            for b in range(a + 1, d):
                rot = np.zeros((n, d))
                rot[active, a] = -centred[active, b]
                rot[active, b] = centred[active, a]
                vectors.append(rot)
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
    pairs = model.interacting_pairs(y, params, margin=1.02)
    wide = model.interacting_pairs(y, params, margin=1.5)
    force_tol = 10.0 * max(float(max_force), 1e-300)
    table = _pair_table(model, y, params, pairs)
    contact = _contacts(model, table, force_tol)
    rattlers = find_rattlers(n, table[0], table[1], contact, min_contacts)
    i, j, r, sigma, _ = _pair_table(model, y, params, wide)
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
    }


# ---------------------------------------------------------------------------------------
# θ → parameters.


def theta_apply(pspec: ParameterSpec, base: PotentialParams, species: np.ndarray):
    """``(theta0, apply)`` with ``apply(params, theta) -> PotentialParams``.

    ``apply(base, theta0) == base``; ``apply`` changes only what this θ controls, so
    several θs compose (``apply_2(apply_1(base, t1), t2)``) and are differentiated together.
    See the module docstring for what θ means for each kind.
    """
    species = np.asarray(species)
    kind = pspec.kind
    if kind == "diameter":
        member = jnp.asarray(species == pspec.species, jnp.float64)
        theta0 = jnp.asarray(float(np.asarray(base.diameters)[species == pspec.species].mean()))
        return theta0, lambda p, theta: p._replace(
            diameters=p.diameters + member * (theta - theta0))
    if kind == "diameters":
        return base.diameters, lambda p, theta: p._replace(diameters=theta)
    if kind == "epsilon":
        eps0 = np.asarray(base.epsilon)
        if pspec.species is not None:
            s = pspec.species
            member = np.zeros_like(eps0)
            member[s, :] = 1.0
            member[:, s] = 1.0
            member = jnp.asarray(member)
            theta0 = jnp.asarray(float(eps0[s, s]))
            return theta0, lambda p, theta: p._replace(
                epsilon=p.epsilon + member * (theta - theta0))
        if np.all(eps0 == eps0.flat[0]):
            theta0 = jnp.asarray(float(eps0.flat[0]))
        else:
            theta0 = jnp.asarray(1.0)
        return theta0, lambda p, theta: p._replace(epsilon=p.epsilon * (theta / theta0))
    if kind == "box":
        theta0 = jnp.asarray(base.scale, jnp.float64)
        return theta0, lambda p, theta: p._replace(scale=p.scale * (theta / theta0))
    raise ValueError(f"unknown parameter kind {kind!r}")


def theta_map(pspec: ParameterSpec, base: PotentialParams, species: np.ndarray):
    """``(theta0, fn)`` with ``fn(theta) -> PotentialParams`` and ``fn(theta0) == base``."""
    theta0, apply = theta_apply(pspec, base, species)
    return theta0, lambda theta: apply(base, theta)


def theta_meaning(pspec: ParameterSpec) -> str:
    return {
        "diameter": f"mean diameter of species {pspec.species} (all of them move together)",
        "diameters": "every particle's diameter (row p: dx*/dd_p)",
        "epsilon": ("energy scale of every pair involving species "
                    f"{pspec.species}" if pspec.species is not None
                    else "energy scale of every pair (value, or multiplier of the matrix)"),
        "box": "box edge scale λ at fixed fractional positions (1 = input box)",
    }[pspec.kind]


# ---------------------------------------------------------------------------------------
# Solve reports. The engine's ``record_solves`` keeps its recorders in thread-local storage,
# but XLA may run a ``jax.debug.callback`` on one of its worker threads (it does for all but
# the smallest packings here), so the reports are collected by this module instead.

_REPORT_LOCK = threading.Lock()
_REPORT_SINKS: list[list] = []


@contextlib.contextmanager
def _collect_reports():
    sink: list = []
    with _REPORT_LOCK:
        _REPORT_SINKS.append(sink)
    try:
        yield sink
    finally:
        with _REPORT_LOCK:
            _REPORT_SINKS.remove(sink)


def _report(info) -> None:
    info = jax.tree.map(np.asarray, info)
    with _REPORT_LOCK:
        for sink in _REPORT_SINKS:
            sink.append(info)


def _reporting(solve: Callable) -> Callable:
    """``solve(matvec, b)`` that also sends its LinearSolveInfo to :func:`_collect_reports`."""

    def solve_and_report(matvec, b):
        x, info = solve(matvec, b, full_output=True)
        jax.debug.callback(_report, info)
        return x

    return solve_and_report


# ---------------------------------------------------------------------------------------
# Linear-algebra helpers.


def block_jacobi(model: PairModel, blocks, pairs: Pairs, diagonal_only: bool = False):
    """The inverse of each particle's d×d Hessian block (identity where singular), from
    the pair stiffness blocks (:meth:`PairModel.pair_stiffness`)."""
    n, d = model.n, model.dim
    i = jnp.minimum(pairs.i, n - 1)
    j = jnp.minimum(pairs.j, n - 1)
    diag = jnp.zeros((n, d, d)).at[i].add(blocks).at[j].add(blocks)
    if diagonal_only:
        diag = diag * jnp.eye(d)
    scale = jnp.trace(diag, axis1=1, axis2=2)
    ok = scale > 1e-12 * jnp.max(scale)
    safe = jnp.where(ok[:, None, None], diag, jnp.eye(d))
    inv = jnp.linalg.inv(safe)
    return jnp.where(ok[:, None, None], inv, jnp.eye(d))


def two_level(model: PairModel, blocks, pairs: Pairs, positions, *, per_cell: int = 16):
    """A two-level additive preconditioner ``M = D⁻¹ + R A_c⁺ Rᵀ`` (on the host, numpy).

    ``D⁻¹`` is block-Jacobi; the coarse space is the rigid translation of each cell of a
    grid of the box holding about ``per_cell`` particles (``R`` spreads a coarse vector over
    each cell's particles), and ``A_c = Rᵀ H R`` is assembled from the pair stiffness
    blocks and pseudo-inverted. The soft, long-wavelength modes of a packing that limit CG
    are what the coarse space captures.

    Returns:
      (inverse blocks (n, d, d), cell index (n,), A_c⁺ (nc d, nc d)) as jax arrays.
    """
    n, d = model.n, model.dim
    inv = block_jacobi(model, blocks, pairs)
    y = np.asarray(positions)
    if model.periodic:
        box = np.asarray(model.box)
        lo = np.zeros(d)
    else:
        lo, box = y.min(axis=0), np.ptp(y, axis=0) + 1e-9
    g = max(1, int(round((n / per_cell) ** (1.0 / d))))
    cell = np.clip(np.floor((y - lo) / box * g).astype(int), 0, g - 1)
    cid = np.ravel_multi_index(tuple(cell.T), (g,) * d)
    _, cid = np.unique(cid, return_inverse=True)  # drop empty cells
    nc = int(cid.max()) + 1
    i, j = np.asarray(pairs.i), np.asarray(pairs.j)
    keep = (i < n) & (j < n)
    k = np.asarray(blocks)[keep]
    ci, cj = cid[i[keep]], cid[j[keep]]
    coarse = np.zeros((nc, nc, d, d))
    np.add.at(coarse, (ci, ci), k)
    np.add.at(coarse, (cj, cj), k)
    np.add.at(coarse, (ci, cj), -k)
    np.add.at(coarse, (cj, ci), -k)
    coarse = coarse.transpose(0, 2, 1, 3).reshape(nc * d, nc * d)
    coarse_inv = np.linalg.pinv(coarse, rcond=1e-10, hermitian=True)
    return inv, jnp.asarray(cid, jnp.int32), jnp.asarray(coarse_inv)


def lanczos_extremes(matvec, v0, basis_q, steps: int):
    """Ritz values of ``P A P`` after ``steps`` Lanczos steps (full reorthogonalization).

    ``basis_q`` is an orthonormal ``(n, k)`` basis of the known null space; ``P`` projects
    it out. The smallest Ritz value estimates (from above) the smallest non-zero eigenvalue.
    """
    n = v0.size

    def proj(v):
        return v - basis_q @ (basis_q.T @ v)

    v0 = proj(v0)
    v0 = v0 / jnp.linalg.norm(v0)
    V = jnp.zeros((steps + 1, n)).at[0].set(v0)
    alphas = jnp.zeros(steps)
    betas = jnp.zeros(steps)

    def body(k, carry):
        V, alphas, betas = carry
        w = proj(matvec(V[k]))
        a = jnp.dot(w, V[k])
        w = w - V.T @ (V @ w)  # full reorthogonalization (rows beyond k are zero)
        w = w - V.T @ (V @ w)
        w = proj(w)
        b = jnp.linalg.norm(w)
        V = V.at[k + 1].set(jnp.where(b > 0, w / jnp.where(b > 0, b, 1.0), 0.0))
        return V, alphas.at[k].set(a), betas.at[k].set(b)

    V, alphas, betas = jax.lax.fori_loop(0, steps, body, (V, alphas, betas))
    T = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    return jnp.linalg.eigvalsh(T)


# ---------------------------------------------------------------------------------------
# The response solver.


class ResponseSolver:
    """∂x*/∂θ at a relaxed packing, through :func:`sensitivity.custom_root`.

    The unknowns are the positions of the *backbone* (the non-rattlers): rattlers carry no
    force at the minimum, so they are removed from the linear system (their rows come out
    NaN), and the pair terms that involve them are dropped. What is left of the null space
    is the ``d`` rigid translations of the backbone (plus its rigid rotations in free
    space), handed to the engine's solver as ``nullspace=``; its minimum-norm answer is the
    gauge (mean response of the backbone zero).

    Args:
      model: the pair model.
      positions: relaxed real positions ``(N, d)`` at ``params``.
      params: the parameters at which they were relaxed.
      max_force: the residual max per-particle force of the relaxation (contact threshold).
      settings: the resolved ``sensitivity`` block.
    """

    def __init__(self, model: PairModel, positions, params: PotentialParams, *,
                 max_force: float, settings: Mapping[str, Any]):
        t0 = time.perf_counter()
        self.model = model
        self.settings = dict(settings)
        self.params = params
        self.y = jnp.asarray(np.asarray(positions) / float(params.scale), jnp.float64)
        self.max_force = float(max_force)
        contacts = contact_analysis(model, self.y, params, max_force=max_force,
                                    min_contacts=settings.get("rattler_contacts"))
        self.contacts = contacts
        self.rattlers = contacts["rattlers"]
        self.backbone = np.flatnonzero(~self.rattlers)
        if len(self.backbone) == 0:
            raise InputError(
                f"every one of the {model.n} particles is a rattler after relaxation (fewer "
                f"than {contacts['min_contacts']} contacts): the packing is not jammed and "
                "has no response to differentiate; raise the packing fraction")
        pairs = contacts["pairs"]
        i, j = np.asarray(pairs.i), np.asarray(pairs.j)
        keep = ~self.rattlers[i] & ~self.rattlers[j]
        #: the backbone's pairs, numbered as in the whole packing
        self.pairs = Pairs.from_arrays(i[keep], j[keep])
        # The linear system lives on the backbone alone: a pair model over the backbone
        # particles (its pairs renumbered), so a Hessian-vector product touches no rattler.
        number = np.full(model.n, -1)
        number[self.backbone] = np.arange(len(self.backbone))
        self.backbone_pairs = Pairs.from_arrays(number[i[keep]], number[j[keep]])
        self.backbone_model = dataclasses.replace(
            model, species=model.species[jnp.asarray(self.backbone)])
        self._backbone_index = jnp.asarray(self.backbone)
        self.y_backbone = self.y[self.backbone]
        self.basis = nullspace_basis(np.asarray(self.y_backbone),
                                     np.zeros(len(self.backbone), bool), model.periodic)
        # Every Hessian-vector product of the implicit derivative is taken at (y*, θ0):
        # the pair stiffness blocks are computed once, here.
        self.stiffness = jax.jit(self.backbone_model.pair_stiffness)(
            self.y_backbone, self._restrict(params), self.backbone_pairs)
        self._gradient = self.backbone_model.gradient_fn(self.backbone_pairs, None,
                                                         self.stiffness)
        self.time_setup_s = time.perf_counter() - t0

    def _restrict(self, params: PotentialParams) -> PotentialParams:
        """The parameters of the backbone particles."""
        return params._replace(diameters=params.diameters[self._backbone_index])

    @property
    def n_dof(self) -> int:
        """Unknowns of the linear system (backbone coordinates)."""
        return len(self.backbone) * self.model.dim

    # ---- the optimality condition and the decorated solver -----------------------------
    def embed(self, y_backbone):
        """Full reference positions: the backbone from ``y_backbone``, rattlers at y*."""
        return self.y.at[self.backbone].set(y_backbone)

    def optimality(self, y_backbone, params):
        """``F(y, θ) = ∇_y E(y, θ)`` on the backbone coordinates (rattler terms dropped).

        Its JVP in ``y`` (the Hessian-vector product) uses the precomputed pair stiffness.
        """
        return self._gradient(y_backbone, self._restrict(params))

    def linear_solve(self, solver_name: str | None = None, report: bool = True):
        """The engine's solver with this packing's null space, tolerance and preconditioner,
        reporting its LinearSolveInfo (``report``; a host callback per solve)."""
        import sensitivity

        s = self.settings
        name = solver_name or s["solver"]
        solve = sensitivity.get_solver(name)
        # consistency_tol=inf: a pair potential's ∂F/∂θ is analytically orthogonal to the
        # rigid motions (Newton's third law, central forces); what the engine would measure
        # along them is round-off, which matters when ∂F/∂θ is itself tiny (a uniform ε:
        # ∂F/∂ε = F/ε, the residual force). It is still reported as "inconsistency".
        options: dict[str, Any] = dict(tol=float(s["tol"]), nullspace=jnp.asarray(self.basis),
                                       on_failure="ignore", consistency_tol=float("inf"))
        if s.get("maxiter") is not None and name not in _DENSE:
            options["maxiter"] = int(s["maxiter"])
        precond = s.get("preconditioner")
        if name in _TAKES_PRECONDITIONER and precond == "two_level":
            d = self.model.dim
            inv, cid, coarse_inv = two_level(self.backbone_model, self.stiffness,
                                             self.backbone_pairs, self.y_backbone)
            nc = coarse_inv.shape[0] // d

            def two_level_apply(r):
                fine = jnp.stack([sum(inv[:, a, c] * r[:, c] for c in range(d))
                                  for a in range(d)], axis=-1)
                restricted = jax.ops.segment_sum(r, cid, nc).reshape(-1)
                coarse = (coarse_inv @ restricted).reshape(nc, d)
                return fine + coarse[cid]

            options["M"] = two_level_apply
        elif name in _TAKES_PRECONDITIONER and precond in ("jacobi", "block_jacobi"):
            inv = block_jacobi(self.backbone_model, self.stiffness, self.backbone_pairs,
                               diagonal_only=precond == "jacobi")
            d = self.model.dim
            options["M"] = lambda r: jnp.stack(
                [sum(inv[:, a, c] * r[:, c] for c in range(d)) for a in range(d)], axis=-1)
        solve = functools.partial(solve, **options)
        if report:
            return _reporting(solve)
        return lambda matvec, b: solve(matvec, b)  # no full_output: nothing recorded

    def relaxed_solver(self, solver_name: str | None = None, report: bool = True):
        """``solver(init, params) -> y*_backbone`` decorated with ``sensitivity.custom_root``.

        The relaxation already happened: the decorated function returns ``init`` (the
        relaxed backbone positions), so only the implicit derivative is computed here, and
        only at the parameters of the relaxation.
        """
        import sensitivity

        @sensitivity.custom_root(self.optimality,
                                 solve=self.linear_solve(solver_name, report),
                                 symmetric=True)
        def relaxed(init, params):
            return init

        return relaxed

    def _positions_of(self, solver, params, y_backbone):
        """Real positions (N, d) with the backbone from the decorated solver."""
        return params.scale * self.embed(solver(y_backbone, params))

    # ---- derivatives -------------------------------------------------------------------
    def _compile_and_run(self, fn, *args):
        """Compile ``fn`` ahead of time and run it: (result, reports, t_run, t_compile)."""
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        t_compile = time.perf_counter() - t0
        with _collect_reports() as reports:
            t0 = time.perf_counter()
            out = jax.block_until_ready(compiled(*args))
            t_run = time.perf_counter() - t0
        return jax.tree.map(np.asarray, out), reports, t_run, t_compile

    def scalar_derivatives(self, pspecs: list[ParameterSpec]) -> dict:
        """∂x*/∂θ for scalar θs, all in one compiled, batched forward-mode solve.

        Returns {name: (dx_dtheta (N, d), attrs)}.
        """
        s = self.settings
        species = np.asarray(self.model.species)
        maps = [theta_apply(p, self.params, species) for p in pspecs]
        thetas0 = jnp.stack([jnp.asarray(t0, jnp.float64) for t0, _ in maps])
        solver = self.relaxed_solver()
        base = self.params

        def derivatives(y_backbone, thetas):
            def x_of(thetas):
                params = base
                for k, (_, apply) in enumerate(maps):
                    params = apply(params, thetas[k])
                return self._positions_of(solver, params, y_backbone)

            def forces_of(thetas):
                params = base
                for k, (_, apply) in enumerate(maps):
                    params = apply(params, thetas[k])
                return self.optimality(y_backbone, params)

            dx = jnp.moveaxis(jax.jacfwd(x_of)(thetas), -1, 0)  # (P, N, d)
            rhs = jax.jacfwd(forces_of)(thetas)  # (Nb, d, P): -b of each solve
            return dx, jnp.sqrt(jnp.sum(rhs * rhs, axis=(0, 1)))

        (dx, rhs_norms), reports, t_run, t_compile = self._compile_and_run(
            derivatives, self.y_backbone, thetas0)
        # vmap reports each column's solve from a host callback; XLA may run them on
        # several threads, so match them to the θs by their right-hand-side norms.
        columns = _match_reports(reports, rhs_norms)
        out = {}
        for k, pspec in enumerate(pspecs):
            info = _merge_reports([reports[c] for c in columns[k]])
            attrs = self._attrs(pspec, thetas0[k], s["solver"], "forward mode", info)
            attrs.update(time_s=t_run, time_compile_s=t_compile,
                         batched_with=[p.name for p in pspecs])
            out[pspec.name] = (self._gauge(dx[k]), attrs)
        return out

    def vector_derivative(self, pspec: ParameterSpec) -> tuple[np.ndarray, dict]:
        """The ``[N][N][d]`` Jacobian of every particle's diameter (kind ``diameters``).

        Forward mode: N right-hand sides (reverse mode would need N·d). Where the Hessian
        fits (``n_dof <= dense_max_dof``, or solver dense) one factorization serves all of
        them (``vmap`` keeps the factorization, which does not depend on the right-hand
        side, outside the batch); else chunks of batched iterative solves.
        """
        s = self.settings
        n, d = self.model.n, self.model.dim
        solver_name = s["solver"]
        if solver_name in _DENSE or self.n_dof <= int(s["dense_max_dof"]):
            solver_name = solver_name if solver_name in _DENSE else "dense"
            method = f"forward mode, one dense factorization for {n} right-hand sides"
        else:
            method = f"forward mode, {n} batched iterative solves"
        theta0, apply = theta_apply(pspec, self.params, np.asarray(self.model.species))
        # No report per column (a host callback each: most of the time of a dense solve for
        # a few hundred columns); the residuals are checked below, all columns at once.
        solver = self.relaxed_solver(solver_name, report=False)
        base = self.params

        def x_of(y_backbone, theta):
            return self._positions_of(solver, apply(base, theta), y_backbone)

        if solver_name in _DENSE:
            def jacobian(y_backbone, theta):
                jac = jax.jacfwd(lambda t: x_of(y_backbone, t))(theta)  # (N, d, P)
                return jnp.moveaxis(jac, -1, 0)
        else:
            chunk = max(1, min(n, int(2 ** 22 // max(len(self.pairs.i) * d, 1))))
            n_chunks = -(-n // chunk)

            def jacobian(y_backbone, theta):
                def columns(k0):
                    tangents = jax.nn.one_hot(k0 + jnp.arange(chunk), n, dtype=jnp.float64)
                    return jax.vmap(lambda t: jax.jvp(lambda th: x_of(y_backbone, th),
                                                      (theta,), (t,))[1])(tangents)

                out = jax.lax.map(columns, jnp.arange(n_chunks) * chunk)
                return out.reshape((-1, n, d))[:n]

        dx, reports, t_run, t_compile = self._compile_and_run(
            jacobian, self.y_backbone, theta0)
        attrs = self._attrs(pspec, theta0, solver_name, method,
                            self._residuals(dx, theta0, apply))
        attrs.update(time_s=t_run, time_compile_s=t_compile)
        return self._gauge(dx), attrs

    def _residuals(self, dx, theta0, apply) -> dict:
        """``‖H v_p - b_p‖`` of every column of a vector θ, recomputed (one batched pass)."""
        s = self.settings
        base = self.params
        dy = jnp.asarray(np.asarray(dx)[:, self.backbone])  # (P, Nb, d); gauge: H t = 0

        @jax.jit
        def check(y_backbone, theta, dy):
            def column(k):
                tangent = jnp.zeros_like(theta).at[k].set(1.0)
                b = -jax.jvp(lambda t: self.optimality(y_backbone, apply(base, t)),
                             (theta,), (tangent,))[1]
                hv = jax.jvp(lambda y: self.optimality(y, apply(base, theta)),
                             (y_backbone,), (dy[k],))[1]
                return jnp.linalg.norm(hv - b), jnp.linalg.norm(b)

            return jax.lax.map(column, jnp.arange(dy.shape[0]))

        res, rhs = (np.asarray(a) for a in check(self.y_backbone, theta0, dy))
        rel = np.where(rhs > 0, res / np.where(rhs > 0, rhs, 1.0), 0.0)
        ok = np.isfinite(res) & (res <= float(s["tol"]) * rhs * (1 + 1e-6) + 1e-300)
        return {
            "iterations": 0 if solver_name_is_dense(s, self.n_dof) else -1,
            "iterations_total": 0,
            "residual": float(res.max()) if res.size else 0.0,
            "relative_residual": float(rel.max()) if rel.size else 0.0,
            "converged": bool(ok.all()),
            "inconsistency": 0.0,
            "n_solves": int(res.size),
        }

    def _gauge(self, dx):
        return gauge_fix(dx, self.rattlers, np.asarray(self.y), self.model.periodic)

    def _attrs(self, pspec, theta0, solver_name, method, info) -> dict:
        s = self.settings
        theta_value = np.asarray(theta0)
        return {
            "kind": pspec.kind,
            "species": -1 if pspec.species is None else int(pspec.species),
            "theta": theta_value.tolist() if theta_value.ndim else float(theta_value),
            "theta_meaning": theta_meaning(pspec),
            "solver": solver_name,
            "method": method,
            "preconditioner": (s.get("preconditioner") or "none")
            if solver_name in _TAKES_PRECONDITIONER else "none",
            "tol": float(s["tol"]),
            **info,
        }

    # ---- diagnostics -------------------------------------------------------------------
    def zero_modes(self, seed: int = 0) -> dict:
        """Zero modes found against ``d (1 + rattlers)`` (+ rotations in free space), and
        conditioning figures of the backbone Hessian.

        Up to :data:`DENSE_EIGEN_MAX_DOF` coordinates: a dense eigendecomposition of the
        whole Hessian with the rattler terms dropped (its zero eigenvalues counted, below
        ``1e-8 λ_max``). Beyond: the construction (rattler coordinates are exactly zero
        rows; the translations are checked by ``‖H t‖``) plus Lanczos on the backbone
        Hessian with the translations projected out, whose near-zero Ritz values would be
        extra, unexpected zero modes; its smallest Ritz value estimates the smallest
        non-zero eigenvalue from above.
        """
        n, d = self.model.n, self.model.dim
        n_rattlers = int(self.rattlers.sum())
        k = self.basis.shape[0]
        t0 = time.perf_counter()
        params = self.params
        nb = len(self.backbone)

        def hvp(v):
            return jax.jvp(lambda y: self.optimality(y, params), (self.y_backbone,),
                           (v.reshape(nb, d),))[1].reshape(-1)

        q, _ = np.linalg.qr(self.basis.reshape(k, -1).T)
        q = jnp.asarray(q)
        null_residual = jax.jit(jax.vmap(hvp))(q.T)
        null_residual = float(jnp.max(jnp.linalg.norm(null_residual, axis=1)))
        rigid = d + (0 if self.model.periodic else d * (d - 1) // 2)
        out: dict[str, Any] = {
            "expected": rigid + d * n_rattlers,
            "rattlers": n_rattlers,
            "basis_size": k,
            "basis_max_residual": null_residual,
        }
        if n * d <= DENSE_EIGEN_MAX_DOF:
            grad = self.model.gradient_fn(self.pairs)  # rattler terms dropped
            hess = jax.jit(jax.jacfwd(lambda y: grad(y, params)))(self.y)
            evals = np.linalg.eigvalsh(np.asarray(hess).reshape(n * d, n * d))
            top = float(np.max(np.abs(evals)))
            zero = np.abs(evals) <= 1e-8 * top
            nonzero = evals[~zero]
            out.update({
                "found": int(zero.sum()),
                "method": "dense eigendecomposition",
                "eigenvalue_min_nonzero": float(nonzero.min()) if nonzero.size else math.nan,
                "eigenvalue_max": top,
                "negative_eigenvalues": int((nonzero < 0).sum()),
            })
        else:
            steps = int(min(self.settings.get("lanczos_steps", 40), self.n_dof - k))
            v0 = jax.random.normal(jax.random.PRNGKey(seed), (self.n_dof,))
            ritz = np.asarray(jax.jit(lambda v0, q: lanczos_extremes(hvp, v0, q, steps))(v0, q))
            top = float(ritz.max())
            tiny = np.abs(ritz) <= 1e-8 * top
            out.update({
                "found": k + d * n_rattlers + int(tiny.sum()),
                "method": f"construction + Lanczos ({steps} steps) on the projected Hessian",
                "eigenvalue_min_nonzero": float(ritz[~tiny].min()) if (~tiny).any()
                else math.nan,
                "eigenvalue_max": top,
                "negative_eigenvalues": int((ritz[~tiny] < 0).sum()),
            })
        out["condition_number"] = (out["eigenvalue_max"] / out["eigenvalue_min_nonzero"]
                                   if out["eigenvalue_min_nonzero"] > 0 else math.inf)
        out["matches"] = bool(out["found"] == out["expected"])
        out["time_s"] = time.perf_counter() - t0
        return out

    def run_all(self, pspecs: list[ParameterSpec],
                progress: Callable[..., None] | None = None) -> dict:
        """Every θ's derivative, then the zero-mode diagnostics (see :func:`response`)."""
        responses = {}
        t_solve = 0.0
        t_compile = 0.0
        scalars = [p for p in pspecs if p.kind != "diameters"]
        results = self.scalar_derivatives(scalars) if scalars else {}
        if scalars:
            first = results[scalars[0].name][1]
            t_solve += first["time_s"]
            t_compile += first["time_compile_s"]
        for pspec in pspecs:
            if pspec.kind == "diameters":
                results[pspec.name] = self.vector_derivative(pspec)
                t_solve += results[pspec.name][1]["time_s"]
                t_compile += results[pspec.name][1]["time_compile_s"]
        for pspec in pspecs:
            dx, attrs = results[pspec.name]
            responses[pspec.name] = {"dx_dtheta": dx, "attrs": attrs}
            if progress is not None:
                progress("solve", name=pspec.name, iterations=attrs["iterations"],
                         residual=attrs["residual"], converged=attrs["converged"])
        zero_modes = self.zero_modes()
        contacts = {k: v for k, v in self.contacts.items() if k not in ("rattlers", "pairs")}
        return {
            "responses": responses,
            "rattlers": self.rattlers,
            "zero_modes": zero_modes,
            "contacts": contacts,
            "timings": {
                "time_sensitivity_s": t_solve,
                "time_sensitivity_compile_s": t_compile,
                "time_setup_s": self.time_setup_s,
                "time_diagnostics_s": zero_modes["time_s"],
            },
        }


def solver_name_is_dense(settings, n_dof: int) -> bool:
    """Whether the vector θ uses one dense factorization."""
    return settings["solver"] in _DENSE or n_dof <= int(settings["dense_max_dof"])


def _match_reports(reports, rhs_norms) -> list[list[int]]:
    """For each θ, the indices of the reports whose rhs norm is closest to its own."""
    rhs_norms = np.asarray(rhs_norms, np.float64)
    matched: list[list[int]] = [[] for _ in rhs_norms]
    norms = np.array([float(np.asarray(r.rhs_norm).reshape(-1)[0]) for r in reports])
    gap = np.abs(norms[:, None] - rhs_norms[None, :]) / np.maximum(
        np.maximum(np.abs(norms[:, None]), rhs_norms[None, :]), 1e-300)
    if len(reports) == len(rhs_norms):
        # one report per θ: assign the closest pairs first, each θ once
        free_reports, free_thetas = set(range(len(reports))), set(range(len(rhs_norms)))
        for flat in np.argsort(gap, axis=None, kind="stable"):
            r, t = np.unravel_index(flat, gap.shape)
            if r in free_reports and t in free_thetas:
                matched[t].append(int(r))
                free_reports.discard(r)
                free_thetas.discard(t)
        return matched
    for index in range(len(reports)):
        matched[int(np.argmin(gap[index]))].append(index)
    return matched


def _merge_reports(reports) -> dict:
    """Fold the engine's LinearSolveInfo reports (maybe batched) into attributes."""
    if not reports:
        return {"iterations": 0, "iterations_total": 0, "residual": math.nan,
                "relative_residual": math.nan, "converged": False,
                "inconsistency": math.nan, "n_solves": 0}


    def gather(field):
        return np.concatenate([np.ravel(np.asarray(getattr(r, field))) for r in reports])

    iters = gather("iterations")
    res = gather("residual_norm")
    rhs = gather("rhs_norm")
    conv = gather("converged")
    incons = gather("inconsistency")
    rel = np.where(rhs > 0, res / np.where(rhs > 0, rhs, 1.0), 0.0)
    return {
        "iterations": int(iters.max()),
        "iterations_total": int(iters.sum()),
        "residual": float(res.max()),
        "relative_residual": float(rel.max()),
        "converged": bool(conv.all()),
        "inconsistency": float(incons.max()),
        "n_solves": int(iters.size),
    }


def response(system, positions, potential_cfg, parameter_cfgs, sensitivity_cfg, *,
             max_force: float = 0.0, file_potential=None,
             progress: Callable[..., None] | None = None) -> dict:
    """∂x*/∂θ for every θ listed, at the relaxed ``positions`` of ``system``.

    Args:
      system: the :class:`~systems.ParticleSystem` (its diameters, species and box).
      positions: relaxed real positions ``(N, d)``.
      potential_cfg, parameter_cfgs, sensitivity_cfg: config blocks.
      max_force: the relaxation's residual max force (sets the contact threshold).
      file_potential: the input file's potential parameters (the config overrides them).
      progress: optional ``progress(event, **fields)``.

    Returns:
      dict with ``responses`` ({name: {"dx_dtheta", "attrs"}}), ``rattlers`` (N,) bool,
      ``zero_modes`` (dict), ``contacts`` (dict of scalars), ``timings`` (dict).
    """
    spec = resolve_potential(potential_cfg, system.n_species, file_potential)
    settings = resolve_sensitivity(sensitivity_cfg)
    pspecs = resolve_parameters(parameter_cfgs, system, spec)
    model = PairModel.build(system, spec)
    params = model.default_params(system.diameters)
    solver = ResponseSolver(model, positions, params, max_force=max_force, settings=settings)
    return solver.run_all(pspecs, progress)


