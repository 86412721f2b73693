"""Factor once, solve many: a sparse direct solve of ``A X = B`` for many right-hand sides.

The implicit derivative of a root for a vector θ with P components is P linear solves with
one matrix, ``∂₁F · V = -∂₂F``. Matrix-free Krylov methods pay the full iteration count for
each column; a sparse direct factorization (SciPy's SuperLU with a fill-reducing ordering)
is paid once and each column then costs two sparse triangular solves. This module is the
host-side (NumPy / SciPy) half of that option: it knows nothing of where the matrix comes
from; a caller assembles a ``scipy.sparse`` matrix, computes the right-hand sides (for
instance with ``jax.jvp`` of its optimality function), and calls :meth:`SparseFactorization.solve`.

Null space. ``A`` may be singular with a *known* null space ``T`` (``k`` vectors; for a
symmetric ``A``, as for a Hessian): the minimum-norm solution of ``A x = P b`` (``P`` the
projection off ``T``) is returned, the answer of the engine's Krylov solvers with
``nullspace=``. It is computed by grounding: ``k`` unknowns at which ``T`` is best
conditioned (QR with column pivoting of ``Tᵀ``) are set to zero and their equations
dropped, which leaves a non-singular matrix when ``T`` spans the whole null space; since
``Tᵀ (A x - P b) = 0`` for every ``x``, the dropped equations hold as well, and projecting
``x`` off ``T`` gives the minimum-norm solution.

Triangular solves. SuperLU's own solve treats right-hand sides one at a time (measured
140 MFlop/s with 1,024 of them on 2,042 unknowns); here the factors ``L`` and ``U`` are
applied by *level scheduling*: rows whose dependencies are all solved form a level, and a
level is one sparse-times-dense product over every right-hand side at once (6× faster on
that case). One step of iterative refinement follows for columns whose residual exceeds
``tol``; ``iterations`` in the report counts the solves a column took (1, or 2 refined).

Why SuperLU: it ships with SciPy. CHOLMOD (scikit-sparse) would factor a symmetric matrix
with half the memory, but scikit-sparse is published on PyPI as source only (0.5.0), which
needs the SuiteSparse system library to build.

References: Demmel et al., "A supernodal approach to sparse partial pivoting", SIAM J.
Matrix Anal. Appl. 20 (1999) (SuperLU); Anderson & Saad, "Solving sparse triangular linear
systems on parallel computers", Int. J. High Speed Comput. 1 (1989) (level scheduling).
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any

import numpy as np

from ._linear_solve import LinearSolveInfo, default_tol

__all__ = ["SparseFactorization", "factorize_sparse", "ORDERINGS"]

#: Fill-reducing orderings of SuperLU (``permc_spec``); the first, the default, suits
#: symmetric matrices.
ORDERINGS = ("MMD_AT_PLUS_A", "COLAMD", "MMD_ATA", "NATURAL")

#: A pivot below this times the largest means the matrix is singular beyond its null space.
PIVOT_RTOL = 1e-13

#: Right-hand sides solved together (bounds the work arrays to ``n × chunk`` floats).
DEFAULT_CHUNK = 512


@functools.lru_cache(maxsize=1)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional
        return None
    return ThreadpoolController()


def _one_blas_thread():
    """One BLAS thread: the dense products here are thin (``n × k`` with k ≤ 6), and a
    multi-threaded OpenBLAS spin-waits on a loaded machine (measured on 2 shared cores: the
    projections took 0.14 s a chunk with 2 threads, against milliseconds with 1)."""
    controller = _blas_controller()
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def _levels(strict_lower) -> np.ndarray:
    """The level of every row of a strictly lower-triangular CSR matrix: 0 for a row with no
    entries, else one more than the highest level among its columns."""
    n = strict_lower.shape[0]
    level = np.zeros(n, np.int64)
    indptr, indices = strict_lower.indptr, strict_lower.indices
    for row in range(n):
        a, b = indptr[row], indptr[row + 1]
        if b > a:
            level[row] = level[indices[a:b]].max() + 1
    return level


class _Triangular:
    """A lower-triangular solve ``L x = b`` by level scheduling (``L`` CSR with its diagonal)."""

    def __init__(self, lower):
        import scipy.sparse as sp

        lower = sp.csr_matrix(lower)
        self.diagonal = lower.diagonal()
        strict = sp.tril(lower, -1, format="csr")
        strict.sum_duplicates()
        level = _levels(strict)
        order = np.argsort(level, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(level))])
        by_level = strict[order]  # rows grouped by level: each level a contiguous slice
        self.steps = [(order[a:b], by_level[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``x`` with ``L x = b`` for ``b`` of shape ``(n, m)``."""
        x = np.zeros_like(b)
        inv = 1.0 / self.diagonal
        for rows, block in self.steps:
            x[rows] = (b[rows] - block @ x) * inv[rows, None]
        return x


class SparseFactorization:
    """A sparse matrix factored once (:func:`factorize_sparse`); :meth:`solve` any number of
    right-hand sides.

    Attributes:
      shape: ``(n, n)``.
      ordering: the SuperLU column ordering used.
      nullspace_size: ``k``, the null-space vectors handled by grounding.
      fill: non-zeros of ``L + U`` over those of ``A``.
      levels: ``(levels of L, levels of U)``: products per triangular solve.
      time_factor_s: seconds of the factorization (ordering, SuperLU, schedules).
    """

    def __init__(self, matrix, *, nullspace=None, ordering: str = ORDERINGS[0],
                 symmetric: bool = True):
        import scipy.linalg
        import scipy.sparse as sp
        import scipy.sparse.linalg as spla

        if ordering not in ORDERINGS:
            raise ValueError(f"factorize_sparse: ordering must be one of {', '.join(ORDERINGS)}, "
                             f"got {ordering!r}")
        t0 = time.perf_counter()
        a = sp.csr_matrix(matrix, dtype=np.float64)
        n = a.shape[0]
        if a.shape != (n, n):
            raise ValueError(f"factorize_sparse: the matrix must be square, got {a.shape}")
        self.matrix = a
        self.shape = (n, n)
        self.ordering = ordering
        if nullspace is None or np.size(nullspace) == 0:
            q = np.zeros((n, 0))
        else:
            t = np.asarray(nullspace, np.float64).reshape(-1, n)
            q, r = np.linalg.qr(t.T)
            keep = np.abs(np.diag(r)) > 1e-12 * max(np.abs(np.diag(r)).max(), 1e-300)
            q = q[:, keep]
        self.basis = q  # (n, k) orthonormal
        k = q.shape[1]
        self.nullspace_size = k
        if k:
            _, _, pivots = scipy.linalg.qr(q.T, mode="economic", pivoting=True)
            grounded = np.sort(pivots[:k])
        else:
            grounded = np.zeros(0, np.int64)
        self.free = np.setdiff1d(np.arange(n), grounded)
        reduced = a[self.free][:, self.free].tocsc()
        options = dict(permc_spec=ordering)
        if symmetric:  # a symmetric pivot order keeps the fill of the symmetric ordering
            options.update(diag_pivot_thresh=0.0, options=dict(SymmetricMode=True))
        try:
            lu = spla.splu(reduced, **options)
        except RuntimeError as err:  # "Factor is exactly singular"
            raise np.linalg.LinAlgError(
                f"factorize_sparse: the matrix ({n} unknowns, {k} null-space vectors given) "
                f"is singular beyond its given null space ({err}); pass every zero mode as "
                "nullspace=, or use an iterative solver") from err
        pivots_u = np.abs(lu.U.diagonal())
        if pivots_u.size and not pivots_u.min() > PIVOT_RTOL * pivots_u.max():
            raise np.linalg.LinAlgError(
                f"factorize_sparse: the matrix ({n} unknowns, {k} null-space vectors given) "
                f"is singular beyond its given null space (smallest pivot "
                f"{pivots_u.min():.1e} <= {PIVOT_RTOL:.0e} x largest {pivots_u.max():.1e}); "
                "pass every zero mode as nullspace=, or use an iterative solver")
        m = reduced.shape[0]
        self.perm_r, self.perm_c = lu.perm_r, lu.perm_c
        self._lower = _Triangular(lu.L)
        upper = sp.csr_matrix(lu.U)
        rev = np.arange(m)[::-1]
        self._upper = _Triangular(upper[rev][:, rev])  # U reversed is lower triangular
        self._reverse = rev
        self.fill = float((lu.L.nnz + lu.U.nnz) / max(reduced.nnz, 1))
        self.levels = (len(self._lower.steps), len(self._upper.steps))
        self.time_factor_s = time.perf_counter() - t0

    def _apply_inverse(self, b: np.ndarray) -> np.ndarray:
        """``x = A_ff⁻¹ b`` on the free unknowns, ``b`` of shape ``(m, c)``."""
        permuted = np.empty_like(b)
        permuted[self.perm_r] = b
        y = self._lower.solve(permuted)
        z = self._upper.solve(y[self._reverse])[self._reverse]
        return z[self.perm_c]

    def _project(self, x: np.ndarray) -> np.ndarray:
        """``x`` off the null space (columns of ``x``, shape ``(n, c)``)."""
        if not self.nullspace_size:
            return x
        return x - self.basis @ (self.basis.T @ x)

    def _solve_block(self, b: np.ndarray) -> np.ndarray:
        x = np.zeros_like(b)
        x[self.free] = self._apply_inverse(b[self.free])
        return self._project(x)

    def solve(self, b, *, tol: float | None = None, refine: bool = True,
              full_output: bool = False,
              chunk: int = DEFAULT_CHUNK, out: np.ndarray | None = None):
        """The minimum-norm solutions of ``A x_p = P b_p`` for every row ``b_p`` of ``b``.

        Args:
          b: ``(n,)`` one right-hand side, or ``(P, n)`` P of them (any leading shape whose
            last axis is ``n``).
          tol: a column whose residual ``‖A x - P b‖`` exceeds ``tol ‖b‖`` after the first
            solve is refined once (one more solve with the residual); None: the linear
            solvers' default in float64 (:func:`~sensitivity._linear_solve.default_tol`).
          refine: allow that refinement.
          full_output: also return a :class:`~sensitivity.LinearSolveInfo` with one entry
            per right-hand side (``iterations``: solves taken, 1 or 2).
          chunk: right-hand sides solved together.
          out: optional array like ``b`` for the solutions (e.g. a memory map).

        Returns:
          ``x`` shaped like ``b`` (and the report).
        """
        with _one_blas_thread():
            return self._solve(b, tol=tol, refine=refine, full_output=full_output,
                               chunk=chunk, out=out)

    def _solve(self, b, *, tol, refine, full_output, chunk, out):
        b = np.asarray(b, np.float64)
        tol = default_tol(np.float64) if tol is None else tol
        n = self.shape[0]
        if b.shape[-1] != n:
            raise ValueError(f"SparseFactorization.solve: right-hand sides of length {n} "
                             f"expected, got shape {b.shape}")
        flat = b.reshape(-1, n)
        count = flat.shape[0]
        x = np.empty_like(flat) if out is None else np.asarray(out).reshape(-1, n)
        iterations = np.ones(count, np.int64)
        residual = np.zeros(count)
        rhs_norm = np.linalg.norm(flat, axis=1)
        inconsistency = np.zeros(count)
        for start in range(0, count, max(1, int(chunk))):
            stop = min(count, start + max(1, int(chunk)))
            block = np.ascontiguousarray(flat[start:stop].T)  # (n, c)
            if self.nullspace_size:
                along = self.basis.T @ block
                inconsistency[start:stop] = (np.linalg.norm(along, axis=0)
                                             / np.maximum(rhs_norm[start:stop], 1e-300))
                block = block - self.basis @ along
            xb = self._solve_block(block)
            r = block - self.matrix @ xb
            res = np.linalg.norm(r, axis=0)
            redo = np.flatnonzero(res > tol * rhs_norm[start:stop]) if refine else []
            if len(redo):
                xb[:, redo] += self._solve_block(np.ascontiguousarray(r[:, redo]))
                iterations[start + redo] = 2
                res[redo] = np.linalg.norm(block[:, redo] - self.matrix @ xb[:, redo], axis=0)
            residual[start:stop] = res
            x[start:stop] = xb.T
        x = x.reshape(b.shape)
        if not full_output:
            return x
        tolerance = tol * rhs_norm
        info = LinearSolveInfo(
            iterations=iterations.reshape(b.shape[:-1]),
            residual_norm=residual.reshape(b.shape[:-1]),
            rhs_norm=rhs_norm.reshape(b.shape[:-1]),
            converged=((residual <= tolerance) & np.isfinite(residual)).reshape(b.shape[:-1]),
            inconsistency=inconsistency.reshape(b.shape[:-1]),
            tolerance=tolerance.reshape(b.shape[:-1]),
            solver_residual_norm=residual.reshape(b.shape[:-1]),
            solver_rhs_norm=rhs_norm.reshape(b.shape[:-1]))
        return x, info

    def describe(self) -> dict[str, Any]:
        """Figures for a report: unknowns, null space, ordering, fill, levels, seconds."""
        return {"unknowns": self.shape[0], "nullspace_size": self.nullspace_size,
                "ordering": self.ordering, "fill": self.fill,
                "levels": list(self.levels), "time_factor_s": self.time_factor_s}


def factorize_sparse(matrix, *, nullspace=None, ordering: str = ORDERINGS[0],
                     symmetric: bool = True) -> SparseFactorization:
    """Factor a sparse square matrix once for many solves (host: NumPy / SciPy).

    Args:
      matrix: anything ``scipy.sparse.csr_matrix`` accepts, ``(n, n)``.
      nullspace: optional ``(k, n)`` vectors spanning the null space of ``matrix`` (for a
        symmetric matrix, e.g. the rigid motions of a Hessian); :meth:`SparseFactorization.solve`
        then returns the minimum-norm solution of the projected system.
      ordering: SuperLU's fill-reducing column ordering (:data:`ORDERINGS`); measured on a
        2D packing Hessian (2,042 unknowns), ``MMD_AT_PLUS_A`` gave half the fill and a third
        of the triangular levels of ``COLAMD``.
      symmetric: the matrix is symmetric (positive definite off its null space): pivot on the
        diagonal so the ordering's fill is kept.

    Returns:
      A :class:`SparseFactorization`.

    Raises:
      numpy.linalg.LinAlgError: the matrix is singular beyond the given null space.
    """
    return SparseFactorization(matrix, nullspace=nullspace, ordering=ordering,
                               symmetric=symmetric)

