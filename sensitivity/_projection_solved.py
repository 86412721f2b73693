"""Projections computed by an inner solver and differentiated implicitly.

Same conventions as :mod:`sensitivity._projection` (``proj(x, hyperparams)``, derivatives
in forward and reverse mode), for the sets without a closed form: the polyhedron and the
transportation polytope are QPs (:func:`sensitivity.solve_qp`, differentiated through its
KKT conditions; small problems, the KKT system is dense), the box section is a scalar root
found by bisection, and the KL transportation projection runs log-domain Sinkhorn
iterations; the last two are differentiated by :func:`sensitivity.custom_root`.

References: Cuturi, "Sinkhorn distances", NeurIPS 2013; Blondel, Seguy & Rolet, "Smooth
and sparse optimal transport", AISTATS 2018.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from ._dense import solve_lu
from ._implicit_diff import custom_root
from ._qp import solve_qp

__all__ = [
    "projection_polyhedron",
    "projection_box_section",
    "projection_transport",
    "projection_birkhoff",
    "kl_projection_transport",
    "kl_projection_birkhoff",
]


# --------------------------------------------------------------------------- polyhedra


def projection_polyhedron(
    x: jax.Array,
    hyperparams: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    check_feasible: bool = False,
    *,
    tol: float | None = None,
    maxiter: int = 100,
) -> jax.Array:
    """Projection onto the polyhedron ``{y : A y = b, G y <= h}``.

    Solves the QP ``min 1/2 ||y - x||^2 s.t. A y = b, G y <= h`` with
    :func:`sensitivity.solve_qp` (primal-dual interior point), whose derivatives come from the
    implicit function theorem applied to the KKT conditions. Needs a non-empty polyhedron; at a
    point where the QP has not converged (e.g. an empty polyhedron) the result is NaN, unless
    ``check_feasible`` asks for an error.

    Args:
      x: vector of shape ``(n,)``.
      hyperparams: ``(A, b, G, h)`` with shapes ``(p, n), (p,), (m, n), (m,)``; ``A, b`` may be
        ``None`` (no equality) and so may ``G, h`` (no inequality).
      check_feasible: raise ``ValueError`` when the QP does not converge (an empty polyhedron,
        or too few iterations), as jaxopt does; needs concrete values (not under ``jit``).
        Default ``False``: NaN, which works under every transformation.
      tol: interior-point tolerance (default from the dtype and the data's scale, see
        :func:`sensitivity.solve_qp`).
      maxiter: interior-point iteration limit.

    Returns:
      A vector of shape ``(n,)``.
    """
    A, b, G, h = hyperparams
    n = x.shape[0]
    result = solve_qp(jnp.eye(n, dtype=x.dtype), -x, A, b, G, h, tol=tol, maxiter=maxiter)
    if check_feasible:
        _require_concrete(result.converged, "projection_polyhedron")
        if not bool(result.converged):
            raise ValueError(
                f"projection_polyhedron: the QP did not converge in {int(result.iterations)} "
                f"iterations (KKT error {float(result.error):.1e}): the polyhedron "
                f"{{A y = b, G y <= h}} is most likely empty; check A, b, G, h, or raise maxiter"
            )
    return jnp.where(result.converged, result.params.primal, jnp.nan)


def _require_concrete(value, name):
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            f"{name}(check_feasible=True) needs concrete values to raise; under jit, vmap or "
            f"autodiff pass check_feasible=False (the result is then NaN where infeasible)"
        )


def _box_section_root(tau, x, alpha, beta, w, c):
    return jnp.vdot(w, jnp.clip(x - tau * w, alpha, beta)) - c


def projection_box_section(
    x: jax.Array,
    hyperparams: tuple[Any, Any, jax.Array, Any],
    check_feasible: bool = False,
    *,
    tol: float = 1e-12,
    maxiter: int = 200,
) -> jax.Array:
    """Projection onto the box section ``{y : alpha <= y <= beta, <w, y> = c}``, ``w > 0``.

    The solution is ``clip(x - tau w, alpha, beta)`` with ``tau`` the root of the decreasing
    scalar function ``<w, clip(x - tau w, alpha, beta)> - c``, found by bisection; its
    derivatives come from the implicit function theorem (``custom_root``) on that scalar
    equation. Needs ``<w, alpha> <= c <= <w, beta>`` (non-empty set).

    Args:
      x: vector of shape ``(n,)``.
      hyperparams: ``(alpha, beta, w, c)``; ``alpha, beta`` scalars or ``(n,)``, ``w`` of shape
        ``(n,)`` with positive entries, ``c`` a scalar.
      check_feasible: raise ``ValueError`` unless ``<w, alpha> <= c <= <w, beta>`` (needs
        concrete values, as in jaxopt).
      tol: bisection tolerance on ``tau`` (relative to the initial bracket).
      maxiter: bisection iterations (each halves the bracket).

    Returns:
      A vector of shape ``(n,)``.
    """
    alpha, beta, w, c = hyperparams
    alpha = jnp.broadcast_to(jnp.asarray(alpha, x.dtype), x.shape)
    beta = jnp.broadcast_to(jnp.asarray(beta, x.dtype), x.shape)
    if check_feasible:
        low, high = jnp.vdot(w, alpha), jnp.vdot(w, beta)
        _require_concrete(low - high + c, "projection_box_section")
        if not float(low) <= float(c):
            raise ValueError(f"projection_box_section: the set is empty, <w, alpha> = "
                             f"{float(low):.6g} > c = {float(c):.6g}; lower alpha or raise c")
        if not float(high) >= float(c):
            raise ValueError(f"projection_box_section: the set is empty, <w, beta> = "
                             f"{float(high):.6g} < c = {float(c):.6g}; raise beta or lower c")

    @custom_root(_box_section_root, solve=solve_lu)
    def solve_tau(tau_init, x, alpha, beta, w, c):
        del tau_init
        # tau brackets: at tau_low every y_i = beta_i, at tau_high every y_i = alpha_i.
        tau_low = jnp.min((x - beta) / w)
        tau_high = jnp.max((x - alpha) / w)
        width = tau_high - tau_low

        def body(state):
            lo, hi, it = state
            mid = 0.5 * (lo + hi)
            positive = _box_section_root(mid, x, alpha, beta, w, c) > 0
            return jnp.where(positive, mid, lo), jnp.where(positive, hi, mid), it + 1

        def cond(state):
            lo, hi, it = state
            return (hi - lo > tol * jnp.maximum(width, 1.0)) & (it < maxiter)

        lo, hi, _ = jax.lax.while_loop(cond, body, (tau_low, tau_high, 0))
        # The root function is piecewise linear: once the bracket holds no breakpoint, the
        # secant through its ends is exact (and otherwise stays inside the bracket).
        f_lo = _box_section_root(lo, x, alpha, beta, w, c)
        f_hi = _box_section_root(hi, x, alpha, beta, w, c)
        denom = f_lo - f_hi
        secant = lo + f_lo * (hi - lo) / jnp.where(denom > 0, denom, 1.0)
        return jnp.where(denom > 0, jnp.clip(secant, lo, hi), 0.5 * (lo + hi))

    tau = solve_tau(jnp.zeros((), x.dtype), x, alpha, beta, w, c)
    return jnp.clip(x - tau * w, alpha, beta)


# --------------------------------------------------------------------------- transport


def _check_marginals(sim_matrix, marginals):
    a, b = marginals
    a = jnp.asarray(a, sim_matrix.dtype)
    b = jnp.asarray(b, sim_matrix.dtype)
    if sim_matrix.ndim != 2 or a.shape != sim_matrix.shape[:1] or b.shape != sim_matrix.shape[1:]:
        raise ValueError(
            f"transport projection: sim_matrix of shape (n, m) needs marginals of shapes (n,) "
            f"and (m,); got {sim_matrix.shape}, {a.shape}, {b.shape}"
        )
    return a, b


def projection_transport(
    sim_matrix: jax.Array,
    marginals: tuple[jax.Array, jax.Array],
    make_solver: Callable | None = None,
    use_semi_dual: bool = True,
) -> jax.Array:
    """Euclidean projection onto the transportation polytope.

    ``argmin_{P >= 0} 1/2 ||P - S||^2 s.t. P 1 = a, P^T 1 = b`` (``sum(a) = sum(b)``),
    solved as a dense QP in the ``n m`` entries of ``P`` by :func:`sensitivity.solve_qp`
    (primal-dual interior point, polished on its active set) and differentiated through its
    KKT conditions. One column constraint is left out (it is implied by the others), so the
    equality constraints have full rank. For small matrices (the KKT system is dense,
    ``O((n m)^3)`` per iteration).

    Args:
      sim_matrix: ``S``, shape ``(n, m)``.
      marginals: ``(a, b)``, shapes ``(n,)`` and ``(m,)``, non-negative, equal sums.
      make_solver, use_semi_dual: accepted for jaxopt's signature; jaxopt solves a dual with
        the solver ``make_solver`` builds, this function solves the primal QP and does not
        use them.

    Returns:
      ``P``, shape ``(n, m)``; NaN where the QP did not converge (e.g. marginals whose sums
      differ).
    """
    del make_solver, use_semi_dual

    S = jnp.asarray(sim_matrix)
    if not jnp.issubdtype(S.dtype, jnp.inexact):
        S = S.astype(jnp.result_type(float))
    a, b = _check_marginals(S, marginals)
    n, m = S.shape
    dtype = S.dtype
    rows = jnp.kron(jnp.eye(n, dtype=dtype), jnp.ones((1, m), dtype))  # (P 1)_i
    cols = jnp.kron(jnp.ones((1, n), dtype), jnp.eye(m, dtype=dtype))  # (P^T 1)_j
    A = jnp.concatenate([rows, cols[:-1]])
    rhs = jnp.concatenate([a, b[:-1]])
    eye = jnp.eye(n * m, dtype=dtype)
    result = solve_qp(eye, -S.ravel(), A, rhs, -eye, jnp.zeros(n * m, dtype))
    return jnp.where(result.converged, result.params.primal, jnp.nan).reshape(n, m)


def projection_birkhoff(
    sim_matrix: jax.Array, make_solver: Callable | None = None, use_semi_dual: bool = True
) -> jax.Array:
    """Euclidean projection onto the Birkhoff polytope (doubly stochastic matrices).

    :func:`projection_transport` with unit marginals; ``sim_matrix`` is square ``(n, n)``.
    ``make_solver`` and ``use_semi_dual`` are accepted for jaxopt's signature and unused.
    """
    S = jnp.asarray(sim_matrix)
    ones = jnp.ones(S.shape[0], jnp.result_type(S.dtype, float))
    return projection_transport(S, (ones, ones), make_solver, use_semi_dual)


def _sinkhorn_duals(S, log_a, log_b, tol, maxiter):
    """Log-domain Sinkhorn: row potential ``f`` with ``f[0] = 0`` (the gauge)."""

    def g_of(f):
        return log_b - logsumexp(S + f[:, None], axis=0)

    def row_error(f):
        return jnp.max(jnp.abs(jnp.exp(logsumexp(S + f[:, None] + g_of(f)[None, :], axis=1))
                               - jnp.exp(log_a)))

    def cond(state):
        _, error, it = state
        return (error > tol) & (it < maxiter)

    def body(state):
        f, _, it = state
        f = log_a - logsumexp(S + g_of(f)[None, :], axis=1)
        return f, row_error(f), it + 1

    f0 = jnp.zeros_like(log_a)
    f, error, it = jax.lax.while_loop(cond, body, (f0, row_error(f0), 0))
    return f - f[0], error


def _kl_transport_optimality(f, S, log_a, log_b, tol):
    """Sinkhorn's row condition with the gauge ``f[0] = 0`` in place of the (redundant)
    first row equation: zero exactly at the gauge-fixed dual potential."""
    del tol  # the solver's stopping rule, not part of the condition
    g = log_b - logsumexp(S + f[:, None], axis=0)
    rows = log_a - logsumexp(S + g[None, :], axis=1) - f
    return jnp.concatenate([f[:1], rows[1:]])


def kl_projection_transport(
    sim_matrix: jax.Array,
    marginals: tuple[jax.Array, jax.Array],
    make_solver: Callable | None = None,
    use_semi_dual: bool = True,
    *,
    tol: float | None = None,
    maxiter: int = 10000,
) -> jax.Array:
    """KL projection onto the transportation polytope (entropy-regularized transport).

    ``argmin_{P >= 0} KL(P, exp(S)) s.t. P 1 = a, P^T 1 = b``, whose solution is
    ``P = diag(e^f) exp(S) diag(e^g)`` (Cuturi 2013, regularization 1, cost ``-S``). The
    dual potentials come from log-domain Sinkhorn iterations; derivatives from the implicit
    function theorem on Sinkhorn's fixed point with the gauge ``f[0] = 0``.

    Args:
      sim_matrix: ``S``, shape ``(n, m)``.
      marginals: ``(a, b)``, positive, equal sums.
      make_solver, use_semi_dual: accepted for jaxopt's signature and unused.
      tol: stop when every row sum is within ``tol`` of ``a`` (columns are exact after each
        iteration); default ``max(1e-12, 100 eps)`` times ``max(a)``.
      maxiter: Sinkhorn iteration limit.

    Returns:
      ``P``, shape ``(n, m)``; NaN if Sinkhorn did not reach ``tol`` in ``maxiter``
      iterations.
    """
    del make_solver, use_semi_dual
    S = jnp.asarray(sim_matrix)
    if not jnp.issubdtype(S.dtype, jnp.inexact):
        S = S.astype(jnp.result_type(float))
    a, b = _check_marginals(S, marginals)
    if tol is None:
        tol = max(1e-12, 100.0 * float(jnp.finfo(S.dtype).eps)) * jnp.max(a)
    tol = jax.lax.stop_gradient(jnp.asarray(tol, S.dtype))

    def solver(init, S, log_a, log_b, tol):
        del init
        return _sinkhorn_duals(S, log_a, log_b, tol, maxiter)

    decorated = custom_root(_kl_transport_optimality, has_aux=True, solve=solve_lu)(solver)
    log_a, log_b = jnp.log(a), jnp.log(b)
    f, error = decorated(jnp.zeros_like(a), S, log_a, log_b, tol)
    g = log_b - logsumexp(S + f[:, None], axis=0)
    P = jnp.exp(S + f[:, None] + g[None, :])
    return jnp.where(error <= tol, P, jnp.nan)


def kl_projection_birkhoff(
    sim_matrix: jax.Array, make_solver: Callable | None = None, use_semi_dual: bool = True,
    **options: Any,
) -> jax.Array:
    """KL projection onto the Birkhoff polytope: :func:`kl_projection_transport` with unit
    marginals (Sinkhorn scaling of ``exp(S)`` to a doubly stochastic matrix)."""
    S = jnp.asarray(sim_matrix)
    ones = jnp.ones(S.shape[0], jnp.result_type(S.dtype, float))
    return kl_projection_transport(S, (ones, ones), make_solver, use_semi_dual, **options)
