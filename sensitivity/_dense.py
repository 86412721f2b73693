"""Dense linear solvers (they materialize the matrix: ``n`` matvecs), iterative refinement,
and :func:`get_solver`, the registry of every solver by name.

``solve_lu``, ``solve_cholesky``, ``solve_qr`` and ``solve_inv`` factor the materialized
matrix, ``solve_lstsq`` takes its pseudo-inverse; all accept the common keywords of
:mod:`sensitivity._linear_solve` (``init`` and ``maxiter`` are accepted and ignored) and are
accepted by a round-off rule (:func:`sensitivity._linear_solve._roundoff_tolerance`) when
``tol`` is left to its default. With a null space they solve the deflated system
``(P A P + c Q Q^T) x = P b``. ``solve_iterative_refinement`` corrects any inner solve
(typically an inexact or lower-precision one) by re-solving for the residual,
``x <- x + solve(A, b - A x)`` (Wilkinson 1963; Higham, "Accuracy and Stability of
Numerical Algorithms", ch. 12), in jaxopt's positional order ``(matvec, b, init, maxiter,
tol, solve)``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from ._krylov import solve_bicgstab, solve_cg, solve_gmres, solve_minres, solve_normal_cg
from ._linear_solve import (
    _HIGHEST,
    _check_policy,
    _finish,
    _linear_solver,
    _norm,
    _Options,
    _problem,
    _Problem,
)

__all__ = ["solve_lu", "solve_cholesky", "solve_lstsq", "solve_qr", "solve_inv",
           "solve_iterative_refinement", "get_solver"]


def _dense_setup(name, matvec, b, ridge, opts: _Options):
    prob = _problem(name, matvec, b, ridge, None, opts)
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


def _factored(name, matvec, b, ridge, opts, solve_deflated):
    """A dense solve by ``solve_deflated(deflated matrix, P b)``, accepted by round-off."""
    prob, Amat = _dense_setup(name, matvec, b, ridge, opts)
    x = solve_deflated(_deflate(prob, Amat), prob.b_proj)
    return _finish(prob, x, 0, opts.on_failure, opts.full_output, dense=True,
                   matrix_norm=jnp.linalg.norm(Amat))


@_linear_solver(preconditioned=False)
def solve_lu(matvec: Any, b: Any, ridge: Any, init: Any, opts: _Options):
    """Dense LU solve (``jnp.linalg.solve``) of the materialized matrix (``n`` matvecs).

    For small systems. With a null space, solves the deflated ``(P A P + c Q Q^T) x = P b``.
    The residual is checked against the tolerance like the iterative solvers (a singular
    matrix is reported).
    """
    return _factored("solve_lu", matvec, b, ridge, opts, jnp.linalg.solve)


def _cholesky(Ad, rhs):
    Ad = 0.5 * (Ad + Ad.T)
    cf = jax.scipy.linalg.cho_factor(Ad, lower=True)
    return jax.scipy.linalg.cho_solve(cf, rhs)


@_linear_solver(preconditioned=False)
def solve_cholesky(matvec: Any, b: Any, ridge: Any, init: Any, opts: _Options):
    """Dense Cholesky solve of the materialized symmetric positive definite matrix.

    A matrix that is not SPD gives NaN and is reported. With a null space (a positive
    semi-definite ``A``), solves the deflated ``(P A P + c Q Q^T) x = P b``, which is SPD.
    """
    return _factored("solve_cholesky", matvec, b, ridge, opts, _cholesky)


def _qr(Ad, rhs):
    q, r = jnp.linalg.qr(Ad)
    return jax.scipy.linalg.solve_triangular(
        r, jnp.matmul(q.T, rhs, precision=_HIGHEST), lower=False)


@_linear_solver(preconditioned=False)
def solve_qr(matvec: Any, b: Any, ridge: Any, init: Any, opts: _Options):
    """Dense QR solve: ``A = Q R``, ``x = R^{-1} Q^T b`` (Householder, backward stable).

    For small systems; a singular matrix is reported. With a null space, solves the
    deflated system as :func:`solve_lu` does.
    """
    return _factored("solve_qr", matvec, b, ridge, opts, _qr)


@_linear_solver(preconditioned=False)
def solve_inv(matvec: Any, b: Any, ridge: Any, init: Any, opts: _Options):
    """Dense solve by the explicit inverse, ``x = A^{-1} b``.

    Offered for jaxopt compatibility; it is less accurate than :func:`solve_lu` (the
    inverse is not backward stable), which the round-off acceptance test takes into
    account: an ill-conditioned system is reported rather than silently inaccurate.
    """
    return _factored("solve_inv", matvec, b, ridge, opts,
                     lambda A, rhs: jnp.matmul(jnp.linalg.inv(A), rhs, precision=_HIGHEST))


@_linear_solver(preconditioned=False, rcond=None)
def solve_lstsq(matvec: Any, b: Any, ridge: Any, init: Any, opts: _Options, rcond: Any):
    """Dense minimum-norm least-squares solve (pseudo-inverse, ``jnp.linalg.lstsq``).

    Singular values below ``rcond * s_max`` are cut (default ``eps * n``). The returned
    ``x`` is ``pinv(A) b``; it is reported as converged only if ``||A x - b||`` meets the
    tolerance, so an inconsistent system is reported (use ``on_failure="ignore"`` to take
    the least-squares answer silently).
    """
    prob, Amat = _dense_setup("solve_lstsq", matvec, b, ridge, opts)
    x = jnp.linalg.lstsq(Amat, prob.b_proj, rcond=rcond)[0]
    return _finish(prob, x, 0, opts.on_failure, opts.full_output, dense=True)


# ---------------------------------------------------------------------------------------
# iterative refinement


def _accepts(fn, keyword):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def solve_iterative_refinement(matvec: Callable, b: Any, init: Any = None, maxiter: int = 10,
                               tol: float = 1e-7, solve: Callable | None = None, *,
                               ridge=None, matvec_bar: Callable | None = None,
                               rtol=None, on_failure="raise", full_output=False,
                               **solve_options):
    """Iterative refinement: ``x_{k+1} = x_k + solve(A_bar, b - A x_k)``.

    Each step solves for the current residual with ``solve`` applied to ``matvec_bar``
    (default: ``matvec`` itself), e.g. a float32 or a preconditioned approximation of
    ``A``, and the residual ``b - A x`` is always computed with the exact ``matvec``. It
    stops when ``||b - A x|| <= max(tol, rtol ||b||)`` or after ``maxiter`` refinement
    steps. ``tol`` is absolute (jaxopt's default ``1e-7``); ``rtol`` defaults to the
    dtype's default relative tolerance (``1e-10`` in float64, ``1.2e-5`` in float32), so
    an unreachable absolute ``tol`` on a large float32 right-hand side is not demanded.

    Args:
      matvec: product with ``A``.
      b: right-hand side, any pytree.
      init: starting ``x`` (default zeros).
      maxiter: refinement steps.
      tol: absolute tolerance on the residual norm.
      solve: the inner solve ``solve(matvec, b, **solve_options)``; default
        :func:`sensitivity.solve_gmres`. Its own failure to converge is not an error (the
        refinement corrects it); ``on_failure`` applies to the refined answer.
      ridge: solve ``(A + ridge I) x = b``.
      matvec_bar: the operator the inner solve sees (default ``matvec``).
      rtol: relative tolerance (default from the dtype, see above).
      on_failure, full_output: as for every solver of :mod:`sensitivity._linear_solve`.
      **solve_options: passed to ``solve``.

    Returns:
      ``x`` like ``b`` (and a :class:`~sensitivity.LinearSolveInfo` whose ``iterations``
      counts refinement steps when ``full_output``).
    """
    _check_policy(on_failure)
    if solve is None:
        solve = solve_gmres
    if _accepts(solve, "on_failure"):
        solve = functools.partial(solve, on_failure="ignore")
    prob = _Problem("solve_iterative_refinement", matvec, b, ridge, init, None, None,
                        rtol, tol, None, maxiter)
    bar = prob.A_orig
    if matvec_bar is not None:
        bar_problem = _Problem("solve_iterative_refinement", matvec_bar, b, ridge, None,
                                   None, None, rtol, tol, None, maxiter)
        bar = bar_problem.A_orig
    unravel = prob.unravel

    def inner_operator(tree):
        return unravel(bar(ravel_pytree(tree)[0].astype(prob.dtype)))

    def correction(r):
        dx = solve(inner_operator, unravel(r), **solve_options)
        return ravel_pytree(dx)[0].astype(prob.dtype)

    x0 = jnp.zeros_like(prob.b) if prob.x0 is None else prob.x0
    r0 = prob.b - prob.A_orig(x0)

    def cond(state):
        _, r, k = state
        return (_norm(r) > prob.tol_abs) & (k < prob.maxiter)

    def body(state):
        x, r, k = state
        x = x + correction(r)
        return x, prob.b - prob.A_orig(x), k + 1

    x, r, k = lax.while_loop(cond, body, (x0, r0, jnp.zeros((), jnp.int32)))
    return _finish(prob, x, k, on_failure, full_output, r_proj=r)


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
    "qr": solve_qr,
    "inv": solve_inv,
    "iterative_refinement": solve_iterative_refinement,
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
