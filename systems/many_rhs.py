"""The whole response matrix of a vector θ with one sparse factorization of the Hessian.

θ kind ``diameters`` asks for ``∂x*/∂d_p`` for every particle p: ``P = N`` right-hand sides
``b_p = -∂F/∂d_p`` of one linear system ``H v_p = b_p`` (``F = ∇ₓE``, ``H`` its Hessian at
the relaxed packing). Three ways, chosen by :func:`choose_method` (reason recorded in the
result's report, ``sensitivity.many_rhs`` overrides):

* ``dense``: the dense Hessian factored once (small systems; :mod:`systems.response`);
* ``factorization``: the Hessian assembled as a ``scipy.sparse`` matrix over the backbone
  coordinates (rattlers removed: their response is zero, reported NaN), factored once by
  the engine's :func:`sensitivity.factorize_sparse` (SuperLU, minimum-degree ordering of
  ``H + Hᵀ``, symmetric pivoting) with the backbone's rigid motions as its null space, and
  solved for every column (level-scheduled triangular solves over a chunk of columns at
  once). The answer is the minimum-norm one, the gauge of the Krylov path (mean response of
  the backbone zero; in free space also no rigid rotation);
* ``iterative``: one preconditioned Krylov solve per column (batched), the engine's
  matrix-free path, where a factorization would not fit.

The right-hand sides come from JAX: the optimality function of :mod:`systems.response`
linearized in θ once, its linear map applied to a chunk of unit tangents (``vmap``); the
Hessian is the one :class:`~systems.response.ResponseSolver` already assembled in padded
block rows (:class:`~systems.hessian.BlockHessian`), converted entry for entry.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from . import settings
from ._linear_system import DENSE_SOLVERS
from ._reports import ObservableReport
from .hessian import BlockHessian, ell_blocks

__all__ = ["MANY_RHS_METHODS", "DENSE_MANY_RHS_MAX_DOF", "FACTOR_MAX_DOF", "choose_method",
           "sparse_hessian", "distance2_coloring", "factorized_vector_derivative",
           "FactorizedJacobian",
           "result_bytes", "check_result_size", "backbone_factorization",
           "reverse_vector_derivative"]

#: Values of ``sensitivity.many_rhs``.
MANY_RHS_METHODS = settings.MANY_RHS

#: ``auto``: at most this many unknowns, one dense factorization (also capped by
#: ``sensitivity.dense_max_dof``); the sparse factorization is faster above it
#: (benchmarks/bench_many_rhs.py).
DENSE_MANY_RHS_MAX_DOF = 256

#: ``auto``: above this many unknowns (per dimension), Krylov solves per column instead of a
#: factorization whose fill grows faster than the matrix (2D: about n log n; 3D: n^(4/3)).
#: Measured at N = 4,096: 2D fill 7.3 × nnz(H), 3D 40 × (0.15 GB, factored in 25 s); 3D at
#: 60,000 unknowns extrapolates to about 1.5 GB and several minutes, against a result of 10 GB.
FACTOR_MAX_DOF = {2: 2_000_000, 3: 60_000}

def choose_method(settings: Mapping[str, Any], n_dof: int, n_rhs: int,
                  dim: int) -> tuple[str, str]:
    """``(method, reason)`` for ``n_rhs`` right-hand sides on ``n_dof`` unknowns.

    ``sensitivity.many_rhs`` other than ``auto`` wins; else a dense ``sensitivity.solver``
    means dense; else by size: dense up to ``min(dense_max_dof,``
    :data:`DENSE_MANY_RHS_MAX_DOF` ``)`` unknowns, a sparse factorization up to
    :data:`FACTOR_MAX_DOF`, Krylov solves above.
    """
    requested = settings.get("many_rhs") or "auto"
    if requested != "auto":
        return requested, f"sensitivity.many_rhs is {requested!r}"
    solver = settings.get("solver")
    if solver in DENSE_SOLVERS:
        return "dense", f"sensitivity.solver is {solver!r} (dense)"
    dense_max = min(int(settings.get("dense_max_dof", DENSE_MANY_RHS_MAX_DOF)),
                    DENSE_MANY_RHS_MAX_DOF)
    if n_dof <= dense_max:
        return "dense", f"{n_dof} unknowns <= {dense_max}: one dense factorization"
    factor_max = FACTOR_MAX_DOF.get(int(dim), min(FACTOR_MAX_DOF.values()))
    if n_dof <= factor_max:
        return "factorization", (f"{n_dof} unknowns > {dense_max} (dense) and <= {factor_max} "
                                 f"({dim}D factorization limit), {n_rhs} right-hand sides: "
                                 "one sparse factorization")
    return "iterative", (f"{n_dof} unknowns > {factor_max} ({dim}D factorization limit): "
                         "Krylov solves per right-hand side")


#: ``sensitivity.max_result_gib`` null: refuse a result above this fraction of the free
#: memory (and of the free disk where the output folder is known).
RESULT_FRACTION = 0.5


def result_bytes(pspecs, n: int, dim: int) -> int:
    """Bytes of every ``dx_dtheta`` of a run (float64): ``[N][N][d]`` for kind
    ``diameters``, ``[N][d]`` otherwise."""
    return sum(8 * n * dim * (n if p.kind == "diameters" else 1) for p in pspecs)


def check_result_size(pspecs, n: int, dim: int, settings: Mapping[str, Any], *,
                      where: str = "config", output_dir=None) -> int:
    """Refuse (InputError) a run whose result would exceed ``sensitivity.max_result_gib``
    (null: :data:`RESULT_FRACTION` of the free memory, and of the free disk of
    ``output_dir`` when given), before anything is computed. Returns the bytes."""
    import shutil

    import psutil

    from ._errors import InputError

    need = result_bytes(pspecs, n, dim)
    limit_gib = settings.get("max_result_gib")
    if limit_gib is not None:
        limit = float(limit_gib) * 2**30
        what = f"sensitivity.max_result_gib = {float(limit_gib):g}"
    else:
        free = psutil.virtual_memory().available
        what = f"{RESULT_FRACTION:g} of the free memory ({free / 2**30:.1f} GiB)"
        if output_dir is not None:
            out = Path(output_dir).absolute()
            folder = next((p for p in [out, *out.parents] if p.exists()), None)
            if folder is not None:
                disk = shutil.disk_usage(folder).free
                if disk < free:
                    free = disk
                    what = f"{RESULT_FRACTION:g} of the free disk ({disk / 2**30:.1f} GiB)"
        limit = RESULT_FRACTION * free
    if need > limit:
        big = [p.name for p in pspecs if p.kind == "diameters"]
        detail = (f" ({', '.join(big)}: [N][N][d] = [{n}][{n}][{dim}] float64 each)"
                  if big else "")
        raise InputError(
            f"{where}: the result would take {need / 2**30:.2f} GiB{detail}, more than "
            f"{limit / 2**30:.2f} GiB ({what}); use a kind 'diameter' θ per species instead "
            "of 'diameters' (one [N][d] field each), a smaller packing, or raise "
            "sensitivity.max_result_gib")
    return need


def sparse_hessian(hessian: BlockHessian, keep=None):
    """The ELL Hessian as a ``scipy.sparse`` CSR matrix ``(N d, N d)`` (host), restricted to
    the particles where ``keep`` (``(N,)`` bool) is True (rows and columns of the others
    dropped; coordinates in order, particle-major)."""
    import scipy.sparse as sp

    idx = np.asarray(hessian.idx)
    blocks = ell_blocks(hessian)  # (N, K, d, d)
    n, cap, d, _ = blocks.shape
    rows = np.broadcast_to(np.arange(n)[:, None, None, None] * d
                           + np.arange(d)[None, None, :, None], blocks.shape)
    cols = np.broadcast_to(idx[:, :, None, None] * d + np.arange(d)[None, None, None, :],
                           blocks.shape)
    values = blocks.ravel()
    live = values != 0.0
    matrix = sp.csr_matrix((values[live], (rows.ravel()[live], cols.ravel()[live])),
                           shape=(n * d, n * d))
    matrix.sum_duplicates()
    if keep is None:
        return matrix
    coords = np.repeat(np.asarray(keep, bool), d)
    return matrix[coords][:, coords].tocsr()


def _rhs_columns(cfg, pk, base, theta0, member, start):
    """``(-∂F/∂θ_k (chunk, N, d), ∂scale/∂θ_k (chunk,))`` for ``k = start .. start+chunk``:
    the forces linearized in θ once, the linear map applied to each unit tangent."""
    from ._linear_system import optimality
    from .theta import apply_theta

    (tag,) = cfg.tags
    n = theta0.shape[0]

    def params_of(theta):
        return apply_theta(tag, base, theta, theta0, member)

    _, forces_lin = jax.linearize(lambda t: optimality(pk, pk.y, params_of(t)), theta0)
    _, scale_lin = jax.linearize(lambda t: params_of(t).scale, theta0)
    tangents = jax.nn.one_hot(start + jnp.arange(cfg.chunk), n, dtype=theta0.dtype)
    return -jax.vmap(forces_lin)(tangents), jax.vmap(scale_lin)(tangents)


def distance2_coloring(n: int, i, j) -> np.ndarray:
    """A colour per particle such that two particles within two pair steps of each other
    (neighbours, or sharing a neighbour) differ: greedy, in index order (host).

    Column ``p`` of ``∂F/∂d`` is non-zero only on ``p`` and its pair neighbours, so the
    columns of one colour have disjoint supports: one JVP with the colour's indicator as
    tangent gives all of them (Curtis, Powell & Reid 1974; Gebremedhin, Manne & Pothen,
    SIAM Rev. 47, 2005). In a 2D packing about 30 colours replace N JVPs.
    """
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    keep = (i < n) & (j < n) & (i != j)
    rows = np.concatenate([i[keep], j[keep]])
    cols = np.concatenate([j[keep], i[keep]])
    order = np.argsort(rows, kind="stable")
    cols = cols[order]
    ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    color = np.full(n, -1, np.int64)
    for p in range(n):
        first = cols[ptr[p]:ptr[p + 1]]
        near = np.concatenate([first] + [cols[ptr[q]:ptr[q + 1]] for q in first])
        taken = np.zeros(len(near) + 2, bool)
        c = color[near]
        c = c[(c >= 0) & (c < len(taken))]
        taken[c] = True
        color[p] = int(np.argmin(taken))
    return color


def _rhs_seeded(cfg, pk, base, theta0, member, seeds):
    """``-∂F/∂θ · s`` for each row ``s`` of ``seeds (C, P)``: the forces linearized in θ
    once, the linear map applied to every seed (colour indicators, :func:`distance2_coloring`)."""
    from ._linear_system import optimality
    from .theta import apply_theta

    (tag,) = cfg.tags
    _, forces_lin = jax.linearize(
        lambda t: optimality(pk, pk.y, apply_theta(tag, base, t, theta0, member)), theta0)
    return -jax.vmap(forces_lin)(seeds)


class _ColoredRHS:
    """Every column of ``-∂F/∂d`` (kind ``diameters``) from one JVP per colour: a column's
    entries are its particle's own row and its neighbours' rows in its colour's JVP."""

    def __init__(self, solver, tag, theta0, member, backbone):
        n, d = solver.model.n, solver.model.dim
        i, j = (np.asarray(a, np.int64) for a in (solver.pairs.i, solver.pairs.j))
        color = distance2_coloring(n, i, j)
        n_colors = int(color.max()) + 1
        padded = -(-n_colors // 8) * 8  # a bucket: packings of one N share the compiled JVPs
        seeds = np.zeros((padded, n))
        seeds[color, np.arange(n)] = 1.0
        cfg = solver._config(tags=[tag])
        t0 = time.perf_counter()
        out, _, self.time_compile_s = solver._run(_rhs_seeded, cfg, solver.data, solver.params,
                                                  theta0, member, jnp.asarray(seeds))
        self.time_s = time.perf_counter() - t0 - self.time_compile_s
        self.colors = n_colors
        position = np.full(n, -1, np.int64)  # particle -> backbone row
        position[backbone] = np.arange(int(backbone.sum()))
        # (column, row) of every entry: a particle's own row, and both ends of every pair
        self.column = np.concatenate([np.arange(n), i, j])
        self.row = np.concatenate([np.arange(n), j, i])
        live = (position[self.row] >= 0)
        self.column, self.row = self.column[live], self.row[live]
        self.values = np.asarray(out)[color[self.column], self.row]  # (entries, d)
        self.position = position[self.row]
        self.d = d
        self.nb = int(backbone.sum())

    def block(self, start: int, stop: int) -> np.ndarray:
        """Columns ``start .. stop`` over the backbone coordinates, ``(stop - start, nb d)``."""
        out = np.zeros((stop - start, self.nb, self.d))
        sel = (self.column >= start) & (self.column < stop)
        out[self.column[sel] - start, self.position[sel]] = self.values[sel]
        return out.reshape(stop - start, -1)


def backbone_factorization(solver):
    """The engine's sparse factorization of the backbone Hessian of ``solver`` (a
    :class:`~systems.response.ResponseSolver`): rattler coordinates dropped, the backbone's
    rigid motions as the null space. Made once per solver and kept on it."""
    import sensitivity

    from .contacts import nullspace_basis

    factor = getattr(solver, "_backbone_factorization", None)
    if factor is not None:
        return factor
    d = solver.model.dim
    backbone = ~np.asarray(solver.rattlers)
    matrix = sparse_hessian(solver.data.hessian, backbone)
    rigid = d + (0 if solver.model.periodic else d * (d - 1) // 2)
    basis = nullspace_basis(np.asarray(solver.y), solver.rattlers, solver.model.periodic)
    basis = basis[:rigid][:, backbone, :].reshape(rigid, -1)
    factor = sensitivity.factorize_sparse(matrix, nullspace=basis)
    solver._backbone_factorization = factor
    return factor


def _vjp_theta(cfg, pk, base, theta0, member, cotangents):
    """``-λ_kᵀ ∂F/∂θ`` for each row ``λ_k`` of ``cotangents (K, N, d)``: reverse mode
    through the forces in θ (one VJP each)."""
    from ._linear_system import optimality
    from .theta import apply_theta

    (tag,) = cfg.tags
    _, pullback = jax.vjp(
        lambda t: optimality(pk, pk.y, apply_theta(tag, base, t, theta0, member)), theta0)
    return -jax.vmap(lambda c: pullback(c)[0])(cotangents)


def reverse_vector_derivative(solver, pspec, cotangents):
    """``dO_k/dθ`` for a few observables linear in the positions, ``O_k = Σ_i c_k[i]·x*_i``,
    against every component of a vector θ: one adjoint solve per observable instead of one
    forward solve per component of θ.

    With the gauge of the forward path (backbone rigid motion removed, rattlers excluded),
    ``dO_k/dθ_p = Σ_i c_k[i]·∂x*_i/∂θ_p = -λ s ∂F/∂θ_p`` with ``H λ = P c_k`` on the
    backbone (``P`` off the rigid motions, ``s`` the box scale): the solve uses the sparse
    factorization (:func:`backbone_factorization`), the product with ``∂F/∂θ`` one VJP of
    the forces. Rattler rows of ``c_k`` are ignored (their response is undefined).

    Args:
      solver: a :class:`~systems.response.ResponseSolver`.
      pspec: the vector θ (kind ``diameters``).
      cotangents: ``(K, N, d)`` the observables' weights (e.g. a unit vector: one
        particle's coordinate).

    Returns:
      ``(K, P)`` the derivatives, and an :class:`~systems._reports.ObservableReport`
      (``method``, ``converged``, ``residual``, ``iterations``, ``n_solves``, times).
    """
    from .theta import theta_data

    t0 = time.perf_counter()
    n, d = solver.model.n, solver.model.dim
    c = np.asarray(cotangents, np.float64).reshape(-1, n, d)
    backbone = ~np.asarray(solver.rattlers)
    factor = backbone_factorization(solver)
    lam_b, info = factor.solve(c[:, backbone, :].reshape(len(c), -1),
                               tol=float(solver.settings["tol"]), full_output=True)
    lam = np.zeros_like(c)
    lam[:, backbone, :] = lam_b.reshape(len(c), -1, d)
    tag, theta0, member = theta_data(pspec, solver.params, np.asarray(solver.model.species))
    scale = float(np.asarray(solver.params.scale))
    out, _, t_compile = solver._run(_vjp_theta, solver._config(tags=[tag]), solver.data,
                                    solver.params, theta0, member, jnp.asarray(lam))
    report = ObservableReport(
        method=f"reverse mode, {len(c)} adjoint solve(s) with one sparse factorization "
               f"(SuperLU, {factor.ordering})",
        converged=bool(np.all(info.converged)),
        residual=float(np.max(info.residual_norm, initial=0.0)),
        iterations=int(np.max(info.iterations, initial=0)), n_solves=len(c),
        time_s=time.perf_counter() - t0 - t_compile, time_compile_s=t_compile)
    return scale * np.asarray(out), report


#: Columns of the Jacobian computed (and written) together: a multiple of the file's chunk
#: edge (:data:`systems.jacobian_file.CHUNK_EDGE`), so each HDF5 chunk is written once.
BLOCK_COLUMNS = 256


class FactorizedJacobian:
    """The ``[P][N][d]`` ∂x*/∂θ of a vector θ by one sparse factorization, computed in blocks
    of ``chunk`` columns (:meth:`blocks`), so that a caller can write each block as it comes
    (:func:`systems.jacobian_file.write_streamed`) instead of holding the whole result.

    After :meth:`blocks` is exhausted, :attr:`report` holds the
    :class:`~systems._reports.SolveReport` (as :func:`factorized_vector_derivative`'s).
    """

    def __init__(self, solver, pspec, reason: str = "", chunk: int | None = None,
                 progress=None):
        from .theta import theta_data

        self.solver, self.pspec, self.reason, self.progress = solver, pspec, reason, progress
        self.factor = backbone_factorization(solver)  # may raise LinAlgError: before any block
        self.tag, self.theta0, self.member = theta_data(pspec, solver.params,
                                                        np.asarray(solver.model.species))
        p_count = int(np.shape(self.theta0)[0])
        chunk = BLOCK_COLUMNS if chunk is None else chunk
        self.chunk = max(1, min(int(chunk), p_count))
        self.shape = (p_count, solver.model.n, solver.model.dim)
        self.report = None

    @property
    def nbytes(self) -> int:
        return 8 * int(np.prod(self.shape))

    def blocks(self):
        """Yield ``(start, stop, dx[start:stop])`` for every block of columns; rows ``p`` are
        ``∂x*/∂θ_p``, gauge-fixed (rattler rows NaN, the backbone's rigid motion removed)."""
        solver, pspec, factor = self.solver, self.pspec, self.factor
        tag, theta0, member, chunk = self.tag, self.theta0, self.member, self.chunk
        t0 = time.perf_counter()
        p_count, n, d = self.shape
        tol = float(solver.settings["tol"])
        backbone = ~np.asarray(solver.rattlers)
        nb = int(backbone.sum())
        y = np.asarray(solver.y)
        cfg = solver._config(tags=[tag], chunk=chunk)
        scale = float(np.asarray(solver.params.scale))
        infos = []
        t_rhs = t_compile = 0.0
        colored = None
        if tag == "diameters":  # ∂F/∂d follows the pair graph: one JVP per colour
            colored = _ColoredRHS(solver, tag, theta0, member, backbone)
            t_rhs, t_compile = colored.time_s, colored.time_compile_s
        for start in range(0, p_count, chunk):
            stop = min(p_count, start + chunk)
            t1 = time.perf_counter()
            if colored is not None:
                rhs, dscale = colored.block(start, stop), np.zeros(stop - start)
            else:  # one JVP per column (the last chunk overlaps the one before)
                first = min(start, p_count - chunk)
                (rhs, dscale), _, seconds = solver._run(_rhs_columns, cfg, solver.data,
                                                        solver.params, theta0, member,
                                                        jnp.asarray(first))
                t_compile += seconds
                t1 += seconds
                rhs = np.asarray(rhs)[start - first:, backbone, :].reshape(-1, nb * d)
                dscale = np.asarray(dscale)[start - first:]
            t_rhs += time.perf_counter() - t1
            dy, info = factor.solve(rhs, tol=tol, full_output=True)
            infos.append(info)
            block = np.full((stop - start, n, d), np.nan)
            block[:, backbone, :] = scale * dy.reshape(-1, nb, d)
            del dy, rhs
            if np.any(dscale != 0):  # x = λ y: an affine part (not for diameters)
                block[:, backbone, :] += dscale[:, None, None] * y[backbone]
            yield start, stop, block
            if self.progress is not None:
                self.progress("jacobian", name=pspec.name, columns=stop, of=p_count,
                              seconds=round(time.perf_counter() - t0, 3))
        self.report = self._report(infos, time.perf_counter() - t0 - t_compile, t_compile,
                                  t_rhs, colored)

    def _report(self, infos, t_total, t_compile, t_rhs, colored):
        from ._linear_system import relative

        p_count = self.shape[0]
        factor = self.factor
        gathered = {field: np.concatenate([np.ravel(getattr(i, field)) for i in infos])
                  for field in ("iterations", "residual_norm", "rhs_norm", "converged",
                                "inconsistency")}
        rhs_norm = gathered["rhs_norm"]
        rel = relative(gathered["residual_norm"], rhs_norm)
        info = {
            "iterations": int(gathered["iterations"].max()) if p_count else 0,
            "iterations_total": int(gathered["iterations"].sum()),
            "residual": float(gathered["residual_norm"].max()) if p_count else 0.0,
            "relative_residual": float(rel.max()) if p_count else 0.0,
            "solver_relative_residual": float(rel.max()) if p_count else 0.0,
            "converged": bool(gathered["converged"].all()),
            "inconsistency": float(gathered["inconsistency"].max()) if p_count else 0.0,
            "n_solves": p_count,
        }
        method = (f"forward mode, one sparse factorization (SuperLU, {factor.ordering}) for "
                  f"{p_count} right-hand sides")
        return self.solver.report(
            self.pspec, self.theta0, "sparse_lu", method, info, many_rhs="factorization",
            reason=self.reason, time_s=t_total, time_compile_s=t_compile, time_rhs_s=t_rhs,
            time_factor_s=factor.time_factor_s, factor_fill=factor.fill,
            factor_levels=list(factor.levels), factor_unknowns=factor.shape[0],
            rhs_jvps=colored.colors if colored is not None else p_count)


def factorized_vector_derivative(solver, pspec, reason: str = "", chunk: int | None = None,
                                 progress=None):
    """``[N][N][d]`` ∂x*/∂θ of a vector θ (kind ``diameters``) by one sparse factorization,
    held in memory (:class:`FactorizedJacobian` computes it block by block).

    Args:
      solver: a :class:`~systems.response.ResponseSolver` (its Hessian, rattlers, settings).
      pspec: the θ (:class:`~systems.response.ParameterSpec`).
      reason: why this method (for the report).
      chunk: columns whose right-hand sides are computed and solved together.
      progress: optional ``progress("jacobian", name=, columns=, of=, seconds=)`` after
        every chunk.

    Returns:
      ``(dx_dtheta, report)``: rows ``p`` are ``∂x*/∂θ_p``, gauge-fixed (rattler rows NaN,
      the backbone's rigid motion removed); the :class:`~systems._reports.SolveReport` as
      the other paths', with ``method``,
      ``reason``, the solves' residuals, ``iterations`` (solves per column: 1, or 2 with a
      refinement step) and the factorization's figures.
    """
    jacobian = FactorizedJacobian(solver, pspec, reason, chunk, progress)
    dx = np.empty(jacobian.shape)
    for start, stop, block in jacobian.blocks():
        dx[start:stop] = block
    return dx, jacobian.report
