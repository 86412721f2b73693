"""The linear system of a relaxed packing: its optimality condition and the engine's solver.

The arrays of one relaxed packing (:class:`PackingData`) and the static, hashable settings
of a solve (:class:`SolveConfig`) are the arguments of every compiled function of the response
(:mod:`systems.response`) and of its users (:mod:`systems.elasticity`,
:mod:`systems.many_rhs`, :mod:`systems.reverse`, :mod:`systems.linear_range`):

* :func:`optimality`: ``F(y, θ) = ∇_y E`` over the backbone's pairs plus the tether of the
  rattler coordinates, whose JVP in ``y`` is the product with the precomputed Hessian;
* :func:`engine_solver`: the engine's Krylov or dense solver with the packing's null space (its
  rigid motions, :func:`nullspace`), tolerance and preconditioner (the congruence scaling
  ``jacobi`` / ``block_jacobi``, ``two_level`` or ``schwarz``);
* :func:`custom_root_solver`: the already-relaxed solver decorated with ``sensitivity.custom_root``;
* :func:`hessian_data`: the pair stiffness blocks, the tether and the Hessian in padded
  block rows, computed once per packing;
* :func:`merge_reports`: the engine's ``LinearSolveInfo`` reports folded into attributes.

Compiled executables are cached per (function, config, argument shapes) under the owner
``"response"`` (:mod:`systems._compile`), so the tasks of a sweep that share N, the
potential and the box compile once (their pair lists are padded to shared capacity
buckets, :func:`~systems.contacts.pair_capacity`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _compile
from .contacts import rigid_motions
from .hessian import BlockHessian, EllPattern, assemble_block_hessian, hessian_matvec, scale_blocks
from .potentials import PairModel, Pairs, with_position_jvp
from .preconditioners import (BlockJacobi, apply_block_jacobi, apply_schwarz, build_block_scaling)
from .theta import apply_theta

__all__ = ["DENSE_SOLVERS", "PRECONDITIONED_SOLVERS", "SCALINGS", "PackingData", "SolveConfig",
           "compile_seconds", "compiled", "custom_root_solver", "engine_solver", "hessian_data",
           "merge_reports", "nullspace", "optimality", "params_at", "relative"]

PRECONDITIONED_SOLVERS = ("cg", "minres", "gmres", "bicgstab")
SCALINGS = ("jacobi", "block_jacobi")  # folded into the operator: _block_scaling
DENSE_SOLVERS = ("dense", "lstsq", "lu", "cholesky")


class PackingData(NamedTuple):
    """The arrays of one relaxed packing that the response's compiled functions take.

    Attributes:
      model: the pair model (a pytree: species is traced, the rest static).
      y: ``(N, d)`` relaxed positions in the reference box.
      active: ``(N,)`` 1.0 for the backbone, 0.0 for rattlers.
      pairs: the backbone's interacting pairs, padded (index N, weight 0).
      stiffness: the pair stiffness blocks at ``(y, θ0)``, one per pair.
      tether: the stiffness of the spring holding a rattler coordinate in the linear system.
      hessian: the Hessian at ``(y, θ0)``, tethers included, in padded block rows
        (:class:`~systems.hessian.BlockHessian`): every Hessian-vector product.
      precond: preconditioner data (``two_level``: cell index and coarse pseudo-inverse;
        ``schwarz``: :class:`~systems.preconditioners.Schwarz`).
    """

    model: PairModel
    y: jax.Array
    active: jax.Array
    pairs: Pairs
    stiffness: jax.Array
    tether: jax.Array
    hessian: BlockHessian
    precond: Any


class SolveConfig(NamedTuple):
    solver: str
    tol: float
    maxiter: int | None
    preconditioner: str
    report: bool
    tags: tuple = ()
    chunk: int = 0
    steps: int = 0


def compile_seconds() -> float:
    """Seconds this process has spent compiling the response's functions so far."""
    return _compile.compile_seconds("response")


def compiled(fn: Callable, cfg: SolveConfig, *args):
    """``jit(partial(fn, cfg)).lower(*args).compile()``, cached; returns (exe, seconds)."""
    return _compile.compiled("response", fn, cfg, *args)



def nullspace(pk: PackingData):
    """``(k, N, d)``: the rigid motions of the backbone. Rattler coordinates are tethered,
    so not in the null space."""
    return rigid_motions(pk.y, pk.active, pk.model.periodic, jnp)


def optimality(pk: PackingData, y, params):
    """``F(y, θ) = ∇_y E(y, θ)`` over the backbone's pairs, plus ``k (y - y*)`` on the
    rattler coordinates (zero at y*, so their response is zero: reported as NaN).

    Its JVP in ``y`` is the product with the precomputed Hessian ``pk.hessian`` (every
    product of the implicit derivative is taken at ``(y*, θ0)``, where it was built); its
    JVP in ``θ`` is automatic differentiation of the forces.
    """
    grad = pk.model.gradient_fn(pk.pairs)

    def plain(y, params):
        return grad(y, params) + pk.tether * (1.0 - pk.active)[:, None] * (y - pk.y)

    fun = with_position_jvp(plain, lambda y, params, y_dot: hessian_matvec(pk.hessian, y_dot))
    return fun(y, params)


def _block_inverse(pk: PackingData):
    """Inverse d×d diagonal blocks of the Hessian (identity where a block is empty)."""
    d = pk.y.shape[1]
    diag = pk.hessian.rows[:, :, :d]  # entry 0 of each block row: the diagonal block
    scale = jnp.trace(diag, axis1=1, axis2=2)
    ok = scale > 1e-12 * jnp.max(scale)
    inv = small_inverse(jnp.where(ok[:, None, None], diag, jnp.eye(d)))
    return jnp.where(ok[:, None, None], inv, jnp.eye(d))


def small_inverse(a):
    """Inverses of a stack of small matrices (``(..., d, d)``, d ≤ 3 here) by Gauss-Jordan
    elimination with partial pivoting, unrolled: no LAPACK call, whose first lowering in a
    process makes jaxlib load SciPy's BLAS/LAPACK (a quarter of a second of every run's
    start-up, ``benchmarks/README.md``). Pivoting keeps the error at LU's level,
    ``~ eps · cond``, for the nearly singular blocks of a particle with few contacts."""
    d = a.shape[-1]
    eye = jnp.eye(d, dtype=a.dtype)
    m = jnp.concatenate([a, jnp.broadcast_to(eye, a.shape)], axis=-1)  # (..., d, 2d)
    rows = jnp.arange(d)
    for k in range(d):
        size = jnp.where(rows >= k, jnp.abs(m[..., :, k]), -1.0)
        pivot = (rows == jnp.argmax(size, axis=-1)[..., None]).astype(a.dtype)  # one-hot
        row_k, row_p = m[..., k, :], jnp.sum(pivot[..., None] * m, axis=-2)
        m = m + (eye[k] - pivot)[..., :, None] * (row_p - row_k)[..., None, :]  # swap k, p
        row_k = row_p / row_p[..., k:k + 1]
        m = m - (m[..., :, k] * (1.0 - eye[k]))[..., :, None] * row_k[..., None, :]
        m = jnp.where((rows == k)[:, None], row_k[..., None, :], m)
    return m[..., d:]


def _linear_solve(cfg: SolveConfig, pk: PackingData, name: str, report: bool):
    """``solve(matvec, b)``: :func:`engine_solver`, its LinearSolveInfo recorded by
    :func:`sensitivity.record_solves` (``report``: a host callback per solve) or not."""
    solve = engine_solver(cfg, pk, name)
    if report:
        return solve  # accepts full_output: custom_root sends its report to record_solves
    return lambda matvec, b: solve(matvec, b)  # no full_output: nothing recorded


def engine_solver(cfg: SolveConfig, pk: PackingData, name: str):
    """The engine's solver with this packing's null space, tolerance and preconditioner."""
    import sensitivity

    solve = sensitivity.get_solver(name)
    # consistency_tol=inf: a pair potential's ∂F/∂θ is analytically orthogonal to the
    # rigid motions (Newton's third law, central forces); what the engine would measure
    # along them is round-off, which matters when ∂F/∂θ is itself tiny (a uniform ε:
    # ∂F/∂ε = F/ε, the residual force). It is still reported as "inconsistency".
    options: dict[str, Any] = dict(tol=cfg.tol, nullspace=nullspace(pk), on_failure="ignore",
                                   consistency_tol=float("inf"))
    if cfg.maxiter is not None and name not in DENSE_SOLVERS:
        options["maxiter"] = int(cfg.maxiter)
    precond = cfg.preconditioner
    if name in PRECONDITIONED_SOLVERS and precond in SCALINGS:
        options["scaling"] = _block_scaling(pk)
    elif name in PRECONDITIONED_SOLVERS and precond == "schwarz":
        options["M"] = lambda r: apply_schwarz(pk.precond, r)
    elif name in PRECONDITIONED_SOLVERS and precond == "two_level":
        inv = _block_inverse(pk)
        cid, coarse_inv = pk.precond
        nc = coarse_inv.shape[0] // pk.y.shape[1]

        def apply_m(r):
            restricted = jax.ops.segment_sum(r, cid, nc).reshape(-1)
            coarse = (coarse_inv @ restricted).reshape(nc, -1)
            return apply_block_jacobi(BlockJacobi(inv), r) + coarse[cid]

        options["M"] = apply_m
    return functools.partial(solve, **options)



def _block_scaling(pk: PackingData):
    """The engine's congruence scaling (``jacobi``, ``block_jacobi``): ``S = D^(-1/2)`` of
    :func:`~systems.preconditioners.build_block_scaling` (in ``pk.precond``), with ``S H S`` folded
    into the Hessian's blocks, so each iteration is one product with the scaled blocks.
    The engine solves ``(S H S) z = S P b`` and returns ``x = P S z``, the minimum-norm
    solution of ``H x = b``; its convergence test is on the scaled residual ``‖S r‖ ≤ tol
    ‖S P b‖`` (see :class:`sensitivity.CongruenceScaling`)."""
    import sensitivity

    sc = pk.precond
    return sensitivity.CongruenceScaling(
        scale=lambda v: scale_blocks(sc.scale, v),
        scaled_matvec=lambda v: hessian_matvec(sc.hessian, v),
        unscale=lambda v: scale_blocks(sc.unscale, v))


def custom_root_solver(cfg: SolveConfig, pk: PackingData, name: str | None = None,
             report: bool | None = None):
    """``relaxed(init, params) -> y*`` decorated with ``sensitivity.custom_root``: the
    relaxation already happened, so it returns ``init``; only its derivative is new."""
    import sensitivity

    name = name or cfg.solver
    report = cfg.report if report is None else report

    @sensitivity.custom_root(lambda y, params: optimality(pk, y, params),
                             solve=_linear_solve(cfg, pk, name, report), symmetric=True)
    def relaxed(init, params):
        return init

    return relaxed


def params_at(cfg: SolveConfig, base, thetas, thetas0, members):
    params = base
    for k, tag in enumerate(cfg.tags):
        params = apply_theta(tag, params, thetas[k], thetas0[k], members[k])
    return params


def hessian_data(cfg: SolveConfig, model: PairModel, y, params, pairs: Pairs,
                  pattern: EllPattern, active):
    """The pair stiffness blocks, the rattler tether, the Hessian in block rows (tethers
    included) and, for ``jacobi`` / ``block_jacobi``, its block scaling (else ``()``)."""
    stiffness = model.pair_stiffness(y, params, pairs)
    n, d = y.shape
    # the tether: the mean diagonal stiffness of a backbone coordinate (each pair adds
    # its block to two diagonal blocks)
    trace = jnp.sum(jnp.trace(stiffness, axis1=-2, axis2=-1) * pairs.weight)
    tether = 2.0 * trace / jnp.maximum(jnp.sum(active) * d, 1.0)
    tether = jnp.where(tether > 0, tether, 1.0)
    diagonal = (tether * (1.0 - active))[:, None, None] * jnp.eye(d, dtype=y.dtype)
    hessian = assemble_block_hessian(pattern, pairs.i, pairs.j,
                                     stiffness * pairs.weight[:, None, None], diagonal)
    precond = ()
    if cfg.preconditioner in SCALINGS:
        precond = build_block_scaling(hessian, diagonal_only=cfg.preconditioner == "jacobi")
    return stiffness, tether, hessian, precond



def relative(residual, rhs):
    """``residual / rhs`` elementwise, 0 where the right-hand side is 0."""
    return np.where(rhs > 0, residual / np.where(rhs > 0, rhs, 1.0), 0.0)


def merge_reports(reports) -> dict:
    """Fold the engine's LinearSolveInfo reports (maybe batched) into attributes."""
    if not reports:
        return {"iterations": 0, "iterations_total": 0, "residual": math.nan,
                "relative_residual": math.nan, "solver_relative_residual": math.nan,
                "converged": False,
                "inconsistency": math.nan, "n_solves": 0}


    def gather(field):
        return np.concatenate([np.ravel(np.asarray(getattr(r, field))) for r in reports])

    iters = gather("iterations")
    res = gather("residual_norm")
    rhs = gather("rhs_norm")
    res_s = gather("solver_residual_norm")  # the norms the convergence test compared
    rhs_s = gather("solver_rhs_norm")
    rel_s = relative(res_s, rhs_s)
    conv = gather("converged")
    incons = gather("inconsistency")
    rel = relative(res, rhs)
    return {
        "iterations": int(iters.max()),
        "iterations_total": int(iters.sum()),
        "residual": float(res.max()),
        "relative_residual": float(rel.max()),
        # what the convergence test compared with tol (the scaled system's for jacobi /
        # block_jacobi: ‖S r‖ / ‖S b‖; else the same as relative_residual)
        "solver_relative_residual": float(rel_s.max()),
        "converged": bool(conv.all()),
        "inconsistency": float(incons.max()),
        "n_solves": int(iters.size),
    }
