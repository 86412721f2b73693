"""More linear solvers with the reporting conventions of :mod:`sensitivity._linear_solve`.

``solve_qr`` and ``solve_inv`` materialize the matrix (``n`` matvecs), like ``solve_lu``;
``solve_iterative_refinement`` corrects any inner solve (typically an inexact or
lower-precision one) by re-solving for the residual: ``x <- x + solve(A, b - A x)``
(Wilkinson 1963; Higham, "Accuracy and Stability of Numerical Algorithms", ch. 12).

Each takes ``matvec`` and a pytree ``b`` and returns a pytree like ``b``; each accepts the
common keywords ``ridge``, ``nullspace`` (dense ones), ``on_failure`` and
``full_output`` (see :mod:`sensitivity._linear_solve`), and the jaxopt positional order
``(matvec, b, ridge)`` / ``(matvec, b, init, maxiter, tol, solve)``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from sensitivity import _linear_solve as _ls

__all__ = ["solve_qr", "solve_inv", "solve_iterative_refinement"]


def solve_qr(matvec: Callable, b: Any, ridge=None, init=None, *, tol=None, atol=0.0,
             maxiter=None, nullspace=None, on_failure="raise", full_output=False,
             consistency_tol=None):
    """Dense QR solve: ``A = Q R``, ``x = R^{-1} Q^T b`` (Householder, backward stable).

    The materialized matrix costs ``n`` matvecs; for small systems. ``init`` and
    ``maxiter`` are accepted and ignored. The residual is accepted by the dense round-off
    rule of :func:`sensitivity._linear_solve._roundoff_tolerance` (default ``tol``); a
    singular matrix is reported. With a null space, solves the deflated system
    ``(P A P + c Q_N Q_N^T) x = P b`` as :func:`sensitivity.solve_lu` does.
    """
    del init, maxiter
    _ls._check_policy(on_failure)
    prob, Amat = _ls._dense_setup("solve_qr", matvec, b, ridge, nullspace, tol, atol,
                                  consistency_tol)
    q, r = jnp.linalg.qr(_ls._deflate(prob, Amat))
    rhs = jnp.matmul(q.T, prob.b_proj, precision=_ls._HIGHEST)
    x = jax.scipy.linalg.solve_triangular(r, rhs, lower=False)
    return _ls._finish(prob, x, 0, on_failure, full_output, dense=True,
                       matrix_norm=jnp.linalg.norm(Amat))


def solve_inv(matvec: Callable, b: Any, ridge=None, init=None, *, tol=None, atol=0.0,
              maxiter=None, nullspace=None, on_failure="raise", full_output=False,
              consistency_tol=None):
    """Dense solve by the explicit inverse, ``x = A^{-1} b``.

    Offered for jaxopt compatibility; it is less accurate than :func:`sensitivity.solve_lu`
    (the inverse is not backward stable), which the round-off acceptance test takes into
    account: an ill-conditioned system is reported rather than silently inaccurate.
    ``init`` and ``maxiter`` are ignored.
    """
    del init, maxiter
    _ls._check_policy(on_failure)
    prob, Amat = _ls._dense_setup("solve_inv", matvec, b, ridge, nullspace, tol, atol,
                                  consistency_tol)
    x = jnp.matmul(jnp.linalg.inv(_ls._deflate(prob, Amat)), prob.b_proj,
                   precision=_ls._HIGHEST)
    return _ls._finish(prob, x, 0, on_failure, full_output, dense=True,
                       matrix_norm=jnp.linalg.norm(Amat))


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
    _ls._check_policy(on_failure)
    if solve is None:
        solve = _ls.solve_gmres
    if _accepts(solve, "on_failure"):
        solve = functools.partial(solve, on_failure="ignore")
    prob = _ls._Problem("solve_iterative_refinement", matvec, b, ridge, init, None, None,
                        rtol, tol, None, maxiter)
    bar = prob.A_orig
    if matvec_bar is not None:
        bar_problem = _ls._Problem("solve_iterative_refinement", matvec_bar, b, ridge, None,
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
        return (_ls._norm(r) > prob.tol_abs) & (k < prob.maxiter)

    def body(state):
        x, r, k = state
        x = x + correction(r)
        return x, prob.b - prob.A_orig(x), k + 1

    x, r, k = lax.while_loop(cond, body, (x0, r0, jnp.zeros((), jnp.int32)))
    return _ls._finish(prob, x, k, on_failure, full_output, r_proj=r)


_ls._SOLVERS.update(qr=solve_qr, inv=solve_inv, iterative_refinement=solve_iterative_refinement)
_ls._HINTS.update(
    solve_qr=_ls._HINTS["solve_lu"],
    solve_inv=_ls._HINTS["solve_lu"],
    solve_iterative_refinement=(
        "raise maxiter, loosen tol, or give a more accurate inner solve (solve=..., "
        "matvec_bar=...); refinement converges only when the inner solve reduces the "
        "residual at each step"
    ),
)
