"""Linear solvers that report.

Every solver here is a plain function of a matrix-vector product (the jaxopt
convention)::

    x = solve_cg(matvec, b)
    x, info = solve_cg(matvec, b, full_output=True)

``matvec`` maps a pytree shaped like ``b`` to a pytree shaped like ``b``; ``b`` is any
pytree of float arrays (internally flattened with :func:`jax.flatten_util.ravel_pytree`).
A dense matrix may be passed instead of ``matvec`` when ``b`` is a single array.

Common keyword arguments (all solvers):

``ridge``
    solve ``(A + ridge * I) x = b``.
``init``
    warm start, a pytree like ``b`` (ignored by the dense solvers).
``tol``, ``atol``
    stop when ``||A x - b|| <= max(tol * ||b||, atol)``; 2-norms over the whole pytree
    (never elementwise). ``tol=None`` means ``1e-10`` in float64 and ``max(1e-10, 100
    eps)`` in lower precision (about ``1.2e-5`` in float32), where ``1e-10`` is out of
    reach.
``maxiter``
    iteration limit (default ``10 * n``); see each solver for what one iteration is.
``M``
    preconditioner, a function like ``matvec`` approximating ``A^{-1}`` (solvers that
    take one).
``nullspace``
    a basis of the operator's known zero modes: a pytree like ``b`` whose leaves carry an
    extra leading axis ``k`` (``k`` basis vectors), for an array ``b`` an array of shape
    ``(k, *b.shape)``; a single vector shaped exactly like ``b`` means ``k = 1``. It need
    not be orthonormal (it is orthonormalized internally by an SVD; directions that are
    numerically linearly dependent are dropped). The operator is assumed to satisfy
    ``null(A) = null(A^T) = span(basis)`` (Hessians with rigid translations, rattlers).
    The solver then

    1. measures ``inconsistency = ||P_N b|| / ||b||`` (``P_N`` the orthogonal projector on
       the null space). The rhs is *inconsistent* when ``inconsistency >
       consistency_tol``, by default ``max(tol, 1e-8, 100 eps)``; an inconsistent solve is
       reported as not converged (the failure policy applies). Pass
       ``consistency_tol=float("inf")`` to accept any rhs and solve its projection.
    2. solves the projected system ``(P A P) x = P b``, ``P = I - Q Q^T``, with the
       ridge and preconditioner projected as well;
    3. returns ``P x``: the minimum-norm, gauge-fixed solution, whose component along the
       null space is exactly zero, whichever the method.

``on_failure``
    what happens when the solve did not converge (residual above tolerance, NaN, or an
    inconsistent rhs): ``"raise"`` (default) raises :class:`LinearSolveError` with a
    message that says what to try; under ``jit``/``vmap`` this goes through
    :func:`jax.debug.callback` and JAX re-raises it as a ``JaxRuntimeError`` (also a
    ``RuntimeError``) whose message contains ``"LinearSolveError: ..."``. ``"warn"``
    emits a :class:`LinearSolveWarning` with the same message, ``"nan"`` replaces every
    leaf of ``x`` by NaN, ``"ignore"`` does nothing (inspect ``full_output``).
``full_output``
    also return a :class:`LinearSolveInfo`.

All solvers work under ``jit`` and ``vmap`` and can be used as the ``solve`` and
``transpose_solve`` of :func:`jax.lax.custom_linear_solve` (this is how the
implicit-differentiation engine uses them, and how to differentiate a solve: the
iterative solvers are ``lax.while_loop`` programs, which JAX cannot reverse-differentiate
directly). The residual reported in :class:`LinearSolveInfo` is always recomputed at the
returned ``x`` (never the recurrence's estimate); the iterative solvers restart from the
current iterate when the recurrence claims convergence that the true residual does not
confirm.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import io_callback
from jax.flatten_util import ravel_pytree

__all__ = [
    "LinearSolveError",
    "LinearSolveInfo",
    "LinearSolveWarning",
    "get_solver",
    "solve_bicgstab",
    "solve_cg",
    "solve_cholesky",
    "solve_gmres",
    "solve_lstsq",
    "solve_lu",
    "solve_minres",
    "solve_normal_cg",
]

_POLICIES = ("raise", "warn", "nan", "ignore")
_HIGHEST = lax.Precision.HIGHEST


class LinearSolveError(RuntimeError):
    """A linear solve did not converge, or its right-hand side was inconsistent."""


class LinearSolveWarning(RuntimeWarning):
    """Warning emitted by a linear solve with ``on_failure="warn"``."""


class LinearSolveInfo(NamedTuple):
    """What a linear solve did; a pytree of arrays, so it passes through jit and vmap.

    Attributes:
      iterations: iterations performed (int; see each solver; 0 for dense solvers).
      residual_norm: ``||A x - b_proj||`` recomputed at the returned ``x`` (``b_proj`` is
        ``b`` projected off the null space, or ``b`` when no null space is given).
      rhs_norm: ``||b||``.
      converged: met the tolerance and the rhs is consistent.
      inconsistency: ``||component of b in the null space|| / max(||b||, tiny)``; 0
        without a null space.
      tolerance: the absolute tolerance used, ``max(tol * ||b||, atol)``.
    """

    iterations: Any
    residual_norm: Any
    rhs_norm: Any
    converged: Any
    inconsistency: Any
    tolerance: Any


# ---------------------------------------------------------------------------------------
# small helpers


def _dot(a, b):
    # elementwise product + sum: exact float32 on accelerators (no TF32 dot_general)
    return jnp.sum(a * b)


def _norm(a):
    return jnp.sqrt(_dot(a, a))


def _safe_div(num, den):
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), jnp.zeros_like(num))


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _default_tol(dtype) -> float:
    return max(1e-10, 100.0 * float(jnp.finfo(dtype).eps))


def _as_operator(A, b, what="matvec"):
    """A callable on pytrees; a dense matrix is accepted for an array ``b``."""
    if A is None or callable(A):
        return A
    mat = jnp.asarray(A)
    if jax.tree_util.tree_structure(b).num_leaves != 1 or not hasattr(b, "shape"):
        raise TypeError(f"{what} must be callable when b is a pytree (got an array)")
    shape = jnp.shape(b)
    n = int(np.prod(shape)) if shape else 1
    if mat.shape != (n, n):
        raise ValueError(f"{what} given as a matrix must have shape ({n}, {n}), got {mat.shape}")
    return lambda x: jnp.matmul(mat, jnp.reshape(x, (-1,)), precision=_HIGHEST).reshape(shape)


class _Problem:
    """The flattened, projected system; built at trace time."""

    def __init__(self, name, matvec, b, ridge, init, M, nullspace, tol, atol,
                 consistency_tol, maxiter):
        self.name = name
        from sensitivity._implicit_diff import check_operator_closure

        check_operator_closure(name, matvec=matvec, M=M)
        b_flat, unravel = ravel_pytree(b)
        if not jnp.issubdtype(b_flat.dtype, jnp.inexact):
            b_flat = b_flat.astype(jnp.result_type(float))
        self.dtype = b_flat.dtype
        self.unravel = unravel
        self.treedef = jax.tree_util.tree_structure(b)
        self.n = b_flat.shape[0]
        self.b = b_flat
        matvec = _as_operator(matvec, b, "matvec")
        M = _as_operator(M, b, "M")
        treedef = self.treedef

        def ravel_out(y, what):
            if jax.tree_util.tree_structure(y) != treedef:
                raise TypeError(
                    f"{name}: {what} must return a pytree with the structure of b "
                    f"({treedef}), got {jax.tree_util.tree_structure(y)}")
            return ravel_pytree(y)[0].astype(self.dtype)

        def A_orig(x):
            y = ravel_out(matvec(unravel(x)), "matvec")
            if ridge is not None:
                y = y + jnp.asarray(ridge, self.dtype) * x
            return y

        self.A_orig = A_orig

        # tolerances
        self.tol_defaulted = tol is None
        if tol is None:
            tol = _default_tol(self.dtype)
        self.tol = tol
        self.bnorm = _norm(b_flat)
        self.tol_abs = jnp.maximum(jnp.asarray(tol, self.dtype) * self.bnorm,
                                   jnp.asarray(atol, self.dtype))
        self.maxiter = 10 * self.n if maxiter is None else maxiter
        tiny = jnp.finfo(self.dtype).tiny

        # null space
        self.Q = None
        if nullspace is not None:
            Q = _orthonormal_basis(nullspace, b, self.dtype, name)
            self.Q = Q
            Qt = Q.T  # (k, n), transposed once here rather than inside every loop body
            P = lambda x: _project(Qt, x)
            self.P = P
            b_null = jnp.matmul(Qt, b_flat, precision=_HIGHEST)
            self.inconsistency = _norm(b_null) / jnp.maximum(self.bnorm, tiny)
            if consistency_tol is None:
                consistency_tol = jnp.maximum(
                    jnp.asarray(tol, self.dtype),
                    max(1e-8, 100.0 * float(jnp.finfo(self.dtype).eps)))
            self.consistency_tol = consistency_tol
            self.consistent = self.inconsistency <= consistency_tol
            self.b_proj = P(b_flat)
            self.A = lambda x: P(A_orig(P(x)))
            # on range(P) the input projection is the identity (to round-off): the
            # iterative methods whose iterates stay in range(P) use these, one
            # projection per application instead of two
            self.A_range = lambda x: P(A_orig(x))
            if M is not None:
                self.M = lambda x: P(ravel_out(M(unravel(P(x))), "M"))
                self.M_range = lambda x: P(ravel_out(M(unravel(x)), "M"))
            else:
                self.M = self.M_range = None
            self.x0 = None if init is None else P(ravel_pytree(init)[0].astype(self.dtype))
        else:
            self.P = lambda x: x
            self.inconsistency = jnp.zeros((), self.dtype)
            self.consistency_tol = jnp.inf
            self.consistent = jnp.array(True)
            self.b_proj = b_flat
            self.A = self.A_range = A_orig
            self.M = None if M is None else (lambda x: ravel_out(M(unravel(x)), "M"))
            self.M_range = self.M
            self.x0 = None if init is None else ravel_pytree(init)[0].astype(self.dtype)

    def precond(self, x):
        return x if self.M is None else self.M(x)

    def precond_range(self, x):
        """``precond`` for ``x`` in range(P) (``P M P x = P M x`` there)."""
        return x if self.M_range is None else self.M_range(x)

    def dense_matrix(self, A=None):
        A = self.A if A is None else A
        eye = jnp.eye(self.n, dtype=self.dtype)
        return jax.vmap(A)(eye).T  # column j = A e_j


_UNROLL_K = 8  # null spaces up to this dimension are projected elementwise (see _project)


def _project(Qt, x):
    """``x - Q (Q^T x)`` for ``Qt = Q^T`` of shape ``(k, n)``.

    ``Q^T x`` is one small dot; for ``k <= _UNROLL_K`` the correction ``Q c`` is written as
    ``k`` scaled rows, which XLA fuses with the subtraction (and with whatever consumes the
    result): on CPU this costs about a third of two matrix-vector dots, which run as
    separate kernels (measured at n = 2048, k = 2)."""
    c = jnp.matmul(Qt, x, precision=_HIGHEST)
    k = Qt.shape[0]
    if k > _UNROLL_K:
        return x - jnp.matmul(c, Qt, precision=_HIGHEST)
    for i in range(k):
        x = x - c[i] * Qt[i]
    return x


def _orthonormal_basis(nullspace, b, dtype, name):
    """(n, k) matrix with orthonormal columns spanning the given null space."""
    b_leaves, b_def = jax.tree_util.tree_flatten(b)
    ns_leaves, ns_def = jax.tree_util.tree_flatten(nullspace)
    if ns_def != b_def:
        # an array b with an array basis always matches; anything else must mirror b
        raise TypeError(f"{name}: nullspace must be a pytree like b with a leading axis k "
                        f"(got structure {ns_def}, b has {b_def})")
    single = all(jnp.shape(nl) == jnp.shape(bl) for nl, bl in zip(ns_leaves, b_leaves))
    if single:
        ns_leaves = [jnp.asarray(nl)[None] for nl in ns_leaves]
    ks = {jnp.shape(nl)[0] for nl in ns_leaves}
    for nl, bl in zip(ns_leaves, b_leaves):
        if jnp.shape(nl)[1:] != jnp.shape(bl):
            raise ValueError(f"{name}: nullspace leaf of shape {jnp.shape(nl)} does not match "
                             f"b leaf of shape {jnp.shape(bl)} (expected (k, *b.shape))")
    if len(ks) != 1:
        raise ValueError(f"{name}: nullspace leaves disagree on the number of vectors: {ks}")
    ns = jax.tree_util.tree_unflatten(ns_def, ns_leaves)
    N = jax.vmap(lambda t: ravel_pytree(t)[0])(ns).astype(dtype)  # (k, n)
    U, s, _ = jnp.linalg.svd(N.T, full_matrices=False)
    eps = jnp.finfo(dtype).eps
    keep = s > max(N.shape) * eps * jnp.max(s)
    return U * keep.astype(dtype)


# ---------------------------------------------------------------------------------------
# failure reporting

_HINTS = {
    "solve_cg": "raise maxiter, loosen tol, precondition (M=...), or for a "
                "singular/indefinite system use solve_minres with nullspace=...",
    "solve_normal_cg": "raise maxiter, loosen tol or precondition; normal CG squares the "
                       "condition number, so prefer solve_gmres or solve_bicgstab, and pass "
                       "nullspace=... for a singular system",
    "solve_minres": "raise maxiter, loosen tol, precondition (M must be symmetric positive "
                    "definite), or for a singular system pass nullspace=...; a "
                    "non-symmetric operator needs solve_gmres",
    "solve_gmres": "raise maxiter or restart, loosen tol, precondition (M=...), or for a "
                   "singular system pass nullspace=...",
    "solve_bicgstab": "raise maxiter, loosen tol, precondition (M=...), or use solve_gmres; "
                      "for a singular system pass nullspace=...",
    "solve_lu": "the matrix is singular or badly conditioned: pass nullspace=... for known "
                "zero modes, add a ridge, or use solve_lstsq for the minimum-norm answer",
    "solve_cholesky": "the Cholesky factorization failed, so the matrix is not symmetric "
                      "positive definite (or is singular): use solve_lu / solve_lstsq, add a "
                      "ridge, or pass nullspace=...",
    "solve_lstsq": "the system has no exact solution (the returned x is the minimum-norm "
                   "least-squares one): loosen tol, or pass nullspace=... for known zero "
                   "modes",
}


def _failure_message(name, iterations, residual, tolerance, inconsistency, consistent,
                     consistency_tol, rhs_norm, dense):
    if not np.isfinite(rhs_norm):
        return (f"{name}: the right-hand side is not finite (its norm is {rhs_norm}); the "
                "NaN or inf comes from before the solve (the matvec's inputs or b itself).")
    if not consistent:
        return (
            f"{name}: the right-hand side has a component {inconsistency:.1e} of its norm "
            f"along the given null space (consistency tolerance {consistency_tol:.1e}): the "
            "system has no solution. The returned x solves the projected system (the "
            "minimum-norm least-squares answer). If that component is expected (e.g. a "
            "cotangent of a gauge-dependent quantity), project it out of the right-hand "
            "side or pass consistency_tol=float('inf'); otherwise check the null-space "
            "basis.")
    hint = _HINTS.get(name, "raise maxiter, loosen tol or precondition")
    if not np.isfinite(residual):
        return (f"{name} broke down: the residual is {residual} after {iterations} "
                f"iterations (rhs norm {rhs_norm:.1e}); {hint}")
    if dense:
        return (f"{name}: the factorization finished but the residual {residual:.1e} is above "
                f"the tolerance {tolerance:.1e} (rhs norm {rhs_norm:.1e}), more than round-off "
                f"allows: the matrix is singular or too ill-conditioned for its dtype (float32 "
                f"keeps about 7 digits, float64 about 16). Solve in float64, add a ridge, "
                f"pass nullspace=... for known zero modes, use solve_lstsq for the "
                f"minimum-norm answer, or pass a looser tol")
    return (f"{name} did not converge in {iterations} iterations (residual {residual:.1e} "
            f"> tolerance {tolerance:.1e}); {hint}")


def _report_host(name, policy, dense, stacklevel, converged, iterations, residual, tolerance,
                 inconsistency, consistent, consistency_tol, rhs_norm):
    converged = np.asarray(converged)
    if converged.all():
        return
    bad = np.flatnonzero(~converged.reshape(-1))
    i = int(bad[0])

    def pick(a):
        a = np.asarray(a)
        return a.reshape(-1)[i].item() if a.size > 1 else a.item()

    msg = _failure_message(name, pick(iterations), pick(residual), pick(tolerance),
                           pick(inconsistency), bool(pick(consistent)),
                           pick(consistency_tol), pick(rhs_norm), dense)
    if converged.size > 1:
        msg += f" ({bad.size} of {converged.size} batched solves failed; the first is shown.)"
    if policy == "raise":
        raise LinearSolveError(msg)
    warnings.warn(msg, LinearSolveWarning, stacklevel=stacklevel)


def _roundoff_tolerance(prob: _Problem, matrix_norm, x_flat):
    """The acceptance threshold of a dense (direct) solve.

    A backward-stable factorization returns ``x`` with ``||A x - b|| <= c n eps ||A|| ||x||``
    whatever ``tol``; in float32 that exceeds ``tol * ||b||`` on a well-posed system with a
    condition number of a few thousand. With the default ``tol`` a dense solve is therefore
    accepted when

        ||A x - b|| <= max(tol ||b||, atol, min(n eps ||A||_F ||x||, sqrt(eps) ||b||)),

    i.e. when its normwise backward error is at the round-off level of the dtype; the cap
    ``sqrt(eps) ||b||`` keeps a singular or numerically singular system (whose ``||x||``
    blows up) reported. An explicit ``tol`` is used as given.
    """
    if not prob.tol_defaulted:
        return prob.tol_abs
    eps = float(jnp.finfo(prob.dtype).eps)
    roundoff = prob.n * eps * matrix_norm * _norm(x_flat)
    cap = math.sqrt(eps) * prob.bnorm
    bound = jnp.minimum(roundoff, cap)
    return jnp.maximum(prob.tol_abs, jnp.where(jnp.isfinite(bound), bound, 0.0))


def _finish(prob: _Problem, x_flat, iterations, on_failure, full_output, r_proj=None,
            dense=False, matrix_norm=None):
    """Project, recompute the residual, build the info, apply the failure policy.

    ``r_proj`` may be given when it is already ``b_proj - A_orig(x_flat)`` at a projected
    ``x_flat`` (the iterative driver computes exactly that). ``matrix_norm`` (dense solves)
    switches on the round-off acceptance test of :func:`_roundoff_tolerance`."""
    if r_proj is None:
        x_flat = prob.P(x_flat)
        r_proj = prob.b_proj - prob.A_orig(x_flat)
    res = _norm(r_proj)
    tol_abs = prob.tol_abs
    if matrix_norm is not None:
        tol_abs = _roundoff_tolerance(prob, matrix_norm, x_flat)
    converged = (res <= tol_abs) & prob.consistent
    info = LinearSolveInfo(
        iterations=jnp.asarray(iterations, jnp.int32),
        residual_norm=res,
        rhs_norm=prob.bnorm,
        converged=converged,
        inconsistency=prob.inconsistency,
        tolerance=tol_abs,
    )
    x = prob.unravel(x_flat)
    x = _apply_policy(prob, x, info, on_failure, dense)
    return (x, info) if full_output else x


def _apply_policy(prob, x, info, on_failure, dense):
    if on_failure == "ignore":
        return x
    if on_failure == "nan":
        return jax.tree_util.tree_map(
            lambda l: jnp.where(info.converged, l, jnp.full_like(l, jnp.nan)), x)
    args = (info.converged, info.iterations, info.residual_norm, info.tolerance,
            info.inconsistency, prob.consistent,
            jnp.asarray(prob.consistency_tol, info.residual_norm.dtype), info.rhs_norm)
    if any(_is_tracer(a) for a in args):
        # io_callback, not jax.debug.callback: under vmap it runs in a rolled loop, where a
        # debug callback is unrolled once per batch element (slow to compile and to run).
        # (It cannot sit in a lax.cond taken only on failure: JAX has no vmap-of-cond for
        # IO effects.)
        report = functools.partial(_report_host, prob.name, on_failure, dense, 2)
        io_callback(report, None, *args)
    else:  # concrete values: report right here; the warning points at the caller's line
        _report_host(prob.name, on_failure, dense, 5, *args)
    return x


def _check_policy(on_failure):
    if on_failure not in _POLICIES:
        raise ValueError(f"on_failure must be one of {_POLICIES}, got {on_failure!r}")


# ---------------------------------------------------------------------------------------
# the restart driver shared by the iterative solvers


def _drive(prob: _Problem, inner, max_cycles):
    """Run ``inner`` until the *true* residual meets the tolerance.

    ``inner(x, r, budget) -> (x, iterations)`` runs the method from ``x`` whose residual is
    ``r``, for at most ``budget`` iterations, and must return ``x`` unchanged when it does
    no iteration. Each cycle of the driver projects ``x``, recomputes the true residual
    ``b_proj - A_orig(x)`` and hands it to ``inner``; so if the recurrence said "converged"
    but the true residual did not, or the method broke down, it restarts from there. The
    loop ends with a cycle where ``inner`` does nothing (converged, out of budget, or
    broken down); at most ``max_cycles`` cycles run ``inner``. The operator appears only
    twice in the traced program (here and in ``inner``), which keeps compile times down.
    Returns ``(x, iterations, r)`` with ``r = b_proj - A_orig(x)`` at the returned ``x``.
    """
    b, P, tol_abs = prob.b_proj, prob.P, prob.tol_abs
    x0 = jnp.zeros_like(b) if prob.x0 is None else prob.x0
    maxiter = jnp.asarray(prob.maxiter, jnp.int32)
    max_cycles = jnp.asarray(max_cycles, jnp.int32)

    def cond(c):
        return ~c[4]

    def body(c):
        x, _, k, cyc, _ = c
        x = P(x)
        r = b - prob.A_orig(x)
        budget = jnp.where((cyc < max_cycles) & (_norm(r) > tol_abs), maxiter - k, 0)
        x_new, it = inner(x, P(r), budget)
        return x_new, r, k + it, cyc + 1, it == 0

    init = (x0, b, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), jnp.array(False))
    x, r, k, _, _ = lax.while_loop(cond, body, init)
    return x, k, r


_MAX_CYCLES = 4  # CG / BiCGSTAB / MINRES: the first run plus up to three restarts


# ---------------------------------------------------------------------------------------
# conjugate gradients


def _cg_inner(prob: _Problem):
    # The driver hands over x and r in range(P). Projecting the updated residual,
    # r <- P(r - alpha A p), and z = P M r keeps r, z and p in range(P); then A P p = A p
    # (to round-off), and p.(A p) = p.(P A p): one projection for the operator and one
    # for the preconditioner per iteration, instead of P A P and P M P. (Projecting r
    # itself rather than A p matters: r shrinks by many orders of magnitude, and the
    # null-space round-off it would otherwise accumulate from its early, large values
    # would be amplified by M relative to the small late r.)
    A, Mp, tol_abs, P = prob.A_orig, prob.precond_range, prob.tol_abs, prob.P
    plain = prob.M_range is None

    def norm_r(r, rz):
        # without a preconditioner r.z is r.r: reuse it (one reduction fewer per step)
        return jnp.sqrt(rz) if plain else _norm(r)

    def inner(x, r, budget):
        z = Mp(r)
        rz = _dot(r, z)

        def cond(c):
            x, r, p, rz, rnorm, k, broke = c
            return (rnorm > tol_abs) & (k < budget) & ~broke

        def body(c):
            x, r, p, rz, _, k, _ = c
            Ap = A(p)
            pAp = _dot(p, Ap)
            alpha = _safe_div(rz, pAp)
            x = x + alpha * p
            r = P(r - alpha * Ap)
            z = Mp(r)
            rz_new = _dot(r, z)
            beta = _safe_div(rz_new, rz)
            p = z + beta * p
            broke = (pAp == 0) | (rz_new == 0) | ~jnp.isfinite(rz_new)
            return x, r, p, rz_new, norm_r(r, rz_new), k + 1, broke

        c = (x, r, z, rz, norm_r(r, rz), jnp.zeros((), jnp.int32), rz == 0)
        x, _, _, _, _, k, _ = lax.while_loop(cond, body, c)
        return x, k

    return inner


def solve_cg(matvec: Callable, b: Any, ridge=None, init=None, *, tol=None, atol=0.0,
             maxiter=None, M=None, nullspace=None, on_failure="raise", full_output=False,
             consistency_tol=None):
    """Conjugate gradients for a symmetric positive (semi-)definite operator.

    One iteration is one matvec (plus one preconditioner application). ``M`` must be
    symmetric positive definite. See the module docstring for the common arguments.
    """
    _check_policy(on_failure)
    prob = _Problem("solve_cg", matvec, b, ridge, init, M, nullspace, tol, atol,
                    consistency_tol, maxiter)
    x, k, r = _drive(prob, _cg_inner(prob), _MAX_CYCLES)
    return _finish(prob, x, k, on_failure, full_output, r_proj=r)


# ---------------------------------------------------------------------------------------
# CG on the normal equations


def solve_normal_cg(matvec: Callable, b: Any, ridge=None, init=None, *, tol=None,
                    atol=0.0, maxiter=None, M=None, nullspace=None, on_failure="raise",
                    full_output=False, consistency_tol=None, ridge_placement="operator"):
    """CG on the normal equations ``A^T A x = A^T b``, for a general square operator.

    ``A^T`` is obtained by :func:`jax.linear_transpose` of ``matvec`` (which must be
    linear and transposable). The ridge applies to ``A`` (``(A + ridge I) x = b``, as for
    every solver here), and the stopping test is on the residual of the original system,
    ``||b - A x||``, tracked by recurrence and recomputed at the end. One iteration is one
    ``A`` and one ``A^T`` product. ``M`` preconditions ``A^T A`` (symmetric positive
    definite).

    jaxopt's behaviour is available with ``ridge_placement="normal"``: CG on
    ``(A^T A + ridge I) x = A^T b`` (ridge on the normal operator, tolerance on the normal
    residual). A non-square ``A`` (``matvec`` maps ``init``-shaped pytrees to ``b``-shaped
    ones) also takes that route and needs ``init`` to know the shape of ``x``, as in jaxopt.
    """
    _check_policy(on_failure)
    if ridge_placement not in ("operator", "normal"):
        raise ValueError(
            f"ridge_placement must be 'operator' ((A + ridge I) x = b) or 'normal' "
            f"((A^T A + ridge I) x = A^T b, jaxopt's), got {ridge_placement!r}")
    square = init is None or (
        jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(b)
        and all(jnp.shape(u) == jnp.shape(v)
                for u, v in zip(jax.tree_util.tree_leaves(init), jax.tree_util.tree_leaves(b))))
    if ridge_placement == "normal" or not square:
        if not square and ridge is not None and ridge_placement == "operator":
            raise ValueError("solve_normal_cg: a ridge on a non-square operator needs "
                             "ridge_placement='normal' ((A^T A + ridge I) x = A^T b)")
        like = b if init is None else init
        At_lin = jax.linear_transpose(matvec, like)
        At = lambda y: At_lin(y)[0]
        return solve_cg(lambda x: At(matvec(x)), At(b), ridge=ridge, init=init, tol=tol,
                        atol=atol, maxiter=maxiter, M=M, nullspace=nullspace,
                        on_failure=on_failure, full_output=full_output,
                        consistency_tol=consistency_tol)
    prob = _Problem("solve_normal_cg", matvec, b, ridge, init, M, nullspace, tol, atol,
                    consistency_tol, maxiter)
    A, Mp, tol_abs = prob.A, prob.precond, prob.tol_abs
    At_lin = jax.linear_transpose(A, jax.ShapeDtypeStruct(prob.b.shape, prob.dtype))
    At = lambda y: At_lin(y)[0]

    def inner(x, r, budget):
        s = At(r)
        z = Mp(s)
        sz = _dot(s, z)

        def cond(c):
            x, r, p, sz, k, broke = c
            return (_norm(r) > tol_abs) & (k < budget) & ~broke

        def body(c):
            x, r, p, sz, k, _ = c
            q = A(p)
            qq = _dot(q, q)
            alpha = _safe_div(sz, qq)
            x = x + alpha * p
            r = r - alpha * q
            s = At(r)
            z = Mp(s)
            sz_new = _dot(s, z)
            p = z + _safe_div(sz_new, sz) * p
            broke = (qq == 0) | (sz_new == 0) | ~jnp.isfinite(sz_new)
            return x, r, p, sz_new, k + 1, broke

        c = (x, r, z, sz, jnp.zeros((), jnp.int32), sz == 0)
        x, _, _, _, k, _ = lax.while_loop(cond, body, c)
        return x, k

    x, k, r = _drive(prob, inner, _MAX_CYCLES)
    return _finish(prob, x, k, on_failure, full_output, r_proj=r)


# ---------------------------------------------------------------------------------------
# BiCGSTAB


def solve_bicgstab(matvec: Callable, b: Any, ridge=None, init=None, *, tol=None,
                   atol=0.0, maxiter=None, M=None, nullspace=None, on_failure="raise",
                   full_output=False, consistency_tol=None):
    """BiCGSTAB (van der Vorst) for a general square operator, right-preconditioned.

    One iteration is two matvecs (and two preconditioner applications). On a breakdown
    (``rho = 0`` or ``omega = 0``) it restarts from the current iterate with the true
    residual as the new shadow vector.
    """
    _check_policy(on_failure)
    prob = _Problem("solve_bicgstab", matvec, b, ridge, init, M, nullspace, tol, atol,
                    consistency_tol, maxiter)
    A, Mp, tol_abs = prob.A, prob.precond, prob.tol_abs

    def inner(x, r, budget):
        rhat = r
        one = jnp.ones((), prob.dtype)

        def cond(c):
            x, r, p, v, rho, alpha, omega, k, broke = c
            return (_norm(r) > tol_abs) & (k < budget) & ~broke

        def body(c):
            x, r, p, v, rho, alpha, omega, k, _ = c
            rho_new = _dot(rhat, r)
            beta = _safe_div(rho_new, rho) * _safe_div(alpha, omega)
            p = r + beta * (p - omega * v)
            phat = Mp(p)
            v = A(phat)
            rv = _dot(rhat, v)
            alpha = _safe_div(rho_new, rv)
            s = r - alpha * v
            shat = Mp(s)
            t = A(shat)
            omega = _safe_div(_dot(t, s), _dot(t, t))
            x = x + alpha * phat + omega * shat
            r = s - omega * t
            broke = ((rho_new == 0) | (rv == 0) | (omega == 0)
                     | ~jnp.isfinite(omega) | ~jnp.isfinite(alpha))
            return x, r, p, v, rho_new, alpha, omega, k + 1, broke

        z = jnp.zeros_like(r)
        c = (x, r, z, z, one, one, one, jnp.zeros((), jnp.int32), jnp.array(False))
        out = lax.while_loop(cond, body, c)
        return out[0], out[7]

    x, k, r = _drive(prob, inner, _MAX_CYCLES)
    return _finish(prob, x, k, on_failure, full_output, r_proj=r)


# ---------------------------------------------------------------------------------------
# GMRES


def _back_substitution(R, g):
    """Solve the upper-triangular ``R y = g`` (small; a loop compiles faster than trsv)."""
    m = g.shape[0]

    def step(t, y):
        i = m - 1 - t
        return y.at[i].set((g[i] - _dot(R[i], y)) / R[i, i])

    return lax.fori_loop(0, m, step, jnp.zeros_like(g))


def solve_gmres(matvec: Callable, b: Any, ridge=None, init=None, *, tol=None, atol=0.0,
                maxiter=None, M=None, nullspace=None, on_failure="raise",
                full_output=False, consistency_tol=None, restart=20):
    """Restarted GMRES(``restart``) for a general square operator, right-preconditioned.

    Arnoldi with classical Gram-Schmidt applied twice, Givens rotations for the small
    least-squares problem. With right preconditioning the residual it minimizes is the
    true 2-norm residual. One iteration is one Arnoldi step (one matvec); ``maxiter``
    counts them over all restart cycles (default ``10 * n``); every cycle ends with the
    true residual recomputed.
    """
    _check_policy(on_failure)
    prob = _Problem("solve_gmres", matvec, b, ridge, init, M, nullspace, tol, atol,
                    consistency_tol, maxiter)
    A, Mp, tol_abs, dtype = prob.A, prob.precond, prob.tol_abs, prob.dtype
    m = max(1, min(int(restart), prob.n))
    n = prob.n
    tiny = jnp.finfo(dtype).tiny

    def inner(x, r, budget):
        beta = _norm(r)
        V = jnp.zeros((m + 1, n), dtype).at[0].set(_safe_div(r, beta))
        R = jnp.zeros((m + 1, m), dtype)
        Om = jnp.eye(m + 1, dtype=dtype)  # product of the Givens rotations so far
        g = jnp.zeros((m + 1,), dtype).at[0].set(beta)

        def cond(c):
            V, R, Om, g, j, broke = c
            return (j < m) & (j < budget) & (jnp.abs(g[j]) > tol_abs) & ~broke

        def body(c):
            V, R, Om, g, j, _ = c
            w = A(Mp(V[j]))
            h = jnp.matmul(V, w, precision=_HIGHEST)
            w = w - jnp.matmul(h, V, precision=_HIGHEST)
            h2 = jnp.matmul(V, w, precision=_HIGHEST)
            w = w - jnp.matmul(h2, V, precision=_HIGHEST)
            h = h + h2
            hn = _norm(w)
            V = V.at[j + 1].set(jnp.where(hn > tiny, w / jnp.where(hn > tiny, hn, 1), 0))
            col = h.at[j + 1].set(hn)

            col = jnp.matmul(Om, col, precision=_HIGHEST)  # previous rotations
            a, bb = col[j], col[j + 1]
            den = jnp.hypot(a, bb)
            c_j = jnp.where(den > 0, a / jnp.where(den > 0, den, 1), 1.0)
            s_j = jnp.where(den > 0, bb / jnp.where(den > 0, den, 1), 0.0)
            col = col.at[j].set(den).at[j + 1].set(0.0)
            rows = lax.dynamic_slice_in_dim(Om, j, 2, axis=0)
            G = jnp.stack([jnp.stack([c_j, s_j]), jnp.stack([-s_j, c_j])])
            Om = lax.dynamic_update_slice_in_dim(
                Om, jnp.matmul(G, rows, precision=_HIGHEST), j, axis=0)
            g = g.at[j + 1].set(-s_j * g[j]).at[j].set(c_j * g[j])
            R = R.at[:, j].set(col)
            broke = (hn <= tiny) | ~jnp.isfinite(hn)
            return V, R, Om, g, j + 1, broke

        c = (V, R, Om, g, jnp.zeros((), jnp.int32), beta == 0)
        V, R, Om, g, j, _ = lax.while_loop(cond, body, c)
        used = jnp.arange(m) < j
        diag = jnp.diagonal(R[:m, :m])
        good = used & (diag != 0)
        Rm = jnp.where(used[None, :] & used[:, None], R[:m, :m], 0.0)
        Rm = Rm.at[jnp.arange(m), jnp.arange(m)].set(jnp.where(good, diag, 1.0))
        gm = jnp.where(good, g[:m], 0.0)
        y = _back_substitution(Rm, gm)
        x = x + Mp(jnp.matmul(y, V[:m], precision=_HIGHEST))
        return x, j

    x, k, r = _drive(prob, inner, jnp.iinfo(jnp.int32).max)
    return _finish(prob, x, k, on_failure, full_output, r_proj=r)


# ---------------------------------------------------------------------------------------
# MINRES


def solve_minres(matvec: Callable, b: Any, ridge=None, init=None, *, tol=None, atol=0.0,
                 maxiter=None, M=None, nullspace=None, on_failure="raise",
                 full_output=False, consistency_tol=None):
    """MINRES (Paige & Saunders 1975) for a symmetric, possibly indefinite or singular,
    operator; ``M`` must be symmetric positive definite.

    The Lanczos/QR recurrences follow Paige & Saunders (as in SciPy's ``minres``); in
    addition the 2-norm residual vector is carried along by recurrence (``A w`` vectors),
    so the stopping test is the documented 2-norm test even when preconditioned (the
    preconditioned method itself minimizes the ``M``-norm of the residual). One iteration
    is one matvec. On a singular system without ``nullspace`` MINRES still returns a
    least-squares iterate; pass ``nullspace`` for the minimum-norm, gauge-fixed answer.
    """
    _check_policy(on_failure)
    prob = _Problem("solve_minres", matvec, b, ridge, init, M, nullspace, tol, atol,
                    consistency_tol, maxiter)
    # r from the driver is in range(P), hence so are the Lanczos vectors, w, A w and x:
    # the operator needs one projection per application (A_range: P A, not P A P). The
    # preconditioner keeps both (P M P): the Lanczos vector r2 it is applied to comes out
    # of a three-term recurrence with cancellation, and M would amplify its null-space
    # round-off (measured: up to a third more iterations with P M alone).
    A, Mp = prob.A_range, prob.precond
    tol_abs, dtype = prob.tol_abs, prob.dtype
    eps = jnp.finfo(dtype).eps

    def inner(x, r, budget):
        y = Mp(r)
        beta1 = jnp.sqrt(_dot(r, y))
        zero = jnp.zeros((), dtype)
        zv = jnp.zeros_like(r)
        # carry: x, res, r1, r2, y, beta, oldb, dbar, epsln, phibar, cs, sn, tnorm2,
        #        w, w2, Aw, Aw2, k, stop
        c0 = dict(x=x, res=r, r1=r, r2=r, y=y, beta=beta1, oldb=zero, dbar=zero,
                  epsln=zero, phibar=beta1, cs=-jnp.ones((), dtype), sn=zero, tnorm2=zero,
                  w=zv, w2=zv, Aw=zv, Aw2=zv, k=jnp.zeros((), jnp.int32),
                  stop=~(beta1 > 0))

        def cond(c):
            return (_norm(c["res"]) > tol_abs) & (c["k"] < budget) & ~c["stop"]

        def body(c):
            beta, oldb = c["beta"], c["oldb"]
            s = _safe_div(jnp.ones((), dtype), beta)
            v = s * c["y"]
            Av = A(v)
            y = Av - _safe_div(beta, oldb) * c["r1"]
            alfa = _dot(v, y)
            y = y - _safe_div(alfa, beta) * c["r2"]
            r1 = c["r2"]
            r2 = y
            y = Mp(r2)
            oldb = beta
            beta = jnp.sqrt(_dot(r2, y))
            tnorm2 = c["tnorm2"] + alfa ** 2 + oldb ** 2 + beta ** 2
            cs, sn, dbar = c["cs"], c["sn"], c["dbar"]
            oldeps = c["epsln"]
            delta = cs * dbar + sn * alfa
            gbar = sn * dbar - cs * alfa
            epsln = sn * beta
            dbar = -cs * beta
            gamma = jnp.maximum(jnp.hypot(gbar, beta), eps)
            cs = gbar / gamma
            sn = beta / gamma
            phi = cs * c["phibar"]
            phibar = sn * c["phibar"]
            w1, w2 = c["w2"], c["w"]
            w = (v - oldeps * w1 - delta * w2) / gamma
            Aw1, Aw2 = c["Aw2"], c["Aw"]
            Aw = (Av - oldeps * Aw1 - delta * Aw2) / gamma
            x = c["x"] + phi * w
            res = c["res"] - phi * Aw
            # Lanczos found an invariant subspace (or produced NaN): stop, the driver
            # recomputes the true residual and restarts if needed
            stop = ~(beta > 10 * eps * jnp.sqrt(tnorm2))
            return dict(x=x, res=res, r1=r1, r2=r2, y=y, beta=beta, oldb=oldb, dbar=dbar,
                        epsln=epsln, phibar=phibar, cs=cs, sn=sn, tnorm2=tnorm2, w=w,
                        w2=w2, Aw=Aw, Aw2=Aw2, k=c["k"] + 1, stop=stop)

        out = lax.while_loop(cond, body, c0)
        return out["x"], out["k"]

    x, k, r = _drive(prob, inner, _MAX_CYCLES)
    return _finish(prob, x, k, on_failure, full_output, r_proj=r)


# ---------------------------------------------------------------------------------------
# dense solvers (materialize the matrix: n matvecs)


def _dense_setup(name, matvec, b, ridge, nullspace, tol, atol, consistency_tol):
    prob = _Problem(name, matvec, b, ridge, None, None, nullspace, tol, atol,
                    consistency_tol, None)
    Amat = prob.dense_matrix()  # projected when a null space is given
    return prob, Amat


def _deflate(prob, Amat):
    """``P A P + c Q Q^T``: nonsingular when null(A) = span(Q); its solution of ``P b``
    is the minimum-norm one (no component along Q)."""
    if prob.Q is None:
        return Amat
    c = jnp.max(jnp.abs(Amat))
    c = jnp.where(c > 0, c, 1.0)
    return Amat + c * jnp.matmul(prob.Q, prob.Q.T, precision=_HIGHEST)


def solve_lu(matvec: Callable, b: Any, ridge=None, init=None, *, tol=None, atol=0.0,
             maxiter=None, nullspace=None, on_failure="raise", full_output=False,
             consistency_tol=None):
    """Dense LU solve (``jnp.linalg.solve``) of the materialized matrix (``n`` matvecs).

    For small systems. ``init`` and ``maxiter`` are accepted and ignored. With a null
    space, solves the deflated ``(P A P + c Q Q^T) x = P b``. The residual is checked
    against the tolerance like the iterative solvers (a singular matrix is reported).
    """
    del init, maxiter
    _check_policy(on_failure)
    prob, Amat = _dense_setup("solve_lu", matvec, b, ridge, nullspace, tol, atol,
                              consistency_tol)
    x = jnp.linalg.solve(_deflate(prob, Amat), prob.b_proj)
    return _finish(prob, x, 0, on_failure, full_output, dense=True,
                   matrix_norm=jnp.linalg.norm(Amat))


def solve_cholesky(matvec: Callable, b: Any, ridge=None, init=None, *, tol=None,
                   atol=0.0, maxiter=None, nullspace=None, on_failure="raise",
                   full_output=False, consistency_tol=None):
    """Dense Cholesky solve of the materialized symmetric positive definite matrix.

    ``init`` and ``maxiter`` are accepted and ignored. A matrix that is not SPD gives NaN
    and is reported. With a null space (a positive semi-definite ``A``), solves the
    deflated ``(P A P + c Q Q^T) x = P b``, which is SPD.
    """
    del init, maxiter
    _check_policy(on_failure)
    prob, Amat = _dense_setup("solve_cholesky", matvec, b, ridge, nullspace, tol, atol,
                              consistency_tol)
    Ad = _deflate(prob, Amat)
    Ad = 0.5 * (Ad + Ad.T)
    cf = jax.scipy.linalg.cho_factor(Ad, lower=True)
    x = jax.scipy.linalg.cho_solve(cf, prob.b_proj)
    return _finish(prob, x, 0, on_failure, full_output, dense=True,
                   matrix_norm=jnp.linalg.norm(Amat))


def solve_lstsq(matvec: Callable, b: Any, ridge=None, init=None, *, tol=None, atol=0.0,
                maxiter=None, nullspace=None, on_failure="raise", full_output=False,
                consistency_tol=None, rcond=None):
    """Dense minimum-norm least-squares solve (pseudo-inverse, ``jnp.linalg.lstsq``).

    Singular values below ``rcond * s_max`` are cut (default ``eps * n``). The returned
    ``x`` is ``pinv(A) b``; it is reported as converged only if ``||A x - b||`` meets the
    tolerance, so an inconsistent system is reported (use ``on_failure="ignore"`` to take
    the least-squares answer silently). ``init`` and ``maxiter`` are ignored.
    """
    del init, maxiter
    _check_policy(on_failure)
    prob, Amat = _dense_setup("solve_lstsq", matvec, b, ridge, nullspace, tol, atol,
                              consistency_tol)
    x = jnp.linalg.lstsq(Amat, prob.b_proj, rcond=rcond)[0]
    return _finish(prob, x, 0, on_failure, full_output, dense=True)


# ---------------------------------------------------------------------------------------
# dispatcher

_SOLVERS = {
    "cg": solve_cg,
    "normal_cg": solve_normal_cg,
    "gmres": solve_gmres,
    "bicgstab": solve_bicgstab,
    "minres": solve_minres,
    "lu": solve_lu,
    "cholesky": solve_cholesky,
    "lstsq": solve_lstsq,
    "dense": solve_lstsq,
}


def get_solver(name, **options):
    """The solver called ``name`` (``"cg"``, ``"normal_cg"``, ``"gmres"``, ``"bicgstab"``,
    ``"minres"``, ``"lu"``, ``"cholesky"``, ``"lstsq"``, ``"dense"`` (= lstsq); a
    ``"solve_"`` prefix is accepted). A callable is returned as is. Keyword ``options``
    are bound with :func:`functools.partial`, e.g. ``get_solver("cg", tol=1e-8)``."""
    if callable(name):
        fn = name
    else:
        key = str(name).lower().replace("-", "_")
        if key.startswith("solve_"):
            key = key[len("solve_"):]
        if key not in _SOLVERS:
            raise ValueError(f"unknown linear solver {name!r}; choose one of "
                             f"{sorted(_SOLVERS)}")
        fn = _SOLVERS[key]
    return functools.partial(fn, **options) if options else fn
