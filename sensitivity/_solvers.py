"""First-order solvers (and Newton) for the catalog of optimality conditions, with implicit
differentiation; the QP and conic solvers are in :mod:`sensitivity._qp` and
:mod:`sensitivity._conic`, the loop they all share in :mod:`sensitivity._solver_loop`.

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

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._krylov import solve_cg
from ._optimality import (
    make_block_proximal_gradient_fixed_point,
    make_mirror_descent_fixed_point,
    make_newton_fixed_point,
    make_projected_gradient_fixed_point,
    make_proximal_gradient_fixed_point,
    make_stationary_condition,
)
from ._prox import make_prox_from_projection
from ._solver_loop import SolverResult, _check_unroll, _decorate, _iterate, _result
from .tree_util import tree_add_scalar_mul, tree_l2_norm, tree_sub, tree_vdot

__all__ = [
    "gradient_descent",
    "proximal_gradient",
    "projected_gradient",
    "mirror_descent",
    "block_coordinate_descent",
    "newton",
    "scipy_minimize",
]

#: The stopping tolerance and iteration cap of the first-order solvers (gradient descent,
#: proximal / projected gradient, mirror descent, block coordinate descent): jaxopt's.
FIRST_ORDER_TOL = 1e-8
FIRST_ORDER_MAXITER = 1000


def _precision_slack(value):
    """Rounding error of an objective value; sufficient-decrease tests ignore less than this."""
    return 16 * jnp.finfo(value.dtype).eps * (1.0 + jnp.abs(value))


def _initial_step(grad_fun: Callable, x, grad):
    """``1 / L`` from a secant estimate of the gradient's Lipschitz constant along ``-grad``.

    The secant underestimates ``L``, so the step errs on the long side and backtracking
    shrinks it. Returns 1 when the gradient vanishes or the estimate is degenerate.
    """
    norm = tree_l2_norm(grad)
    t = 1e-4 / jnp.where(norm > 0, norm, 1.0)
    x_probe = tree_add_scalar_mul(x, -t, grad)
    lipschitz = tree_l2_norm(tree_sub(grad_fun(x_probe), grad)) / (
        t * jnp.where(norm > 0, norm, 1.0)
    )
    ok = (norm > 0) & (lipschitz > 0) & jnp.isfinite(lipschitz)
    return jnp.where(ok, 1.0 / jnp.where(ok, lipschitz, 1.0), 1.0).astype(norm.dtype)


# --------------------------------------------------------------------------- gradient descent


def gradient_descent(
    fun: Callable,
    init_params: Any,
    *args: Any,
    step_size: float | None = None,
    tol: float = FIRST_ORDER_TOL,
    maxiter: int = FIRST_ORDER_MAXITER,
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
            sq = tree_vdot(grad, grad)
            if step_size is None:
                # Armijo, the step never grows (it only shrinks until it is <= ~1/L).
                slack = _precision_slack(value)

                def armijo_fails(state):
                    eta, new_value, _ = state
                    return (new_value > value - 0.5 * eta * sq + slack) & (eta > 1e-20)

                def shrink(state):
                    eta = 0.5 * state[0]
                    x_new = tree_add_scalar_mul(x, -eta, grad)
                    return eta, fun(x_new, *args), x_new

                x_try = tree_add_scalar_mul(x, -eta, grad)
                eta, _, x_new = jax.lax.while_loop(
                    armijo_fails, shrink, (eta, fun(x_try, *args), x_try)
                )
            else:
                x_new = tree_add_scalar_mul(x, -eta, grad)
            new_value, new_grad = value_and_grad(x_new, *args)
            return (x_new, new_value, new_grad, eta), tree_l2_norm(new_grad)

        carry, error, iterations = _iterate(update, (init, value, grad, eta0), tol, maxiter, unroll)
        return carry[0], (iterations, error)

    if solve is None and implicit_diff:
        solve = solve_cg
    run = _decorate(run, make_stationary_condition(fun), False, implicit_diff, solve,
                    symmetric=True)
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
                return prox(tree_add_scalar_mul(y, -eta, grad_y), hyperparams_prox, eta)

            if step_size is None:
                # Beck & Teboulle backtracking (the step never grows): the quadratic model at
                # y must majorize f at the candidate, up to rounding.
                slack = _precision_slack(value_y)

                def model_fails(state):
                    eta, x_new = state
                    diff = tree_sub(x_new, y)
                    model = value_y + tree_vdot(grad_y, diff) + tree_vdot(diff, diff) / (2 * eta)
                    return (fun(x_new, *args) > model + slack) & (eta > 1e-20)

                def shrink(state):
                    eta = 0.5 * state[0]
                    return eta, candidate(eta)

                eta, x_new = jax.lax.while_loop(model_fails, shrink, (eta, candidate(eta)))
            else:
                x_new = candidate(eta)
            # Gradient mapping norm ||y - x_new|| / eta: zero iff y is a fixed point.
            error = tree_l2_norm(tree_sub(x_new, y)) / eta
            if acceleration:
                # FISTA momentum with the adaptive restart of O'Donoghue & Candes (2015): reset
                # when the step goes against the momentum (gives linear rates when f is
                # strongly convex).
                restart = tree_vdot(tree_sub(y, x_new), tree_sub(x_new, x)) > 0
                t_new = jnp.where(restart, 1.0, 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t**2)))
                momentum = jnp.where(restart, 0.0, (t - 1.0) / t_new)
                y_new = tree_add_scalar_mul(x_new, momentum, tree_sub(x_new, x))
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
    tol: float = FIRST_ORDER_TOL,
    maxiter: int = FIRST_ORDER_MAXITER,
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
    run = _decorate(run, optimality, True, implicit_diff, solve)
    return _result(run(init_params, hyperparams_prox, *args), tol)


def projected_gradient(
    fun: Callable,
    projection: Callable,
    init_params: Any,
    hyperparams_proj: Any,
    *args: Any,
    step_size: float | None = None,
    acceleration: bool = True,
    tol: float = FIRST_ORDER_TOL,
    maxiter: int = FIRST_ORDER_MAXITER,
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
    run = _decorate(run, optimality, True, implicit_diff, solve)
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
    tol: float = FIRST_ORDER_TOL,
    maxiter: int = FIRST_ORDER_MAXITER,
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
            return x_new, tree_l2_norm(tree_sub(x_new, x)) / step_size

        x, error, iterations = _iterate(update, init, tol, maxiter, unroll)
        return x, (iterations, error)

    run = _decorate(run, fixed_point_fun, True, implicit_diff, solve)
    return _result(run(init_params, hyperparams_proj, *args), tol)


# --------------------------------------------------------------------------- block coordinate


def block_coordinate_descent(
    fun: Callable,
    block_prox: Callable,
    init_params: jax.Array,
    hyperparams_prox: Any,
    *args: Any,
    step_size: Any,
    tol: float = FIRST_ORDER_TOL,
    maxiter: int = FIRST_ORDER_MAXITER,
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
            return x_new, tree_l2_norm(x_new - x) / jnp.max(steps)

        x, error, iterations = _iterate(update, init, tol, maxiter, unroll)
        return x, (iterations, error)

    optimality = make_block_proximal_gradient_fixed_point(fun, block_prox, steps)
    run = _decorate(run, optimality, True, implicit_diff, solve)
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

    run = _decorate(run, make_newton_fixed_point(fun), True, implicit_diff, solve)
    return _result(run(init_params, *args), tol)


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
        solve = solve_cg
    run = _decorate(run, make_stationary_condition(fun), False, implicit_diff, solve,
                    symmetric=True)
    return _result(run(init_params, *args), tol)
