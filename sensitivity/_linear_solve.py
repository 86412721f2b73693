"""Linear solvers that report: the conventions, the report and the machinery they share.

The solvers live in :mod:`sensitivity._krylov` (CG, normal CG, BiCGSTAB, GMRES, MINRES) and
:mod:`sensitivity._dense` (LU, Cholesky, least squares, QR, inverse, iterative refinement);
this module owns what they have in common: the keyword options (declared once,
:class:`_Options`, and given to every solver by :func:`_linear_solver`), the flattened and
projected problem, the congruence-scaled solve, the convergence test and the report
:class:`LinearSolveInfo`; :mod:`sensitivity._solve_failure` the failure policies.

Every solver is a plain function of a matrix-vector product (the jaxopt
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
    not be orthonormal (it is orthonormalized internally: by Gram-Schmidt with
    reorthogonalization up to 8 vectors, by an SVD above; directions that are numerically
    linearly dependent are dropped). The operator is assumed to satisfy
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
``scaling``
    (Krylov solvers) a :class:`CongruenceScaling` ``S``: iterate on ``(S A S) z = S P b``
    and return ``x = P S z`` (a diagonal or block-diagonal ``S = D^(-1/2)`` is Jacobi
    preconditioning folded into the operator); the convergence test is on the scaled
    residual, reported as ``solver_residual_norm`` / ``solver_rhs_norm``.

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
import inspect
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from ._closure import check_operator_closure
from ._solve_failure import (
    LinearSolveError,
    LinearSolveWarning,
    _apply_policy,
    _check_policy,
)

__all__ = ["LinearSolveError", "LinearSolveInfo", "LinearSolveWarning", "CongruenceScaling",
           "default_maxiter", "within_tolerance"]

_HIGHEST = lax.Precision.HIGHEST


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
      solver_residual_norm, solver_rhs_norm: the norms the convergence test compared
        (``converged`` is ``solver_residual_norm <= tolerance of the solved system``): with
        ``scaling=`` those of the scaled system ``||S r||``, ``||S b_proj||``; otherwise
        ``residual_norm`` and ``rhs_norm`` again.
    """

    iterations: Any
    residual_norm: Any
    rhs_norm: Any
    converged: Any
    inconsistency: Any
    tolerance: Any
    solver_residual_norm: Any
    solver_rhs_norm: Any


class CongruenceScaling(NamedTuple):
    """A symmetric positive definite scaling ``S`` under which a Krylov solver iterates.

    With ``scaling=CongruenceScaling(scale, scaled_matvec, unscale)`` a Krylov solver
    solves ``(S A S) z = S P b`` and returns ``x = P S z`` (``P`` the projector off the null
    space, identity without one): the minimum-norm solution of ``A x = b`` that the
    unscaled solve returns. With ``S = D^(-1/2)``, ``D`` the (block) diagonal of ``A``, CG
    on the scaled system is CG preconditioned with ``D^-1`` without a preconditioner
    application per iteration: the scaling can be folded into the operator once
    (``scaled_matvec``). The convergence test is on the scaled system, ``||S r|| <= tol
    ||S P b||`` (reported as ``solver_residual_norm`` / ``solver_rhs_norm`` of
    :class:`LinearSolveInfo`); ``residual_norm`` is recomputed on ``A x = b``.

    Null space: ``S P b`` is orthogonal to the null space ``S^-1 N`` of ``S A S``, so CG and
    MINRES never leave its range and run without per-iteration projection; the other
    methods get the scaled basis ``S^-1 N`` (which needs ``unscale``).

    Attributes:
      scale: ``v -> S v`` on pytrees like ``b`` (linear, symmetric positive definite).
      scaled_matvec: ``v -> S A S v``, e.g. with the scaling folded into the matrix;
        default ``scale(matvec(scale(v)))``. It must be the same operator as ``matvec``'s
        (``matvec`` is used only for the residual of the report).
      unscale: ``v -> S^-1 v``; needed for a warm start ``init`` and for a null space with
        GMRES, BiCGSTAB or normal CG.
    """

    scale: Any
    scaled_matvec: Any = None
    unscale: Any = None


# ---------------------------------------------------------------------------------------
# the options every solver takes, declared once


class _Options(NamedTuple):
    """The keyword-only options of every solver (documented in the module docstring).

    :func:`_linear_solver` turns a solver body ``body(matvec, b, ridge, init, opts,
    **extra)`` into the public ``solve_x(matvec, b, ridge=None, init=None, *, tol=None,
    atol=0.0, maxiter=None, M=None, nullspace=None, on_failure="raise",
    full_output=False, consistency_tol=None, scaling=None, **extra)``, jaxopt's
    positional order followed by these keywords with these defaults (``M`` and ``scaling``
    only for the Krylov solvers), then the solver's own ``extra`` keywords.
    """

    tol: Any = None
    atol: Any = 0.0
    maxiter: Any = None
    M: Any = None
    nullspace: Any = None
    on_failure: str = "raise"
    full_output: bool = False
    consistency_tol: Any = None
    scaling: Any = None


def _linear_solver(preconditioned: bool = True, **extra):
    """Decorator: the public signature of a solver from :class:`_Options` (see there).

    ``extra`` maps the solver's own keywords to their defaults. The signature is real
    (``inspect.signature`` shows every keyword, which the engine relies on to pass
    ``consistency_tol``), and a wrong keyword raises ``TypeError`` as Python would.
    """
    kw = inspect.Parameter.KEYWORD_ONLY
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("matvec", positional), inspect.Parameter("b", positional),
              inspect.Parameter("ridge", positional, default=None),
              inspect.Parameter("init", positional, default=None)]
    params += [inspect.Parameter(name, kw, default=default)
               for name, default in _Options._field_defaults.items()
               if preconditioned or name not in ("M", "scaling")]
    params += [inspect.Parameter(name, kw, default=default) for name, default in extra.items()]
    signature = inspect.Signature(params)

    def decorate(body):
        @functools.wraps(body)
        def solver(*args, **kwargs):
            arguments = signature.bind(*args, **kwargs)
            arguments.apply_defaults()
            a = arguments.arguments
            opts = _Options(**{name: a[name] for name in _Options._fields if name in a})
            _check_policy(opts.on_failure)
            own = {name: a[name] for name in extra}
            if opts.scaling is not None:
                return _scaled_solve(solver, body.__name__, a["matvec"], a["b"], a["ridge"],
                                     a["init"], opts, own)
            return body(a["matvec"], a["b"], a["ridge"], a["init"], opts, **own)

        del solver.__wrapped__  # the signature is the declared one, not the body's
        solver.__signature__ = signature
        return solver

    return decorate


# Krylov methods whose iterates stay in the range of a symmetric operator: on a consistent
# scaled system they need no null-space projection (see CongruenceScaling)
_STAYS_IN_RANGE = ("solve_cg", "solve_minres")


def _scaled_solve(solver, name, matvec, b, ridge, init, opts: _Options, own: dict):
    """``solver`` on the congruence-scaled system of ``opts.scaling`` (CongruenceScaling)."""
    sc = opts.scaling
    if not isinstance(sc, CongruenceScaling):
        raise TypeError(f"{name}: scaling must be a CongruenceScaling, got {type(sc).__name__}")
    prob = _problem(name, matvec, b, ridge, None, opts._replace(M=None))
    scale = sc.scale
    if sc.scaled_matvec is not None:
        scaled = sc.scaled_matvec
    else:
        def scaled(v):
            return scale(matvec(scale(v)))
    if ridge is not None:
        folded = scaled

        def scaled(v):  # S (A + ridge I) S = S A S + ridge S^2
            return jax.tree_util.tree_map(lambda u, w: u + ridge * w, folded(v),
                                          scale(scale(v)))
    nullspace = None
    needs_unscale = init is not None or (
        opts.nullspace is not None and name not in _STAYS_IN_RANGE)
    if needs_unscale and sc.unscale is None:
        raise ValueError(f"{name}: scaling needs unscale (v -> S^-1 v) for a warm start or for "
                         f"a null space with this method; pass CongruenceScaling(scale, "
                         f"scaled_matvec, unscale)")
    if opts.nullspace is not None and name not in _STAYS_IN_RANGE:
        single = all(jnp.shape(v) == jnp.shape(leaf) for v, leaf in zip(
            jax.tree_util.tree_leaves(opts.nullspace), jax.tree_util.tree_leaves(b)))
        nullspace = (sc.unscale(opts.nullspace) if single
                     else jax.vmap(sc.unscale)(opts.nullspace))
    z, inner = solver(scaled, scale(prob.unravel(prob.b_proj)), None,
                      None if init is None else sc.unscale(init), tol=opts.tol,
                      atol=opts.atol, maxiter=opts.maxiter, M=opts.M, nullspace=nullspace,
                      on_failure="ignore", full_output=True, consistency_tol=float("inf"),
                      **own)
    x_flat = ravel_pytree(scale(z))[0].astype(prob.dtype)
    return _finish(prob, x_flat, inner.iterations, opts.on_failure, opts.full_output,
                   inner=inner)


def _problem(name, matvec, b, ridge, init, opts: _Options) -> "_Problem":
    """The flattened, projected system of a solver called with ``opts``."""
    return _Problem(name, matvec, b, ridge, init, opts.M, opts.nullspace, opts.tol, opts.atol,
                    opts.consistency_tol, opts.maxiter)


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


def default_tol(dtype) -> float:
    """The linear solvers' default relative tolerance in ``dtype`` (``tol=None``)."""
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
            tol = default_tol(self.dtype)
        self.tol = tol
        self.bnorm = _norm(b_flat)
        self.tol_abs = _absolute_tolerance(self.bnorm, tol, atol, self.dtype)
        self.maxiter = default_maxiter(self.n) if maxiter is None else maxiter
        tiny = jnp.finfo(self.dtype).tiny

        # null space
        self.Q = None
        if nullspace is not None:
            Q = _orthonormal_basis(nullspace, b, self.dtype, name)
            self.Q = Q
            Qt = Q.T  # (k, n), transposed once here rather than inside every loop body

            def P(x):
                return _project(Qt, x)

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
    eps = jnp.finfo(dtype).eps
    if N.shape[0] <= _UNROLL_K:
        return _gram_schmidt(N, max(N.shape) * eps)
    U, s, _ = jnp.linalg.svd(N.T, full_matrices=False)
    keep = s > max(N.shape) * eps * jnp.max(s)
    return U * keep.astype(dtype)


def _gram_schmidt(N, rtol):
    """``(n, k)`` orthonormal columns spanning the rows of ``N`` (``(k, n)``, k small), by
    Gram-Schmidt with one reorthogonalization pass ("twice is enough"); a row left with a
    norm at most ``rtol`` times the largest row's after projection is dependent on the
    others and gives a zero column, as a zero singular value does in the SVD path.

    For the few vectors of a typical null space (translations, rotations) this is the SVD's
    projector without a LAPACK call: the first LAPACK lowering of a process loads SciPy's
    BLAS/LAPACK for jaxlib (a quarter of a second at start-up, ``benchmarks/README.md``).
    """
    scale = jnp.max(jnp.sqrt(jnp.sum(N * N, axis=1)))
    basis = []
    for v in N:
        for _ in range(2):
            for q in basis:
                v = v - jnp.dot(q, v, precision=_HIGHEST) * q
        norm = jnp.sqrt(jnp.dot(v, v, precision=_HIGHEST))
        keep = norm > rtol * scale
        basis.append(jnp.where(keep, v / jnp.where(keep, norm, 1.0), 0.0))
    return jnp.stack(basis, axis=1)


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
            dense=False, matrix_norm=None, inner=None):
    """Project, recompute the residual, build the info, apply the failure policy.

    ``r_proj`` may be given when it is already ``b_proj - A_orig(x_flat)`` at a projected
    ``x_flat`` (the iterative driver computes exactly that). ``matrix_norm`` (dense solves)
    switches on the round-off acceptance test of :func:`_roundoff_tolerance`. ``inner``:
    the LinearSolveInfo of the scaled system a scaled solve iterated on, whose test decides
    convergence."""
    if r_proj is None:
        x_flat = prob.P(x_flat)
        r_proj = prob.b_proj - prob.A_orig(x_flat)
    res = _norm(r_proj)
    tol_abs = prob.tol_abs
    if matrix_norm is not None:
        tol_abs = _roundoff_tolerance(prob, matrix_norm, x_flat)
    if inner is None:
        test = (res, tol_abs)
        converged = (res <= tol_abs) & prob.consistent
        solver_norms = (res, prob.bnorm)
    else:
        test = (inner.residual_norm, inner.tolerance)
        converged = inner.converged & prob.consistent
        solver_norms = (inner.residual_norm, inner.rhs_norm)
    info = LinearSolveInfo(
        iterations=jnp.asarray(iterations, jnp.int32),
        residual_norm=res,
        rhs_norm=prob.bnorm,
        converged=converged,
        inconsistency=prob.inconsistency,
        tolerance=tol_abs,
        solver_residual_norm=solver_norms[0],
        solver_rhs_norm=solver_norms[1],
    )
    x = prob.unravel(x_flat)
    x = _apply_policy(prob, x, info, on_failure, dense, test)
    return (x, info) if full_output else x


def _absolute_tolerance(rhs_norm, tol, atol, dtype=None):
    """``max(tol * ||b||, atol)``, the threshold of every solver's convergence test."""
    xp = np if isinstance(rhs_norm, np.ndarray | float) else jnp
    dtype = dtype or getattr(rhs_norm, "dtype", None)
    return xp.maximum(xp.asarray(tol, dtype) * rhs_norm, xp.asarray(atol, dtype))


def default_maxiter(n: int) -> int:
    """The iterative solvers' iteration limit for ``n`` unknowns (``maxiter=None``): ``10 n``.
    For a caller that runs its own Krylov loop with the solvers' defaults."""
    return 10 * n


def within_tolerance(residual_norm: Any, rhs_norm: Any, tol: Any, atol: Any = 0.0):
    """The convergence test of every solver: ``residual_norm <= max(tol * rhs_norm, atol)``.

    Elementwise (one test per column of a batch); NumPy in, NumPy out. A NaN residual
    fails. For a caller that recomputes the residuals of many solves at once (a Jacobian's
    columns) and applies the solvers' own test to them.
    """
    return residual_norm <= _absolute_tolerance(rhs_norm, tol, atol)


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


