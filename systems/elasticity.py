"""Stress, pressure and the athermal elastic tensor of a relaxed packing.

A small strain ε (a symmetric ``d×d`` matrix) deforms the periodic box and the particles
affinely: the real positions are ``x = λ (I + ε) y`` (:func:`~systems.potentials.real_positions`),
every pair displacement ``r → (I + ε) r``. With the energy ``U(y, ε)``:

- stress ``σ_ab = (1/V) ∂U/∂ε_ab`` at ε = 0 and y = y* (tension positive; for a pair
  potential the virial ``(1/V) Σ_pairs V'(r) r_a r_b / r``, :func:`virial_stress`), and the
  pressure ``p = -tr σ / d`` (positive for a jammed packing of repulsive particles);
- the athermal elastic tensor, the second derivative of the *relaxed* energy,

  .. math::
      C_{abcd} = \\frac{1}{V}\\Big(\\frac{\\partial^2 U}{\\partial ε_{ab}\\partial ε_{cd}}
                 - Ξ_{ab} \\cdot H^{+} Ξ_{cd}\\Big),
      \\qquad Ξ_{ab} = \\frac{\\partial^2 U}{\\partial y\\, \\partial ε_{ab}},

  where ``H⁺ Ξ`` is the non-affine relaxation: ``dy*/dε = -H⁺ Ξ``, exactly the implicit
  derivative of a θ of kind ``strain`` (:class:`~systems.response.ResponseSolver`: rattlers
  and the rigid translations handled by its null space, no tether).

Convention (the one of jax-md's ``elasticity.athermal_moduli``): ``C`` has the major and
minor symmetries and, for symmetric strains ``A`` and ``B``,
``(1/V) d²U/(ds dt)`` along ``ε = sA + tB`` is ``Σ C_abcd A_ab B_cd``; a pure shear
``ε_xy = ε_yx = γ`` gives ``(1/V) d²U/dγ² = 4 C_xyxy``. This is the expansion of the energy
per unit volume of the reference box (no prestress correction).

Moduli (isotropic averages of ``C``; O'Hern et al., PRE 68, 011306 (2003)):
``B = (1/d²) Σ_ab C_aabb`` (uniform compression), and
``G = [Σ_ab C_abab - (1/d) Σ_ab C_aabb] / ((d - 1)(d + 2))``, the shear modulus of the
isotropic tensor nearest to ``C``: in 2D ``(C_11 + C_22 - 2 C_12 + 4 C_66) / 8`` (the mean
of the pure-shear and simple-shear moduli), in 3D the Voigt average
``(C_11 + C_22 + C_33 - C_12 - C_13 - C_23 + 3 (C_44 + C_55 + C_66)) / 15``.

Any periodic cell, orthorhombic or sheared: the strain maps every minimum-image pair
displacement ``r`` to ``(I + ε) r``, the same for either form of a cell.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import settings
from ._errors import InputError
from ._system import box_volume as cell_volume
from .hessian import hessian_matmat, hessian_matvec, scale_blocks
from .potentials import PairModel, Pairs, PotentialParams

__all__ = [
    "STRAIN_COMPONENTS",
    "VOIGT",
    "check_component",
    "strain_direction",
    "box_volume",
    "stress_tensor",
    "virial_stress",
    "per_particle_stress",
    "pressure_of",
    "moduli",
    "to_voigt",
    "nonaffine_part",
    "elastic_response",
    "observables",
    "observable_derivatives",
]

#: Strain components in Voigt order, by dimension (one owner: :mod:`systems.settings`).
STRAIN_COMPONENTS = settings.STRAIN_COMPONENTS_BY_DIM
#: Voigt index pairs (a, b) of each component.
VOIGT = {dim: tuple(("xyz".index(c[0]), "xyz".index(c[1])) for c in comps)
         for dim, comps in STRAIN_COMPONENTS.items()}

BULK_DEFINITION = "B = (1/d^2) sum_ab C_aabb (response to uniform compression)"
SHEAR_DEFINITION = ("G = [sum_ab C_abab - (1/d) sum_ab C_aabb] / ((d-1)(d+2)): the shear "
                    "modulus of the isotropic average of C (2D: (C11 + C22 - 2 C12 + 4 C66)/8, "
                    "3D: Voigt average (C11+C22+C33 - C12-C13-C23 + 3(C44+C55+C66))/15)")
STRESS_DEFINITION = ("sigma_ab = (1/V) dU/d(epsilon_ab) under affine strain of box and "
                     "positions (tension positive); p = -tr(sigma)/d")
TENSOR_DEFINITION = ("C_abcd = (1/V)(d2U/de_ab de_cd - Xi_ab . H^+ Xi_cd) at x*, V the box "
                     "volume; (1/V) d2U/dgamma2 = 4 C_xyxy for e_xy = e_yx = gamma (jax-md's "
                     "athermal_moduli convention); rattlers and translations in the null space")


def check_component(component: Any, dim: int, key: str) -> str:
    """``component`` as a known strain component of a ``dim``-dimensional box, else an
    InputError naming ``key``. ``yx`` is accepted as ``xy`` (the strain is symmetric)."""
    allowed = STRAIN_COMPONENTS[int(dim)]
    text = component if isinstance(component, str) else None
    if text is not None and len(text) == 2 and text[::-1] in allowed and text not in allowed:
        text = text[::-1]
    if text not in allowed:
        extra = (" (a 2D box has no z)" if isinstance(component, str) and "z" in component
                 and dim == 2 else "")
        raise InputError(f"{key} = {component!r}: must be one of {', '.join(allowed)} for "
                         f"a {dim}D box{extra}")
    return text


def strain_direction(component: str, dim: int) -> np.ndarray:
    """The symmetric unit strain of ``component``: ``E_ab = E_ba = 1``, zero elsewhere."""
    a, b = ("xyz".index(component[0]), "xyz".index(component[1]))
    e = np.zeros((dim, dim))
    e[a, b] = e[b, a] = 1.0
    return e


def box_volume(model: PairModel, params: PotentialParams) -> float:
    """Volume (area in 2D) of the periodic box ``λ (I + ε) H`` at ``params``."""
    if not model.periodic:
        raise ValueError("the volume of a free-boundary system is undefined")
    volume = cell_volume(model.box) * float(params.scale) ** model.dim
    if params.strain is not None:
        volume *= float(np.linalg.det(np.eye(model.dim) + np.asarray(params.strain)))
    return volume


def stress_tensor(model: PairModel, y, params: PotentialParams, pairs: Pairs, volume: float):
    """``σ = (1/V) ∂U/∂ε`` ``(d, d)`` by automatic differentiation of the energy in the strain
    (jax; ``volume`` the box volume at ``params``)."""
    base = jnp.zeros((model.dim, model.dim)) if params.strain is None else params.strain

    def energy(strain):
        return model.energy(y, params._replace(strain=strain), pairs)

    return jax.grad(energy)(jnp.asarray(base, jnp.float64)) / volume


def virial_stress(model: PairModel, y, params: PotentialParams, pairs: Pairs, volume: float):
    """The virial ``σ_ab = (1/V) Σ_pairs w V'(r) r_a r_b / r`` (an independent form of
    :func:`stress_tensor`, used to check it)."""
    t = model.pair_terms(y, params, pairs)
    dv = jax.vmap(jax.grad(model.pair_law))(t.r, t.sigma, t.epsilon, t.si, t.sj)
    w = jnp.where(t.valid, pairs.weight * dv / t.r, 0.0)
    return jnp.einsum("k,ka,kb->ab", w, t.dr, t.dr) / volume


def per_particle_stress(model: PairModel, y, params: PotentialParams, pairs: Pairs,
                        volume: float):
    """``(N, d, d)``: each pair's virial term split equally between its two particles, so
    that the sum over particles is :func:`virial_stress` (a per-particle stress times
    ``V / N`` gives the usual per-particle virial in units of energy)."""
    n = y.shape[0]
    t = model.pair_terms(y, params, pairs)
    dv = jax.vmap(jax.grad(model.pair_law))(t.r, t.sigma, t.epsilon, t.si, t.sj)
    w = jnp.where(t.valid, 0.5 * pairs.weight * dv / t.r, 0.0)
    term = w[:, None, None] * t.dr[:, :, None] * t.dr[:, None, :] / volume
    return jax.ops.segment_sum(term, t.i, n) + jax.ops.segment_sum(term, t.j, n)


def pressure_of(stress) -> float:
    """``p = -tr σ / d``."""
    stress = np.asarray(stress)
    return float(-np.trace(stress) / stress.shape[0])


def moduli(tensor) -> tuple[float, float]:
    """``(B, G)``: bulk and shear moduli of ``C`` (see the module docstring)."""
    c = np.asarray(tensor)
    d = c.shape[0]
    aabb = float(np.einsum("aabb->", c))
    abab = float(np.einsum("abab->", c))
    return aabb / d**2, (abab - aabb / d) / ((d - 1) * (d + 2))


def to_voigt(tensor) -> np.ndarray:
    """``C`` as its Voigt matrix (3×3 in 2D: xx, yy, xy; 6×6 in 3D: xx, yy, zz, yz, xz, xy)."""
    c = np.asarray(tensor)
    pairs = VOIGT[c.shape[0]]
    return np.array([[c[a, b, e, f] for (e, f) in pairs] for (a, b) in pairs])


def _tensor_from_components(m: np.ndarray, dim: int) -> np.ndarray:
    """``C[d,d,d,d]`` from ``M_pq = (1/V) d²U/dθ_p dθ_q`` over the strain components
    (θ_p moves ε_ab and ε_ba together: ``M_pq = m_p m_q C_(p)(q)``, m = 2 off the diagonal)."""
    pairs = VOIGT[dim]
    mult = np.array([1.0 if a == b else 2.0 for a, b in pairs])
    cv = m / np.outer(mult, mult)
    c = np.zeros((dim,) * 4)
    for p, (a, b) in enumerate(pairs):
        for q, (e, f) in enumerate(pairs):
            for i, j in ((a, b), (b, a)):
                for k, h in ((e, f), (f, e)):
                    c[i, j, k, h] = cv[p, q]
    return c


def nonaffine_part(dx: np.ndarray, component: str, y: np.ndarray, scale: float,
                   rattlers: np.ndarray) -> np.ndarray:
    """The non-affine part ``λ ∂y*/∂ε`` of a total ``∂x*/∂ε`` (gauge-fixed, rattlers NaN):
    ``∂x*/∂ε - λ E y*`` with the backbone's mean removed."""
    from .contacts import gauge_fix

    dim = dx.shape[-1]
    affine = scale * np.asarray(y) @ strain_direction(component, dim).T
    return gauge_fix(np.asarray(dx) - affine, rattlers)


# ---------------------------------------------------------------------------------------
# The elastic tensor through the ResponseSolver's compiled machinery.


def _projector(pk):
    """``x -> P x`` for ``(m, N, d)`` blocks, ``P`` the orthogonal projector off the
    backbone's rigid translations (:func:`systems._linear_system.nullspace`)."""
    from ._linear_system import nullspace

    basis = nullspace(pk)
    flat = basis.reshape(basis.shape[0], -1)
    gram_inv = jnp.linalg.inv(flat @ flat.T)

    def project(x):
        xf = x.reshape(x.shape[0], -1)
        return (xf - ((xf @ flat.T) @ gram_inv) @ flat).reshape(x.shape)

    return project


def _strain_solve(pk, b, tol: float, maxiter: int):
    """The m solves ``H x_p = b_p`` (``b`` (m, N, d)) by block CG
    (:func:`systems.block_cg.block_cg`: one Krylov space for all m) on the
    block-Jacobi-scaled system ``S H S z = S P b``, ``x = P S z`` (``P`` projects off the
    backbone's rigid translations: the minimum-norm solution, as the engine's solve with
    :func:`systems._linear_system._block_scaling`), with the engine's convergence test per
    column, ``‖S r_p‖ ≤ tol ‖S P b_p‖`` on the true residual. Each iteration is one product
    with the m vectors (:func:`~systems.hessian.hessian_matmat`), and every column takes
    every block iteration. Returns ``x`` (m, N, d), the iterations, ``‖H x - P b‖``,
    ``‖b‖``, the scaled residual and rhs norms and the converged flags, per column.
    """
    from .block_cg import block_cg

    sc = pk.precond
    project = _projector(pk)
    b_proj = project(b)
    rhs = scale_blocks(sc.scale, b_proj)
    # the Gram matrices as matrix products in 3D (m = 6: 0.91-0.98× the time), reductions in 2D
    # (m = 3; the products measured 1.3× slower): benchmarks/README.md, "Elastic tensor"
    gram = "dot" if b.shape[-1] == 3 else "reduce"
    z, k, res_s, ok = block_cg(lambda v: hessian_matmat(sc.hessian, v), rhs, tol, maxiter,
                               gram=gram)
    x = project(scale_blocks(sc.scale, z))
    # one matrix-vector product per column (a batched dot each), not hessian_matmat: XLA:CPU
    # fuses the latter's terms into the norms' reduction below, which then takes 1/3 of this
    # solve's fixed cost (2D, N = 4,096)
    residual = jnp.stack([hessian_matvec(pk.hessian, v) for v in x]) - b_proj

    def norms(v):
        return jnp.sqrt(jnp.sum(v * v, axis=(1, 2)))

    return x, jnp.full(b.shape[0], k, jnp.int32), norms(residual), norms(b), res_s, \
        norms(rhs), ok


def _elastic(cfg, pk, base, directions, stress_pairs):
    """Everything the tensor needs, in one compiled call: ``∂U/∂ε`` (d, d) over
    ``stress_pairs``, the affine ``∂²U/∂θ_p∂θ_q`` (m, m), the relaxation ``Ξ_p · dy_q``
    (m, m), the non-affine fields ``dy_q`` (m, N, d) and the m solves' reports."""
    import sensitivity

    from ._linear_system import optimality, engine_solver

    m, d = directions.shape[0], directions.shape[1]
    solve = engine_solver(cfg, pk, cfg.solver)
    zeros = jnp.zeros(m, jnp.float64)

    def at(thetas):
        return base._replace(strain=jnp.einsum("p,pab->ab", thetas, directions))

    def energy(thetas):
        return pk.model.energy(pk.y, at(thetas), pk.pairs)

    def forces(y, thetas):
        return optimality(pk, y, at(thetas))

    stress_grad = jax.grad(lambda s: pk.model.energy(pk.y, base._replace(strain=s),
                                                     stress_pairs))(jnp.zeros((d, d)))
    affine = jax.hessian(energy)(zeros)
    per_particle = per_particle_stress(pk.model, pk.y, base, stress_pairs, 1.0)

    def mixed(tangent):  # Ξ_p = ∂F/∂θ_p
        return jax.jvp(lambda t: forces(pk.y, t), (zeros,), (tangent,))[1]

    if _block_solve(cfg):
        xi = jax.vmap(mixed)(jnp.eye(m, dtype=jnp.float64))
        n_dof = pk.y.shape[0] * pk.y.shape[1]
        maxiter = sensitivity.default_maxiter(n_dof) if cfg.maxiter is None else cfg.maxiter
        dy, iters, res, rhs, res_s, rhs_s, ok = _strain_solve(pk, -xi, cfg.tol, maxiter)
        infos = sensitivity.LinearSolveInfo(
            iterations=iters, residual_norm=res, rhs_norm=rhs, converged=ok,
            inconsistency=jnp.zeros(m), tolerance=cfg.tol * rhs, solver_residual_norm=res_s,
            solver_rhs_norm=rhs_s)
    else:
        def one(tangent):
            dy, info = sensitivity.root_jvp(forces, pk.y, (zeros,), (tangent,), solve=solve,
                                            full_output=True)
            return dy, mixed(tangent), info

        dy, xi, infos = jax.lax.map(one, jnp.eye(m, dtype=jnp.float64))
    relaxation = jnp.einsum("pnd,qnd->pq", xi, dy)
    return stress_grad, affine, relaxation, dy, infos, per_particle


def _block_solve(cfg) -> bool:
    """Whether the strain solves run as one block CG (:func:`_strain_solve`): CG with the
    block-Jacobi (or Jacobi) scaling folded into the operator, the default; other solvers
    and preconditioners solve one component after another through the engine."""
    return cfg.solver == "cg" and cfg.preconditioner in ("jacobi", "block_jacobi")


def elastic_response(solver) -> dict:
    """Stress, pressure, the elastic tensor and the moduli at the solver's packing.

    One implicit solve per strain component (3 in 2D, 6 in 3D), with the solver's settings
    (tolerance, preconditioner, null space): with CG and the (block) Jacobi scaling, the
    default, all of them in one block CG (:func:`_strain_solve`; the reported iterations
    are then the block's, taken by every component). The stress is taken over every
    interacting pair; the tensor over the backbone's (a rattler's contacts carry no force
    and it follows any strain freely, so they add nothing to C).

    Returns:
      dict: ``stress`` (d, d), ``per_particle_stress`` (N, d, d) (:func:`per_particle_stress`,
      summing to ``stress``), ``elastic_tensor`` (d, d, d, d), ``pressure``,
      ``bulk_modulus``, ``shear_modulus``, ``volume``, the definitions, the solves' report
      (``iterations``, ``residual``, ``relative_residual``, ``converged``, ...),
      ``relaxation_asymmetry`` (``|R - Rᵀ| / |R|`` of the relaxation term, a check of the
      solves), ``nonaffine`` (m, N, d) ``λ dy*/dθ_p`` per component (rattlers NaN) and
      ``time_s``.
    """
    from .contacts import gauge_fix, padded_pairs, pair_capacity
    from ._linear_system import merge_reports

    model = solver.model
    if not model.periodic:
        raise InputError("sensitivity.elasticity needs a periodic box; this system has free "
                         "boundaries")
    dim, n = model.dim, model.n
    comps = STRAIN_COMPONENTS[dim]
    directions = jnp.asarray(np.stack([strain_direction(c, dim) for c in comps]))
    all_pairs = solver.contacts["pairs"]
    i, j = np.asarray(all_pairs.i), np.asarray(all_pairs.j)
    stress_pairs = padded_pairs(i, j, n, pair_capacity(len(i), n, "stress"))
    params = solver.params
    volume = box_volume(model, params)
    cfg = solver._config(tags=("elasticity",))
    (grad, affine, relaxation, dy, infos, per_particle), t_run, t_compile = solver._run(
        _elastic, cfg, solver.data, params, directions, stress_pairs)
    report = merge_reports([infos])
    sym = 0.5 * (relaxation + relaxation.T)
    asym = float(np.linalg.norm(relaxation - relaxation.T) / max(np.linalg.norm(relaxation),
                                                                   1e-300))
    tensor = _tensor_from_components((affine + sym) / volume, dim)
    stress = 0.5 * (grad + grad.T) / volume
    bulk, shear = moduli(tensor)
    scale = float(params.scale)
    return {
        "stress": stress,
        "per_particle_stress": per_particle / volume,
        "elastic_tensor": tensor,
        "pressure": pressure_of(stress),
        "bulk_modulus": bulk,
        "shear_modulus": shear,
        "volume": volume,
        "components": list(comps),
        "stress_definition": STRESS_DEFINITION,
        "tensor_definition": TENSOR_DEFINITION,
        "bulk_modulus_definition": BULK_DEFINITION,
        "shear_modulus_definition": SHEAR_DEFINITION,
        "solver": cfg.solver,
        "preconditioner": cfg.preconditioner,
        "tol": cfg.tol,
        **report,
        "relaxation_asymmetry": asym,
        "nonaffine": gauge_fix(scale * dy, solver.rattlers),
        "time_s": t_run,
        "time_compile_s": t_compile,
    }


# ---------------------------------------------------------------------------------------
# Total derivatives of the observables U, σ, p along every θ.


def _volume(model: PairModel, params: PotentialParams):
    """The box volume at ``params`` (jax, differentiable in λ and ε)."""
    volume = cell_volume(model.box) * params.scale ** model.dim
    if params.strain is not None:
        volume = volume * jnp.linalg.det(jnp.eye(model.dim) + params.strain)
    return volume


def observables(model: PairModel, y, params: PotentialParams, pairs: Pairs):
    """``(U, σ, p)`` at reference positions ``y``: the energy, the stress of the current
    configuration (the virial over the current pair vectors, divided by the current volume)
    and the pressure (jax, differentiable in ``y`` and ``params``)."""
    energy = model.energy(y, params, pairs)
    stress = virial_stress(model, y, params, pairs, _volume(model, params))
    return energy, stress, -jnp.trace(stress) / model.dim


def _along(cfg, pk, base, thetas0, members, dy, tangents, extra, *, fn):
    """``fn(pk, y, params, extra)`` at x* and its total derivative along each of K θ
    directions: ``jvp`` in ``(y, θ)`` with tangents ``(dy_k, t_k)`` (forward mode from the
    solved responses ``dy`` (K, N, d); ``tangents`` a tuple, per θ tag, of (K, ...) arrays).
    ``cfg.tags`` name the θ rules (:func:`systems.response.apply_theta`)."""
    from ._linear_system import params_at

    def f(y, thetas):
        return fn(pk, y, params_at(cfg, base, thetas, thetas0, members), extra)

    def one(args):
        dy_k, t_k = args
        return jax.jvp(f, (pk.y, thetas0), (dy_k, t_k))[1]

    return f(pk.y, thetas0), jax.lax.map(one, (dy, tangents))


def _observables_fn(pk, y, params, extra):
    return observables(pk.model, y, params, pk.pairs)


_observables_along = functools.partial(_along, fn=_observables_fn)


def theta_groups(solver, pspecs, responses):
    """The θs in compiled batches: every scalar θ together, each vector θ alone. Yields
    ``(names, vector, tags, thetas0, members, dy, tangents)`` for :func:`_along`."""
    scalars = [p for p in pspecs if p.kind != "diameters"]
    if scalars:
        data = [reference_response(solver, p, responses[p.name]["dx_dtheta"]) for p in scalars]
        eye = jnp.eye(len(scalars), dtype=jnp.float64)
        yield ([p.name for p in scalars], False, tuple(d[0] for d in data),
               tuple(d[1] for d in data), tuple(d[2] for d in data),
               jnp.concatenate([d[3] for d in data]),
               tuple(eye[:, k] for k in range(len(scalars))))
    for p in pspecs:
        if p.kind == "diameters":
            tag, theta0, member, dy, tangents = reference_response(
                solver, p, responses[p.name]["dx_dtheta"])
            yield [p.name], True, (tag,), (theta0,), (member,), dy, (tangents,)


def reference_response(solver, pspec, dx_dtheta):
    """θ's rule and its response in reference coordinates: ``(tag, theta0, member, dy,
    tangents)`` with ``dy`` (K, N, d) from ``dx = ∂x/∂θ|_y + λ dy`` (at ε = 0; rattler rows
    zero) and ``tangents`` (K, ...) the unit tangents of θ's K components."""
    from .potentials import real_positions
    from .theta import apply_theta, theta_data

    params = solver.params
    y = jnp.asarray(solver.y)
    tag, theta0, member = theta_data(pspec, params, np.asarray(solver.model.species))
    dx = np.asarray(dx_dtheta, np.float64)
    vector = dx.ndim == 3
    dx = dx if vector else dx[None]
    tangents = (jnp.eye(dx.shape[0], dtype=jnp.float64) if vector
                else jnp.ones((1,), jnp.float64))

    def affine(t):
        return real_positions(apply_theta(tag, params, t, theta0, member), y)

    dx_affine = np.stack([np.asarray(jax.jvp(affine, (theta0,), (t,))[1])
                          for t in tangents]) if tag in ("box", "strain") else 0.0
    dy = np.nan_to_num((dx - dx_affine) / float(params.scale))
    return tag, theta0, member, jnp.asarray(dy), tangents


def observable_derivatives(solver, pspecs, responses) -> dict:
    """Total ``dU/dθ``, ``dσ/dθ`` and ``dp/dθ`` for every θ, through x*.

    Forward mode from the responses already solved (``responses[name]["dx_dtheta"]``,
    gauge-fixed, rattler rows NaN): no further linear solve, which is the cheaper mode
    whatever the number of θs, since ∂x*/∂θ is computed for every θ anyway. The
    observables are taken over the backbone's pairs (a rattler's contacts carry no force
    and follow it freely). Since ``∇_y U = 0`` at x*, ``dU/dθ = ∂U/∂θ``.

    Returns:
      ``{name: {"dU_dtheta", "dp_dtheta", "dsigma_dtheta"}}``: scalars and a (d, d) matrix
      for a scalar θ; (P,), (P,) and (P, d, d) arrays for a θ with P components.
    """
    out = {}
    for names, vector, tags, thetas0, members, dy, tangents in theta_groups(solver, pspecs,
                                                                         responses):
        cfg = solver._config(tags=tags)
        (_, (d_energy, d_stress, d_pressure)), _, _ = solver._run(
            _observables_along, cfg, solver.data, solver.params, thetas0, members, dy,
            tangents, ())
        if vector:
            out[names[0]] = {"dU_dtheta": d_energy, "dp_dtheta": d_pressure,
                             "dsigma_dtheta": d_stress}
            continue
        for k, name in enumerate(names):
            out[name] = {"dU_dtheta": float(d_energy[k]), "dp_dtheta": float(d_pressure[k]),
                         "dsigma_dtheta": d_stress[k]}
    return out
