"""More projections: the l1 sphere, the sparse simplex, transportation polytopes.

Same conventions as :mod:`sensitivity._projection` (``proj(x, hyperparams)``, derivatives
in forward and reverse mode). The transportation projections are for small matrices: the
Euclidean one solves a dense QP with ``n m`` variables (:func:`sensitivity.solve_qp`), the
KL one runs log-domain Sinkhorn iterations and is differentiated implicitly.

References: Kyrillidis, Becker, Cevher & Koch, "Sparse projections onto the simplex",
ICML 2013; Cuturi, "Sinkhorn distances", NeurIPS 2013; Blondel, Seguy & Rolet, "Smooth and
sparse optimal transport", AISTATS 2018.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from sensitivity._projection import projection_simplex

__all__ = [
    "projection_l1_sphere",
    "projection_sparse_simplex",
    "projection_transport",
    "projection_birkhoff",
    "kl_projection_transport",
    "kl_projection_birkhoff",
]


def projection_l1_sphere(x: jax.Array, value: float = 1.0) -> jax.Array:
    """Projection onto the l1 sphere ``{y : ||y||_1 = value}``.

    ``s * projection_simplex(|x|, value)`` with ``s_i = sign(x_i)`` and ``s_i = +1`` where
    ``x_i = 0`` (either sign is a nearest point there; ``+1`` keeps the result on the sphere,
    e.g. ``x = 0`` gives the uniform vector ``value / n``, a nearest point).

    Args:
      x: array to project (the whole array).
      value: radius (``None`` means 1).

    Returns:
      An array like ``x``.
    """
    x = jnp.asarray(x)
    value = 1.0 if value is None else value
    signs = jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)
    return signs * projection_simplex(jnp.abs(x), value)


def projection_sparse_simplex(
    x: jax.Array, max_nz: int, use_approx_max_nz: bool = False, value: float = 1.0
) -> jax.Array:
    """Projection onto the simplex with at most ``max_nz`` non-zero entries.

    ``argmin ||p - x||^2 s.t. p >= 0, sum(p) = value, ||p||_0 <= max_nz``. Keeping the
    ``max_nz`` largest entries and projecting them onto the simplex is exact (Kyrillidis
    et al. 2013, greedy selector and simplex projector).

    Args:
      x: vector of shape ``(n,)``.
      max_nz: the largest number of non-zero entries (a Python int).
      use_approx_max_nz: pick the largest entries with :func:`jax.lax.approx_max_k`
        (faster on TPU, approximate).
      value: total mass (``None`` means 1).

    Returns:
      A vector like ``x``. Derivatives are those of the simplex projection of the kept
      entries (zero for the others).
    """
    x = jnp.asarray(x)
    value = 1.0 if value is None else value
    if use_approx_max_nz:
        top, idx = jax.lax.approx_max_k(x, max_nz)
    else:
        top, idx = jax.lax.top_k(x, max_nz)
    return jnp.zeros_like(x).at[idx].set(projection_simplex(top, value))


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
    from sensitivity._solvers import solve_qp  # _solvers imports the projection modules

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
    from sensitivity._implicit_diff import custom_root
    from sensitivity._linear_solve import solve_lu

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
