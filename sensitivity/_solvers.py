"""Small JAX solvers for the catalog of optimality conditions, with implicit differentiation.

Each solver runs its iterations in a ``jax.lax.while_loop`` (stopping at ``tol`` or
``maxiter``) and returns a :class:`SolverResult` ``(params, iterations, error, converged)``.
With ``implicit_diff=True`` (the default) the solver is decorated with the matching
optimality condition of :mod:`sensitivity._optimality`, so ``jax.jvp``, ``jax.grad``,
``jax.jacfwd``, ``jax.jacrev`` of ``result.params`` with respect to every argument after the
initial point use the implicit function theorem and never differentiate the iterations.

With ``implicit_diff=False, unroll=True`` the same iterations run in a ``jax.lax.scan`` of
exactly ``maxiter`` steps (frozen once converged), which reverse-mode autodiff can unroll: the
baseline that ``benchmarks/bench_catalog.py`` compares against.

Every differentiated quantity must be an explicit argument (``hyperparams`` and ``*args``);
``fun``, ``prox`` and the other callables are static (closing over a differentiated value
raises :class:`sensitivity.ClosureError`).

Solver           condition (implicit differentiation)          default linear solve
---------------  --------------------------------------------  -------------------------
gradient_descent  stationarity ``grad f = 0``                    CG (Hessian, symmetric)
proximal_gradient proximal gradient fixed point                  GMRES
projected_gradient projected gradient fixed point                GMRES
mirror_descent    mirror descent fixed point                     GMRES
block_coordinate_descent block proximal gradient fixed point     GMRES
newton            Newton fixed point                             GMRES (the operator is ~I)
solve_qp          KKT conditions                                 dense LU
solve_conic       conic residual map                             dense least squares
scipy_minimize    stationarity ``grad f = 0``                    CG
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._optimality import (
    KKTSolution,
    _as_cone_spec,
    _project_embedding,
    conic_recover,
    make_block_proximal_gradient_fixed_point,
    make_cone_projection,
    make_conic_residual_map,
    make_kkt_optimality_fun,
    make_mirror_descent_fixed_point,
    make_newton_fixed_point,
    make_projected_gradient_fixed_point,
    make_proximal_gradient_fixed_point,
    make_stationary_condition,
)
from ._prox import make_prox_from_projection

__all__ = [
    "SolverResult",
    "gradient_descent",
    "proximal_gradient",
    "projected_gradient",
    "mirror_descent",
    "block_coordinate_descent",
    "newton",
    "solve_qp",
    "solve_conic",
    "ConicSolution",
    "scipy_minimize",
]


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


# --------------------------------------------------------------------------- helpers


def _tree_norm(x) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(x)))


def _tree_sub(a, b):
    return jax.tree.map(jnp.subtract, a, b)


def _tree_axpy(alpha, x, y):
    return jax.tree.map(lambda u, v: alpha * u + v, x, y)


def _tree_vdot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


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


def _finish(
    run: Callable,
    optimality_fun: Callable | None,
    fixed_point: bool,
    implicit_diff: bool,
    solve: Callable | None,
    symmetric: bool = False,
):
    """Decorates ``run(init, *args) -> (params, (iterations, error))`` for implicit diff."""
    if implicit_diff:
        from ._implicit_diff import custom_fixed_point, custom_root

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


def _precision_slack(value):
    """Rounding error of an objective value; sufficient-decrease tests ignore less than this."""
    return 16 * jnp.finfo(value.dtype).eps * (1.0 + jnp.abs(value))


def _initial_step(grad_fun: Callable, x, grad):
    """``1 / L`` from a secant estimate of the gradient's Lipschitz constant along ``-grad``.

    The secant underestimates ``L``, so the step errs on the long side and backtracking
    shrinks it. Returns 1 when the gradient vanishes or the estimate is degenerate.
    """
    norm = _tree_norm(grad)
    t = 1e-4 / jnp.where(norm > 0, norm, 1.0)
    x_probe = _tree_axpy(-t, grad, x)
    lipschitz = _tree_norm(_tree_sub(grad_fun(x_probe), grad)) / (
        t * jnp.where(norm > 0, norm, 1.0)
    )
    ok = (norm > 0) & (lipschitz > 0) & jnp.isfinite(lipschitz)
    return jnp.where(ok, 1.0 / jnp.where(ok, lipschitz, 1.0), 1.0).astype(norm.dtype)


def _default_solve(name: str):
    from . import _linear_solve

    return getattr(_linear_solve, name)


# --------------------------------------------------------------------------- gradient descent


def gradient_descent(
    fun: Callable,
    init_params: Any,
    *args: Any,
    step_size: float | None = None,
    tol: float = 1e-8,
    maxiter: int = 1000,
    implicit_diff: bool = True,
    unroll: bool = False,
    solve: Callable | None = None,
) -> SolverResult:
    r"""Minimizes a smooth ``fun(x, *args)`` by gradient descent.

    ``x <- x - eta * grad f(x)``, with a fixed ``eta = step_size`` or, when ``step_size`` is
    None, an Armijo backtracking line search (``f(x - eta g) <= f(x) - eta/2 ||g||^2``; the step
    starts from twice the previous one). Stops when ``||grad f(x)|| <= tol``.

    Implicit differentiation: :func:`sensitivity.make_stationary_condition`, a symmetric
    Hessian system solved by ``solve`` (default ``solve_cg``).

    Args:
      fun: scalar objective ``fun(x, *args)``; ``x`` may be a pytree.
      init_params: starting point (gets no derivative).
      *args: arguments of ``fun`` (differentiable).
      step_size: fixed step, or None for backtracking.
      tol: tolerance on the gradient norm.
      maxiter: iteration limit.
      implicit_diff: decorate with implicit differentiation.
      unroll: run a ``scan`` of ``maxiter`` steps (differentiable by unrolling).
      solve: linear solver for implicit differentiation.

    Returns:
      :class:`SolverResult`; ``error`` is ``||grad f(params)||``.
    """
    _check_unroll(implicit_diff, unroll, step_size)
    value_and_grad = jax.value_and_grad(fun)

    def run(init, *args):
        value, grad = value_and_grad(init, *args)
        if step_size is None:
            eta0 = _initial_step(lambda x: value_and_grad(x, *args)[1], init, grad)
        else:
            eta0 = jnp.asarray(step_size, dtype=value.dtype)

        def update(carry):
            x, value, grad, eta = carry
            sq = _tree_vdot(grad, grad)
            if step_size is None:
                # Armijo, the step never grows (it only shrinks until it is <= ~1/L).
                slack = _precision_slack(value)

                def armijo_fails(state):
                    eta, new_value, _ = state
                    return (new_value > value - 0.5 * eta * sq + slack) & (eta > 1e-20)

                def shrink(state):
                    eta = 0.5 * state[0]
                    x_new = _tree_axpy(-eta, grad, x)
                    return eta, fun(x_new, *args), x_new

                x_try = _tree_axpy(-eta, grad, x)
                eta, _, x_new = jax.lax.while_loop(
                    armijo_fails, shrink, (eta, fun(x_try, *args), x_try)
                )
            else:
                x_new = _tree_axpy(-eta, grad, x)
            new_value, new_grad = value_and_grad(x_new, *args)
            return (x_new, new_value, new_grad, eta), _tree_norm(new_grad)

        carry, error, iterations = _iterate(update, (init, value, grad, eta0), tol, maxiter, unroll)
        return carry[0], (iterations, error)

    if solve is None and implicit_diff:
        solve = _default_solve("solve_cg")
    run = _finish(run, make_stationary_condition(fun), False, implicit_diff, solve, symmetric=True)
    return _result(run(init_params, *args), tol)


# --------------------------------------------------------------------------- proximal gradient


def _proximal_gradient_run(fun, prox, step_size, acceleration, tol, maxiter, unroll):
    """``run(init, hyperparams_prox, *args)`` of (accelerated) proximal gradient."""
    value_and_grad = jax.value_and_grad(fun)

    def run(init, hyperparams_prox, *args):
        dtype = jnp.result_type(*jax.tree.leaves(init))
        if step_size is None:
            eta0 = _initial_step(
                lambda x: jax.grad(fun)(x, *args), init, jax.grad(fun)(init, *args)
            )
        else:
            eta0 = jnp.asarray(step_size, dtype=dtype)
        t0 = jnp.asarray(1.0, dtype=dtype)

        def update(carry):
            x, y, t, eta = carry
            value_y, grad_y = value_and_grad(y, *args)

            def candidate(eta):
                return prox(_tree_axpy(-eta, grad_y, y), hyperparams_prox, eta)

            if step_size is None:
                # Beck & Teboulle backtracking (the step never grows): the quadratic model at
                # y must majorize f at the candidate, up to rounding.
                slack = _precision_slack(value_y)

                def model_fails(state):
                    eta, x_new = state
                    diff = _tree_sub(x_new, y)
                    model = value_y + _tree_vdot(grad_y, diff) + _tree_vdot(diff, diff) / (2 * eta)
                    return (fun(x_new, *args) > model + slack) & (eta > 1e-20)

                def shrink(state):
                    eta = 0.5 * state[0]
                    return eta, candidate(eta)

                eta, x_new = jax.lax.while_loop(model_fails, shrink, (eta, candidate(eta)))
            else:
                x_new = candidate(eta)
            # Gradient mapping norm ||y - x_new|| / eta: zero iff y is a fixed point.
            error = _tree_norm(_tree_sub(x_new, y)) / eta
            if acceleration:
                # FISTA momentum with the adaptive restart of O'Donoghue & Candes (2015): reset
                # when the step goes against the momentum (gives linear rates when f is
                # strongly convex).
                restart = _tree_vdot(_tree_sub(y, x_new), _tree_sub(x_new, x)) > 0
                t_new = jnp.where(restart, 1.0, 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t**2)))
                momentum = jnp.where(restart, 0.0, (t - 1.0) / t_new)
                y_new = _tree_axpy(momentum, _tree_sub(x_new, x), x_new)
            else:
                t_new, y_new = t, x_new
            return (x_new, y_new, t_new, eta), error

        carry, error, iterations = _iterate(update, (init, init, t0, eta0), tol, maxiter, unroll)
        return carry[0], (iterations, error)

    return run


def proximal_gradient(
    fun: Callable,
    prox: Callable,
    init_params: Any,
    hyperparams_prox: Any,
    *args: Any,
    step_size: float | None = None,
    acceleration: bool = True,
    tol: float = 1e-8,
    maxiter: int = 1000,
    implicit_diff: bool = True,
    unroll: bool = False,
    solve: Callable | None = None,
) -> SolverResult:
    r"""Minimizes ``fun(x, *args) + g(x, hyperparams_prox)`` by proximal gradient (FISTA).

    ``x_{k+1} = prox(y_k - eta grad f(y_k), hyperparams_prox, eta)``; with ``acceleration``
    (FISTA, Beck & Teboulle 2009) ``y_{k+1} = x_{k+1} + (t_k - 1)/t_{k+1} (x_{k+1} - x_k)``,
    otherwise ``y = x`` (ISTA). ``eta`` is fixed, or found by backtracking when ``step_size`` is
    None. Stops when the gradient mapping ``||x_{k+1} - y_k|| / eta <= tol``.

    Implicit differentiation: :func:`sensitivity.make_proximal_gradient_fixed_point` with the
    fixed step size (1 when backtracking; the fixed points do not depend on it).

    Args:
      fun: smooth part ``fun(x, *args)``.
      prox: ``prox(x, hyperparams_prox, scaling)`` (see :mod:`sensitivity._prox`).
      init_params: starting point (gets no derivative).
      hyperparams_prox: hyperparameters of the prox (differentiable).
      *args: arguments of ``fun`` (differentiable).
      step_size: fixed step (``<= 1/L``), or None for backtracking.
      acceleration: FISTA momentum.
      tol, maxiter, implicit_diff, unroll, solve: as for :func:`gradient_descent`
        (default linear solve: GMRES).

    Returns:
      :class:`SolverResult`.
    """
    _check_unroll(implicit_diff, unroll, step_size)
    run = _proximal_gradient_run(fun, prox, step_size, acceleration, tol, maxiter, unroll)
    eta = 1.0 if step_size is None else step_size
    optimality = make_proximal_gradient_fixed_point(fun, prox, eta)
    run = _finish(run, optimality, True, implicit_diff, solve)
    return _result(run(init_params, hyperparams_prox, *args), tol)


def projected_gradient(
    fun: Callable,
    projection: Callable,
    init_params: Any,
    hyperparams_proj: Any,
    *args: Any,
    step_size: float | None = None,
    acceleration: bool = True,
    tol: float = 1e-8,
    maxiter: int = 1000,
    implicit_diff: bool = True,
    unroll: bool = False,
    solve: Callable | None = None,
) -> SolverResult:
    r"""Minimizes ``fun(x, *args)`` over ``C(hyperparams_proj)`` by projected gradient (FISTA).

    Proximal gradient with the prox of C's indicator, ``projection(x, hyperparams_proj)``.
    Implicit differentiation: :func:`sensitivity.make_projected_gradient_fixed_point`.

    Args:
      fun: objective ``fun(x, *args)``.
      projection: ``projection(x, hyperparams_proj)`` (see :mod:`sensitivity._projection`).
      init_params: starting point (gets no derivative).
      hyperparams_proj: hyperparameters of the set (differentiable).
      *args, step_size, acceleration, tol, maxiter, implicit_diff, unroll, solve: as for
        :func:`proximal_gradient`.

    Returns:
      :class:`SolverResult`.
    """
    _check_unroll(implicit_diff, unroll, step_size)
    prox = make_prox_from_projection(projection)
    run = _proximal_gradient_run(fun, prox, step_size, acceleration, tol, maxiter, unroll)
    eta = 1.0 if step_size is None else step_size
    optimality = make_projected_gradient_fixed_point(fun, projection, eta)
    run = _finish(run, optimality, True, implicit_diff, solve)
    return _result(run(init_params, hyperparams_proj, *args), tol)


# --------------------------------------------------------------------------- mirror descent


def mirror_descent(
    fun: Callable,
    projection_bregman: Callable,
    mapping_fun: Callable,
    init_params: Any,
    hyperparams_proj: Any,
    *args: Any,
    step_size: float = 1.0,
    tol: float = 1e-8,
    maxiter: int = 1000,
    implicit_diff: bool = True,
    unroll: bool = False,
    solve: Callable | None = None,
) -> SolverResult:
    r"""Minimizes ``fun(x, *args)`` over a set by mirror descent.

    ``x <- projection_bregman(mapping_fun(x) - eta grad f(x), hyperparams_proj)``. For the KL
    geometry on the simplex use ``mapping_fun=jnp.log`` and
    ``projection_bregman=kl_projection_simplex`` (exponentiated gradient), with ``init_params``
    in the interior; the solution must be interior too (see
    :func:`sensitivity.make_mirror_descent_fixed_point`). Stops when
    ``||x_{k+1} - x_k|| / eta <= tol``; the convergence is linear at best, so the distance to
    the solution can be much larger than ``tol``: tighten it when derivatives must be accurate.

    Implicit differentiation: :func:`sensitivity.make_mirror_descent_fixed_point`.

    Args:
      fun: objective ``fun(x, *args)``.
      projection_bregman: Bregman projection from mirror space.
      mapping_fun: the mirror map ``grad phi``.
      init_params: starting point (gets no derivative).
      hyperparams_proj: hyperparameters of the set (differentiable).
      *args: arguments of ``fun`` (differentiable).
      step_size: fixed ``eta``.
      tol, maxiter, implicit_diff, unroll, solve: as for :func:`gradient_descent`
        (default linear solve: GMRES).

    Returns:
      :class:`SolverResult`.
    """
    _check_unroll(implicit_diff, unroll, step_size)
    fixed_point_fun = make_mirror_descent_fixed_point(
        fun, projection_bregman, mapping_fun, step_size
    )

    def run(init, hyperparams_proj, *args):
        def update(x):
            x_new = fixed_point_fun(x, hyperparams_proj, *args)
            return x_new, _tree_norm(_tree_sub(x_new, x)) / step_size

        x, error, iterations = _iterate(update, init, tol, maxiter, unroll)
        return x, (iterations, error)

    run = _finish(run, fixed_point_fun, True, implicit_diff, solve)
    return _result(run(init_params, hyperparams_proj, *args), tol)


# --------------------------------------------------------------------------- block coordinate


def block_coordinate_descent(
    fun: Callable,
    block_prox: Callable,
    init_params: jax.Array,
    hyperparams_prox: Any,
    *args: Any,
    step_size: Any,
    tol: float = 1e-8,
    maxiter: int = 1000,
    implicit_diff: bool = True,
    unroll: bool = False,
    solve: Callable | None = None,
) -> SolverResult:
    r"""Minimizes ``fun(x, *args) + sum_j g(x[j], hyperparams_prox)`` by block coordinate descent.

    Cyclic sweeps over the blocks ``x[j]`` (rows of ``init_params``); block ``j`` takes the
    proximal gradient step ``x[j] <- block_prox(x[j] - eta_j [grad f(x)]_j, hyperparams, eta_j)``
    with ``eta_j <= 1 / L_j`` (``L_j`` the Lipschitz constant of ``[grad f]_j`` in ``x[j]``).
    The full gradient is recomputed for each block, which is fine for the small problems this
    is meant for. Stops when a sweep moves ``x`` by ``||dx|| / max_j eta_j <= tol``.

    Implicit differentiation: :func:`sensitivity.make_block_proximal_gradient_fixed_point`
    with the same per-block steps.

    Args:
      fun: smooth part ``fun(x, *args)``.
      block_prox: ``block_prox(x_j, hyperparams_prox, scaling)``, e.g. ``prox_group_lasso``.
      init_params: array of shape ``(n_blocks, ...)`` (gets no derivative).
      hyperparams_prox: hyperparameters shared by the blocks (differentiable).
      *args: arguments of ``fun`` (differentiable).
      step_size: ``eta``, a scalar or an array of shape ``(n_blocks,)``.
      tol, maxiter, implicit_diff, unroll, solve: as for :func:`gradient_descent`
        (default linear solve: GMRES).

    Returns:
      :class:`SolverResult`.
    """
    _check_unroll(implicit_diff, unroll, step_size)
    grad_fun = jax.grad(fun)
    n_blocks = init_params.shape[0]
    steps = jnp.broadcast_to(jnp.asarray(step_size, dtype=init_params.dtype), (n_blocks,))

    def run(init, hyperparams_prox, *args):
        def block_step(j, x):
            g = grad_fun(x, *args)
            return x.at[j].set(block_prox(x[j] - steps[j] * g[j], hyperparams_prox, steps[j]))

        def update(x):
            x_new = jax.lax.fori_loop(0, n_blocks, block_step, x)
            return x_new, _tree_norm(x_new - x) / jnp.max(steps)

        x, error, iterations = _iterate(update, init, tol, maxiter, unroll)
        return x, (iterations, error)

    optimality = make_block_proximal_gradient_fixed_point(fun, block_prox, steps)
    run = _finish(run, optimality, True, implicit_diff, solve)
    return _result(run(init_params, hyperparams_prox, *args), tol)


# --------------------------------------------------------------------------- Newton


def newton(
    fun: Callable,
    init_params: Any,
    *args: Any,
    tol: float = 1e-10,
    maxiter: int = 50,
    line_search: bool = True,
    implicit_diff: bool = True,
    unroll: bool = False,
    solve: Callable | None = None,
) -> SolverResult:
    r"""Minimizes a smooth, strictly convex ``fun(x, *args)`` by (damped) Newton's method.

    ``x <- x - alpha H(x)^{-1} grad f(x)`` with a dense Hessian of the flattened variable
    (small problems), ``alpha`` from Armijo backtracking when ``line_search`` (else 1).
    Stops when ``||grad f(x)|| <= tol``.

    Implicit differentiation: :func:`sensitivity.make_newton_fixed_point`, whose
    ``dT/dx`` vanishes at the solution (the linear system is the identity).

    Args:
      fun: scalar objective ``fun(x, *args)``.
      init_params: starting point (gets no derivative).
      *args: arguments of ``fun`` (differentiable).
      tol: tolerance on the gradient norm.
      maxiter: iteration limit.
      line_search: Armijo backtracking on ``alpha`` (a while_loop: not with ``unroll``).
      implicit_diff, unroll, solve: as for :func:`gradient_descent` (default solve: GMRES).

    Returns:
      :class:`SolverResult`; ``error`` is ``||grad f(params)||``.
    """
    if implicit_diff and unroll:
        raise ValueError(
            "implicit_diff=True and unroll=True are exclusive: pick one way to differentiate"
        )
    if unroll and line_search:
        raise ValueError("unroll=True needs line_search=False (the line search is a while_loop)")

    def run(init, *args):
        flat0, unravel = ravel_pytree(init)

        def flat_fun(v):
            return fun(unravel(v), *args)

        value_and_grad = jax.value_and_grad(flat_fun)
        hessian = jax.hessian(flat_fun)

        def update(carry):
            x, value, grad = carry
            direction = jnp.linalg.solve(hessian(x), grad)
            if line_search:
                slope = jnp.vdot(grad, direction)

                def fails(state):
                    alpha, new_value = state
                    return (new_value > value - 1e-4 * alpha * slope + _precision_slack(value)) & (
                        alpha > 1e-10
                    )

                def shrink(state):
                    alpha = 0.5 * state[0]
                    return alpha, flat_fun(x - alpha * direction)

                one = jnp.ones((), x.dtype)
                alpha, _ = jax.lax.while_loop(fails, shrink, (one, flat_fun(x - direction)))
            else:
                alpha = 1.0
            x_new = x - alpha * direction
            new_value, new_grad = value_and_grad(x_new)
            return (x_new, new_value, new_grad), jnp.linalg.norm(new_grad)

        value, grad = value_and_grad(flat0)
        carry, error, iterations = _iterate(update, (flat0, value, grad), tol, maxiter, unroll)
        return unravel(carry[0]), (iterations, error)

    run = _finish(run, make_newton_fixed_point(fun), True, implicit_diff, solve)
    return _result(run(init_params, *args), tol)


# --------------------------------------------------------------------------- quadratic programs


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
        if solve is None:
            solve = _default_solve("solve_lu")
        run = _finish(run, _qp_kkt, False, True, solve)
    init = KKTSolution(jnp.zeros(n, dtype), jnp.zeros(p, dtype), jnp.zeros(m, dtype))
    return _result(run(init, (Q, c), (A, b), (G, h)), tolerance(Q, c, A, b, G, h))


# --------------------------------------------------------------------------- conic programs


class ConicSolution(NamedTuple):
    """Primal-dual solution of a conic program (see :func:`solve_conic`)."""

    x: jax.Array
    y: jax.Array
    s: jax.Array
    z: jax.Array  # root of the residual map (x, y - s, 1)


def solve_conic(
    c: jax.Array,
    A: jax.Array,
    b: jax.Array,
    cones: Any,
    *,
    tol: float = 1e-9,
    maxiter: int = 20000,
    refine_steps: int = 5,
    implicit_diff: bool = True,
    solve: Callable | None = None,
) -> SolverResult:
    r"""Solves the conic program ``min c^T x s.t. A x + s = b, s in K`` (and its dual).

    SCS's algorithm (O'Donoghue, Chu, Parikh & Boyd 2016), dense: ADMM on the homogeneous
    self-dual embedding ``Q u = v, u in R^n x K* x R_+, v in {0}^n x K x R_+``, followed by
    ``refine_steps`` Newton steps on the residual map (solution refinement, Busseti, Moursi &
    Boyd 2019). Small dense problems only. ``error`` is the largest of the relative primal
    residual ``||A x + s - b||``, dual residual ``||A^T y + c||`` and duality gap
    ``|c^T x + b^T y|``; an infeasible or unbounded problem does not converge.

    Implicit differentiation: :func:`sensitivity.make_conic_residual_map` (root ``z``), with a
    minimum-norm least-squares solve (the residual map is homogeneous, so its Jacobian has
    ``z`` in its null space; the derivatives of ``x, y, s`` are unique). Needs a unique,
    strictly complementary solution.

    Args:
      c: ``(n,)`` cost.
      A: ``(m, n)`` constraint matrix.
      b: ``(m,)``.
      cones: :class:`sensitivity.ConeSpec` or SCS-style dict, of total dimension ``m``.
      tol: tolerance on ``error``.
      maxiter: ADMM iteration limit.
      refine_steps: Newton refinement steps on the residual map.
      implicit_diff: decorate with implicit differentiation.
      solve: linear solver for implicit differentiation (default ``solve_lstsq``).

    Returns:
      :class:`SolverResult` whose ``params`` is a :class:`ConicSolution` ``(x, y, s, z)``.
    """
    spec = _as_cone_spec(cones)
    n, m = c.shape[0], b.shape[0]
    if A.shape != (m, n) or spec.dim != m:
        raise ValueError(
            f"solve_conic: A has shape {A.shape}, c {c.shape}, b {b.shape} and the cones have "
            f"dimension {spec.dim}; need A of shape (m, n) = ({m}, {n}) and cone dimension m"
        )
    residual_map = make_conic_residual_map(spec)
    project_dual = make_cone_projection(spec, dual=True)

    def errors(z, c, A, b):
        x, y, s = conic_recover(z, n, spec)
        primal = jnp.linalg.norm(A @ x + s - b) / (1.0 + jnp.linalg.norm(b))
        dual = jnp.linalg.norm(A.T @ y + c) / (1.0 + jnp.linalg.norm(c))
        gap = jnp.abs(c @ x + b @ y) / (1.0 + jnp.abs(c @ x) + jnp.abs(b @ y))
        return jnp.max(jnp.stack([primal, dual, gap]))

    def run(init, c, A, b):
        del init
        size = n + m + 1
        Qmat = jnp.block(
            [
                [jnp.zeros((n, n)), A.T, c[:, None]],
                [-A, jnp.zeros((m, m)), b[:, None]],
                [-c[None, :], -b[None, :], jnp.zeros((1, 1))],
            ]
        )
        lu = jax.scipy.linalg.lu_factor(jnp.eye(size) + Qmat)
        u0 = jnp.zeros(size).at[-1].set(1.0)
        v0 = jnp.zeros(size).at[-1].set(1.0)

        def update(carry):
            u, v, it = carry
            u_tilde = jax.scipy.linalg.lu_solve(lu, u + v)
            u_new = _project_embedding(u_tilde - v, n, project_dual)
            v_new = v - u_tilde + u_new
            tau = u_new[-1]
            z = (u_new - v_new) / jnp.where(tau > 0, tau, 1.0)
            # Checking the residuals costs as much as an iteration: do it every 10th. While
            # tau = 0 the iterate is no solution (it may become a certificate of infeasibility).
            error = jnp.where((it % 10 == 9) & (tau > 0), errors(z, c, A, b), jnp.inf)
            return (u_new, v_new, it + 1), error

        (u, v, _), _, iterations = _iterate(update, (u0, v0, jnp.asarray(0)), tol, maxiter, False)
        z = (u - v) / u[-1]

        def refine(_, z):
            jac = jax.jacfwd(residual_map)(z, c, A, b)
            step = jnp.linalg.lstsq(jac, residual_map(z, c, A, b))[0]
            z_new = z - step
            z_new = z_new / z_new[-1]
            better = jnp.linalg.norm(residual_map(z_new, c, A, b)) < jnp.linalg.norm(
                residual_map(z, c, A, b)
            )
            return jnp.where(better, z_new, z)

        z = jax.lax.fori_loop(0, refine_steps, refine, z)
        error = errors(z, c, A, b)
        return z, (iterations, jnp.where(jnp.isfinite(error), error, jnp.inf))

    if implicit_diff:
        if solve is None:
            solve = _default_solve("solve_lstsq")
        run = _finish(run, residual_map, False, True, solve)
    z, (iterations, error) = run(jnp.zeros(n + m + 1, c.dtype), c, A, b)
    x, y, s = conic_recover(z, n, spec)
    return SolverResult(ConicSolution(x, y, s, z), iterations, error, error <= tol)


# --------------------------------------------------------------------------- SciPy


def scipy_minimize(
    fun: Callable,
    init_params: Any,
    *args: Any,
    method: str = "BFGS",
    tol: float = 1e-10,
    maxiter: int = 10000,
    options: dict | None = None,
    implicit_diff: bool = True,
    solve: Callable | None = None,
) -> SolverResult:
    r"""Minimizes ``fun(x, *args)`` with ``scipy.optimize.minimize``, differentiable implicitly.

    The paper's "any solver" claim: SciPy runs on the host through ``jax.pure_callback``
    (so this works under ``jit`` and ``vmap``, sequentially), receiving ``fun``'s value and
    gradient from a jitted JAX function. No derivative ever flows through SciPy: with
    ``implicit_diff`` the call is decorated with the stationarity condition
    ``grad f(x*, args) = 0``, whose Hessian system is solved by ``solve`` (default CG).

    Args:
      fun: scalar objective ``fun(x, *args)``; ``x`` may be a pytree (raveled for SciPy).
      init_params: starting point (gets no derivative).
      *args: arrays (differentiable).
      method: a gradient-based ``scipy.optimize.minimize`` method.
      tol: gradient tolerance (``gtol``) and the convergence test ``||grad f|| <= tol``.
      maxiter: iteration limit.
      options: extra SciPy options.
      implicit_diff: decorate with implicit differentiation.
      solve: linear solver for implicit differentiation.

    Returns:
      :class:`SolverResult`; ``error`` is ``||grad f(params)||``.
    """
    import scipy.optimize

    flat0, unravel = ravel_pytree(init_params)
    value_and_grad = jax.jit(jax.value_and_grad(lambda v, *a: fun(unravel(v), *a)))
    scipy_options = {"maxiter": maxiter, "gtol": tol, **(options or {})}

    def host_minimize(x0, *host_args):
        def objective(v):
            value, grad = value_and_grad(v, *host_args)
            return float(value), np.asarray(grad, dtype=np.float64)

        res = scipy.optimize.minimize(
            objective, np.asarray(x0, np.float64), jac=True, method=method, options=scipy_options
        )
        grad_norm = np.linalg.norm(objective(res.x)[1])
        return (
            np.asarray(res.x, dtype=x0.dtype),
            np.asarray(getattr(res, "nit", 0), dtype=np.int32),
            np.asarray(grad_norm, dtype=x0.dtype),
        )

    def run(init, *args):
        flat_init, _ = ravel_pytree(init)
        shapes = (
            jax.ShapeDtypeStruct(flat_init.shape, flat_init.dtype),
            jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct((), flat_init.dtype),
        )
        x, nit, grad_norm = jax.pure_callback(
            host_minimize, shapes, flat_init, *args, vmap_method="sequential"
        )
        return unravel(x), (nit, grad_norm)

    if implicit_diff and solve is None:
        solve = _default_solve("solve_cg")
    run = _finish(run, make_stationary_condition(fun), False, implicit_diff, solve, symmetric=True)
    return _result(run(init_params, *args), tol)
