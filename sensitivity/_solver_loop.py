"""The loop and the result every solver of the engine shares.

:func:`_iterate` runs a solver's update in a ``jax.lax.while_loop`` until its stopping
criterion meets ``tol`` (or, with ``unroll``, in a ``jax.lax.scan`` that reverse mode can
differentiate); :func:`_decorate` attaches implicit differentiation through the solver's
optimality condition; :class:`SolverResult` is what every solver returns. Used by the
first-order solvers (:mod:`sensitivity._solvers`), the QP (:mod:`sensitivity._qp`) and the
conic solver (:mod:`sensitivity._conic`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ._implicit_diff import custom_fixed_point, custom_root

__all__ = ["SolverResult"]


class SolverResult(NamedTuple):
    """What a solver returns (a pytree: it passes through ``jit`` and ``vmap``).

    Attributes:
      params: the solution (differentiable, implicitly or by unrolling).
      iterations: number of iterations run.
      error: the stopping criterion at ``params`` (see each solver).
      converged: ``error <= tol``.
    """

    params: Any
    iterations: jax.Array
    error: jax.Array
    converged: jax.Array



def _iterate(update: Callable, carry: Any, tol: float, maxiter: int, unroll: bool):
    """Runs ``carry, error = update(carry)`` until ``error <= tol`` or ``maxiter`` iterations.

    Returns ``(carry, error, iterations)``. With ``unroll`` a ``scan`` of ``maxiter`` steps
    whose updates are frozen once converged (reverse-differentiable, memory O(maxiter)).
    The error is a stopping criterion, not differentiated: a norm at exact convergence would
    otherwise send ``0 * inf = NaN`` into the unrolled derivative.
    """
    error0 = jnp.asarray(jnp.inf)
    inner = update

    def update(carry):
        carry, error = inner(carry)
        return carry, jax.lax.stop_gradient(error)

    if not unroll:

        def cond(state):
            _, error, it = state
            return (error > tol) & (it < maxiter)

        def body(state):
            c, _, it = state
            c, error = update(c)
            return c, jnp.asarray(error, error0.dtype), it + 1

        return jax.lax.while_loop(cond, body, (carry, error0, jnp.asarray(0)))

    def step(state, _):
        c, error, it = state
        done = error <= tol
        new_c, new_error = update(c)
        c = jax.tree.map(lambda old, new: jnp.where(done, old, new), c, new_c)
        error = jnp.where(done, error, jnp.asarray(new_error, error0.dtype))
        return (c, error, it + jnp.where(done, 0, 1)), None

    state, _ = jax.lax.scan(step, (carry, error0, jnp.asarray(0)), None, length=maxiter)
    return state


def _decorate(
    run: Callable,
    optimality_fun: Callable | None,
    fixed_point: bool,
    implicit_diff: bool,
    solve: Callable | None,
    symmetric: bool = False,
):
    """Decorates ``run(init, *args) -> (params, (iterations, error))`` for implicit diff."""
    if implicit_diff:
        if fixed_point:
            run = custom_fixed_point(optimality_fun, has_aux=True, solve=solve)(run)
        else:
            run = custom_root(optimality_fun, has_aux=True, solve=solve, symmetric=symmetric)(run)
    return run


def _result(out, tol) -> SolverResult:
    params, (iterations, error) = out
    return SolverResult(params, iterations, error, error <= tol)


def _check_unroll(implicit_diff: bool, unroll: bool, step_size) -> None:
    if implicit_diff and unroll:
        raise ValueError(
            "implicit_diff=True and unroll=True are exclusive: pick one way to differentiate"
        )
    if unroll and step_size is None:
        raise ValueError(
            "unroll=True needs a fixed step_size (the backtracking line search is a while_loop, "
            "which reverse mode cannot unroll)"
        )
