"""Convex quadratic programs: a dense primal-dual interior point, differentiated through
its KKT conditions.

``solve_qp`` solves ``min 1/2 x^T Q x + c^T x s.t. A x = b, G x <= h`` by Mehrotra's
predictor-corrector on the full KKT system, then polishes the identified active set
(OSQP's solution polishing) so that complementarity is exact; implicit differentiation
uses :func:`sensitivity.make_kkt_optimality_fun` with a dense LU solve. The projections
that are QPs (:func:`sensitivity.projection_polyhedron`, the transportation polytope) use
it.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from ._dense import solve_lu
from ._optimality import KKTSolution, make_kkt_optimality_fun
from ._solver_loop import SolverResult, _decorate, _iterate, _result

__all__ = ["solve_qp"]


def _qp_objective(x, params_obj):
    Q, c = params_obj
    return 0.5 * jnp.vdot(x, Q @ x) + jnp.vdot(c, x)


def _qp_eq(x, params_eq):
    A, b = params_eq
    return A @ x - b


def _qp_ineq(x, params_ineq):
    G, h = params_ineq
    return G @ x - h


_qp_kkt = make_kkt_optimality_fun(_qp_objective, _qp_eq, _qp_ineq)


def _vacuous_rows(A):
    """``diag(1)`` at the all-zero rows of ``A`` (the constraint ``0 = b_i``, vacuous when
    ``b_i = 0``), ``0`` elsewhere: added to the KKT system's equality-dual block it pins
    those multipliers to 0 instead of leaving the KKT matrix singular (jaxopt's tests write
    "no equality" as ``A = [[0, 0]], b = [0]``). Exactly zero for a full-rank ``A``."""
    return jnp.diag((jnp.max(jnp.abs(A), axis=1, initial=0.0) == 0).astype(A.dtype))


def _qp_interior_point(Q, c, A, b, G, h, tol, maxiter):
    """Mehrotra predictor-corrector primal-dual interior point on the full KKT system."""
    n, p, m = c.shape[0], b.shape[0], h.shape[0]
    dtype = c.dtype
    zeros = functools.partial(jnp.zeros, dtype=dtype)
    vacuous = _vacuous_rows(A)

    def residuals(x, nu, lam, s):
        rd = Q @ x + c + A.T @ nu + G.T @ lam
        rp = A @ x - b
        ri = G @ x + s - h
        return rd, rp, ri

    def newton_direction(x, nu, lam, s, rc):
        rd, rp, ri = residuals(x, nu, lam, s)
        # Unknowns (dx, dnu, dlam, ds); rows: stationarity, equalities, inequalities, s*lam.
        kkt = jnp.block(
            [
                [Q, A.T, G.T, zeros((n, m))],
                [A, vacuous, zeros((p, m)), zeros((p, m))],
                [G, zeros((m, p)), zeros((m, m)), jnp.eye(m, dtype=dtype)],
                [zeros((m, n)), zeros((m, p)), jnp.diag(s), jnp.diag(lam)],
            ]
        )
        rhs = -jnp.concatenate([rd, rp, ri, rc])
        d = jnp.linalg.solve(kkt, rhs)
        return d[:n], d[n : n + p], d[n + p : n + p + m], d[n + p + m :]

    def max_step(v, dv):
        ratios = jnp.where(dv < 0, -v / jnp.where(dv < 0, dv, -1.0), jnp.inf)
        return jnp.minimum(1.0, jnp.min(ratios, initial=jnp.inf))

    def error_of(x, nu, lam, s):
        rd, rp, ri = residuals(x, nu, lam, s)
        gap = jnp.vdot(s, lam) / m
        return jnp.max(
            jnp.stack(
                [jnp.max(jnp.abs(rd)), jnp.max(jnp.abs(rp), initial=0.0), jnp.max(jnp.abs(ri)), gap]
            )
        )

    def update(carry):
        x, nu, lam, s = carry
        mu = jnp.vdot(s, lam) / m
        # Predictor (affine scaling) step.
        dx, dnu, dlam, ds = newton_direction(x, nu, lam, s, s * lam)
        alpha = jnp.minimum(max_step(s, ds), max_step(lam, dlam))
        mu_aff = jnp.vdot(s + alpha * ds, lam + alpha * dlam) / m
        sigma = (mu_aff / mu) ** 3
        # Corrector with centering.
        rc = s * lam + ds * dlam - sigma * mu
        dx, dnu, dlam, ds = newton_direction(x, nu, lam, s, rc)
        alpha = 0.99 * jnp.minimum(max_step(s, ds), max_step(lam, dlam))
        alpha = jnp.minimum(alpha, 1.0)
        new = (x + alpha * dx, nu + alpha * dnu, lam + alpha * dlam, s + alpha * ds)
        return new, error_of(*new)

    return update


def _qp_polish(Q, c, A, b, G, h, x, nu, lam, s, error):
    """Solves the KKT system of the active set the interior point identified (OSQP's polish).

    Constraints with ``lam_i > s_i`` are taken as equalities, the others get ``lam_i = 0``;
    the result is exact (complementarity holds to rounding) and is kept only if it is
    primal and dual feasible and its KKT error is no worse.
    """
    n, p, m = c.shape[0], b.shape[0], h.shape[0]
    dtype = c.dtype
    active = (lam > s).astype(dtype)
    kkt = jnp.block(
        [
            [Q, A.T, G.T],
            [A, _vacuous_rows(A), jnp.zeros((p, m), dtype)],
            [active[:, None] * G, jnp.zeros((m, p), dtype), jnp.diag(1.0 - active)],
        ]
    )
    d = jnp.linalg.solve(kkt, jnp.concatenate([-c, b, active * h]))
    x_p, nu_p, lam_p = d[:n], d[n : n + p], d[n + p :]
    rd = Q @ x_p + c + A.T @ nu_p + G.T @ lam_p
    error_p = jnp.max(
        jnp.stack(
            [
                jnp.max(jnp.abs(rd)),
                jnp.max(jnp.abs(A @ x_p - b), initial=0.0),
                jnp.max(jnp.maximum(G @ x_p - h, 0.0)),
                jnp.max(jnp.maximum(-lam_p, 0.0)),
            ]
        )
    )
    keep = jnp.isfinite(error_p) & (error_p <= jnp.maximum(error, 1e3 * jnp.finfo(dtype).eps))
    pick = lambda new, old: jnp.where(keep, new, old)  # noqa: E731
    return pick(x_p, x), pick(nu_p, nu), pick(lam_p, lam), pick(error_p, error)


def solve_qp(
    Q: jax.Array,
    c: jax.Array,
    A: jax.Array | None = None,
    b: jax.Array | None = None,
    G: jax.Array | None = None,
    h: jax.Array | None = None,
    *,
    tol: float | None = None,
    maxiter: int = 100,
    polish: bool = True,
    implicit_diff: bool = True,
    solve: Callable | None = None,
) -> SolverResult:
    r"""Solves the convex QP ``min 1/2 x^T Q x + c^T x  s.t.  A x = b,  G x <= h``.

    Dense primal-dual interior point (Mehrotra predictor-corrector) on the full KKT system, with
    slacks ``s = h - G x >= 0`` and multipliers ``lam >= 0``; without inequalities, one solve
    of the KKT system ``[[Q, A^T], [A, 0]]``. ``Q`` must be positive semi-definite and the
    problem feasible and bounded; ``A`` of full row rank (all-zero rows, ``0 = 0``, are
    allowed). ``error`` is the largest of the stationarity, equality and inequality
    residuals (max-norms) and the mean complementarity ``s^T lam / m``. With ``polish`` the
    interior point's active set is then solved exactly (OSQP's solution polishing): kept when
    feasible, it makes complementarity exact, which a tight derivative needs.

    Implicit differentiation: :func:`sensitivity.make_kkt_optimality_fun` (stationarity,
    primal feasibility, complementary slackness) in ``(x, nu, lam)``, with respect to
    ``Q, c, A, b, G, h``; default linear solve a dense LU (the KKT Jacobian is not symmetric).
    Valid where strict complementarity holds (no weakly active constraint).

    Args:
      Q: ``(n, n)`` positive semi-definite.
      c: ``(n,)``.
      A, b: equality constraints ``(p, n)``, ``(p,)``, or None.
      G, h: inequality constraints ``(m, n)``, ``(m,)``, or None.
      tol: tolerance on ``error`` (absolute). Default: ``max(1e-10, 1000 eps) * max(1, s)``
        with ``eps`` the dtype's machine epsilon and ``s`` the largest magnitude in
        ``Q, c, A, b, G, h``: ``1e-10`` for unit-scale float64 data, about ``1.2e-4 s`` in
        float32, where the KKT residuals cannot go below a few ulps of the data (a fixed
        ``1e-10`` would never be met and every float32 QP would report failure).
      maxiter: interior-point iteration limit (each iteration solves the KKT system twice).
      polish: refine with the KKT system of the identified active set.
      implicit_diff: decorate with implicit differentiation.
      solve: linear solver for implicit differentiation (default ``solve_lu``).

    Returns:
      :class:`SolverResult` whose ``params`` is a :class:`sensitivity.KKTSolution`
      ``(primal x, dual_eq nu, dual_ineq lam)``; absent constraints give empty arrays.
    """
    c = jnp.asarray(c)
    n = c.shape[0]
    dtype = jnp.result_type(c.dtype, Q.dtype)
    if (A is None) != (b is None) or (G is None) != (h is None):
        raise ValueError("solve_qp: pass A with b and G with h (or neither of a pair)")
    A = jnp.zeros((0, n), dtype) if A is None else jnp.asarray(A, dtype)
    b = jnp.zeros((0,), dtype) if b is None else jnp.asarray(b, dtype)
    G = jnp.zeros((0, n), dtype) if G is None else jnp.asarray(G, dtype)
    h = jnp.zeros((0,), dtype) if h is None else jnp.asarray(h, dtype)
    p, m = b.shape[0], h.shape[0]
    Q = jnp.asarray(Q, dtype)
    c = c.astype(dtype)

    def tolerance(Q, c, A, b, G, h):
        if tol is not None:
            return tol
        floor = max(1e-10, 1000.0 * float(jnp.finfo(dtype).eps))
        scale = jnp.max(jnp.stack([jnp.max(jnp.abs(v), initial=0.0) for v in (Q, c, A, b, G, h)]))
        return floor * jnp.maximum(1.0, jax.lax.stop_gradient(scale))

    def run(init, params_obj, params_eq, params_ineq):
        del init
        Q, c = params_obj
        A, b = params_eq
        G, h = params_ineq
        tol_run = tolerance(Q, c, A, b, G, h)
        if m == 0:
            kkt = jnp.block([[Q, A.T], [A, _vacuous_rows(A)]])
            d = jnp.linalg.solve(kkt, jnp.concatenate([-c, b]))
            sol = KKTSolution(d[:n], d[n:], jnp.zeros((0,), dtype))
            error = jnp.max(jnp.abs(kkt @ d - jnp.concatenate([-c, b])))
            return sol, (jnp.asarray(1), error)
        update = _qp_interior_point(Q, c, A, b, G, h, tol_run, maxiter)
        start = (jnp.zeros(n, dtype), jnp.zeros(p, dtype), jnp.ones(m, dtype), jnp.ones(m, dtype))
        (x, nu, lam, s), error, iterations = _iterate(update, start, tol_run, maxiter, False)
        if polish:
            x, nu, lam, error = _qp_polish(Q, c, A, b, G, h, x, nu, lam, s, error)
        return KKTSolution(x, nu, lam), (iterations, error)

    if implicit_diff:
        run = _decorate(run, _qp_kkt, False, True, solve_lu if solve is None else solve)
    init = KKTSolution(jnp.zeros(n, dtype), jnp.zeros(p, dtype), jnp.zeros(m, dtype))
    return _result(run(init, (Q, c), (A, b), (G, h)), tolerance(Q, c, A, b, G, h))
