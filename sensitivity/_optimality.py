"""The catalog of optimality conditions (Blondel et al. 2022, table 1).

Each builder returns a map to hand to :func:`sensitivity.custom_root` (a root ``F(x, *args)
= 0``) or :func:`sensitivity.custom_fixed_point` (a fixed point ``x = T(x, *args)``). The maps
take the same ``*args`` as the solver they decorate, so a user who picks the condition that
matches their solver gets derivatives without deriving anything:

=====================================  ==========================================  ==========
condition                              builder                                     decorator
=====================================  ==========================================  ==========
stationarity ``grad_1 f(x, θ) = 0``    :func:`make_stationary_condition`           root
gradient-descent fixed point           :func:`make_gradient_descent_fixed_point`   fixed point
KKT (equalities and inequalities)      :func:`make_kkt_optimality_fun`             root
proximal gradient fixed point          :func:`make_proximal_gradient_fixed_point`  fixed point
projected gradient fixed point         :func:`make_projected_gradient_fixed_point` fixed point
mirror descent fixed point             :func:`make_mirror_descent_fixed_point`     fixed point
Newton fixed point                     :func:`make_newton_fixed_point`             fixed point
block proximal gradient fixed point    :func:`make_block_proximal_gradient_fixed_point` fixed point
conic program residual map             :func:`sensitivity.make_conic_residual_map` root
=====================================  ==========================================  ==========

The fixed points of the gradient-type maps do not depend on the step size ``eta > 0``; it is a
parameter of the builders (jaxopt fixes it at 1) because it changes the conditioning of the
linear system ``(I - dT/dx) v = ...`` solved during differentiation.

Reference: M. Blondel, Q. Berthet, M. Cuturi, R. Frostig, S. Hoyer, F. Llinares-López,
F. Pedregosa, J.-P. Vert, "Efficient and Modular Implicit Differentiation", NeurIPS 2022.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .tree_util import tree_add_scalar_mul

__all__ = [
    "KKTSolution",
    "make_stationary_condition",
    "make_gradient_descent_fixed_point",
    "make_kkt_optimality_fun",
    "make_proximal_gradient_fixed_point",
    "make_projected_gradient_fixed_point",
    "make_mirror_descent_fixed_point",
    "make_newton_fixed_point",
    "make_block_proximal_gradient_fixed_point",
]


# --------------------------------------------------------------------------- stationarity


def make_stationary_condition(fun: Callable) -> Callable:
    r"""Stationarity of an unconstrained objective: ``F(x, *args) = grad_x fun(x, *args)``.

    Use with :func:`sensitivity.custom_root` for a solver of ``min_x fun(x, *args)``. The
    linear system of implicit differentiation is the Hessian ``grad_1^2 f``, symmetric: pass
    ``symmetric=True`` and a symmetric solver (``solve_cg``, or ``solve_minres`` when it is
    singular or indefinite).

    Args:
      fun: scalar objective ``fun(x, *args)``.

    Returns:
      ``F(x, *args)`` returning a pytree like ``x``.
    """
    return jax.grad(fun)


def make_gradient_descent_fixed_point(fun: Callable, step_size: float = 1.0) -> Callable:
    r"""Gradient-descent fixed point ``T(x, *args) = x - eta * grad_x fun(x, *args)``.

    Use with :func:`sensitivity.custom_fixed_point`; ``T(x) = x`` iff ``grad f(x) = 0``.

    Args:
      fun: scalar objective ``fun(x, *args)``.
      step_size: ``eta > 0``.

    Returns:
      ``T(x, *args)``.
    """
    grad_fun = jax.grad(fun)

    def fixed_point_fun(x, *args, **kwargs):
        return tree_add_scalar_mul(x, -step_size, grad_fun(x, *args, **kwargs))

    return fixed_point_fun


# --------------------------------------------------------------------------- KKT


class KKTSolution(NamedTuple):
    """Primal and dual variables of a constrained problem (a pytree)."""

    primal: Any
    dual_eq: Any = None
    dual_ineq: Any = None


def make_kkt_optimality_fun(
    obj_fun: Callable,
    eq_fun: Callable | None = None,
    ineq_fun: Callable | None = None,
) -> Callable:
    r"""KKT conditions of ``min_z f(z, θ_f) s.t. H(z, θ_H) = 0, G(z, θ_G) <= 0``.

    Returns ``F(params, params_obj, params_eq, params_ineq)`` with
    ``params = KKTSolution(primal z, dual_eq nu, dual_ineq lam)`` (jaxopt's convention):

        F = ( grad_z f(z) + dH(z)^T nu + dG(z)^T lam,     # stationarity of the Lagrangian
              H(z),                                       # primal feasibility
              lam * G(z) )                                # complementary slackness

    Dual feasibility ``lam >= 0`` is not part of the root system (it holds at the solution a
    solver returns). The Jacobian in ``params`` is invertible at a solution with linearly
    independent active constraints, strict complementarity and a positive definite reduced
    Hessian; it is not symmetric: use ``solve_gmres`` or a dense ``solve_lu``.

    Args:
      obj_fun: ``f(primal, params_obj)``, scalar.
      eq_fun: ``H(primal, params_eq)`` returning an array (or pytree), or ``None``.
      ineq_fun: ``G(primal, params_ineq)`` returning an array (or pytree), or ``None``.

    Returns:
      ``F(params, params_obj, params_eq=None, params_ineq=None)`` returning a
      :class:`KKTSolution` of residuals (``None`` entries for absent constraints).
    """

    def optimality_fun(params, params_obj, params_eq=None, params_ineq=None):
        primal, dual_eq, dual_ineq = params

        def lagrangian(z):
            value = obj_fun(z, params_obj)
            if eq_fun is not None:
                h = eq_fun(z, params_eq)
                value = value + sum(
                    jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(dual_eq), jax.tree.leaves(h))
                )
            if ineq_fun is not None:
                g = ineq_fun(z, params_ineq)
                value = value + sum(
                    jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(dual_ineq), jax.tree.leaves(g))
                )
            return value

        stationarity = jax.grad(lagrangian)(primal)
        primal_feasibility = None if eq_fun is None else eq_fun(primal, params_eq)
        complementarity = None
        if ineq_fun is not None:
            complementarity = jax.tree.map(jnp.multiply, dual_ineq, ineq_fun(primal, params_ineq))
        return KKTSolution(stationarity, primal_feasibility, complementarity)

    return optimality_fun


# --------------------------------------------------------------------------- gradient maps


def make_proximal_gradient_fixed_point(
    fun: Callable, prox: Callable, step_size: float = 1.0
) -> Callable:
    r"""Proximal gradient fixed point of ``min_x f(x, *args) + g(x, hyperparams_prox)``.

    ``T(x, hyperparams_prox, *args) = prox(x - eta * grad_x f(x, *args), hyperparams_prox, eta)``.

    Args:
      fun: the smooth part ``f(x, *args)``, scalar.
      prox: ``prox(x, hyperparams, scaling)`` of ``g`` (see :mod:`sensitivity._prox`).
      step_size: ``eta > 0``.

    Returns:
      ``T(x, hyperparams_prox, *args)``, for :func:`sensitivity.custom_fixed_point`.
    """
    grad_fun = jax.grad(fun)

    def fixed_point_fun(x, hyperparams_prox, *args, **kwargs):
        y = tree_add_scalar_mul(x, -step_size, grad_fun(x, *args, **kwargs))
        return prox(y, hyperparams_prox, step_size)

    return fixed_point_fun


def make_projected_gradient_fixed_point(
    fun: Callable, projection: Callable, step_size: float = 1.0
) -> Callable:
    r"""Projected gradient fixed point of ``min_{x in C(hyperparams_proj)} f(x, *args)``.

    ``T(x, hyperparams_proj, *args) = proj_C(x - eta * grad_x f(x, *args), hyperparams_proj)``.

    Args:
      fun: the objective ``f(x, *args)``, scalar.
      projection: ``projection(x, hyperparams)`` onto C (see :mod:`sensitivity._projection`).
      step_size: ``eta > 0``.

    Returns:
      ``T(x, hyperparams_proj, *args)``, for :func:`sensitivity.custom_fixed_point`.
    """
    grad_fun = jax.grad(fun)

    def fixed_point_fun(x, hyperparams_proj, *args, **kwargs):
        y = tree_add_scalar_mul(x, -step_size, grad_fun(x, *args, **kwargs))
        return projection(y, hyperparams_proj)

    return fixed_point_fun


def make_mirror_descent_fixed_point(
    fun: Callable,
    projection_bregman: Callable,
    mapping_fun: Callable,
    step_size: float = 1.0,
) -> Callable:
    r"""Mirror descent fixed point of ``min_{x in C} f(x, *args)`` in the geometry of ``phi``.

    ``T(x, hyperparams_proj, *args) = proj^phi_C(grad phi(x) - eta * grad_x f(x, *args),
    hyperparams_proj)``, where ``proj^phi_C(y) = argmin_{x in C} D_phi(x, grad phi^*(y))`` is
    the Bregman projection of the mirror point ``y``. For the KL geometry on the simplex,
    ``phi(x) = sum x log x``: ``mapping_fun = jnp.log`` (``grad phi`` up to a constant, which
    the normalization absorbs) and ``projection_bregman =``
    :func:`sensitivity.kl_projection_simplex` (a softmax). The KL geometry only reaches
    interior points: the solution must have ``x > 0`` (``log x`` is infinite on the boundary;
    a solution with an entry that underflows to 0 gives NaN derivatives). For a solution on
    the boundary use :func:`make_projected_gradient_fixed_point` with
    :func:`sensitivity.projection_simplex`.

    Args:
      fun: the objective ``f(x, *args)``, scalar.
      projection_bregman: ``projection_bregman(y, hyperparams_proj)`` from mirror space to C.
      mapping_fun: the mirror map ``grad phi(x)``.
      step_size: ``eta > 0``.

    Returns:
      ``T(x, hyperparams_proj, *args)``, for :func:`sensitivity.custom_fixed_point`.
    """
    grad_fun = jax.grad(fun)

    def fixed_point_fun(x, hyperparams_proj, *args, **kwargs):
        y = tree_add_scalar_mul(mapping_fun(x), -step_size, grad_fun(x, *args, **kwargs))
        return projection_bregman(y, hyperparams_proj)

    return fixed_point_fun


def _hessian_solve(fun: Callable, x: Any, g: Any, args, kwargs) -> Any:
    """``[grad^2 f(x)]^{-1} g`` with a dense Hessian of the flattened variable."""
    flat_x, unravel = ravel_pytree(x)
    flat_g, _ = ravel_pytree(g)

    def flat_fun(v):
        return fun(unravel(v), *args, **kwargs)

    hessian = jax.hessian(flat_fun)(flat_x)
    return unravel(jnp.linalg.solve(hessian, flat_g))


def make_newton_fixed_point(fun: Callable, hessian_solve: Callable | None = None) -> Callable:
    r"""Newton fixed point ``T(x, *args) = x - [grad_1^2 f(x, *args)]^{-1} grad_1 f(x, *args)``.

    ``T(x) = x`` iff ``grad f(x) = 0`` (Hessian invertible). At the solution
    ``dT/dx = 0``, so the linear system of implicit differentiation is the identity: the work
    moves into ``T``, whose derivative in ``args`` is ``-H^{-1} d(grad f)/d args``.

    Args:
      fun: scalar objective ``fun(x, *args)``.
      hessian_solve: ``hessian_solve(x, g, *args) -> H(x)^{-1} g`` (differentiable in ``x``,
        ``g`` and ``args``). Default: dense ``jax.hessian`` of the flattened variable and
        ``jnp.linalg.solve`` (small problems). For a matrix-free solve, wrap a linear solver in
        ``jax.lax.custom_linear_solve`` with Hessian-vector products.

    Returns:
      ``T(x, *args)``, for :func:`sensitivity.custom_fixed_point`.
    """
    grad_fun = jax.grad(fun)

    def fixed_point_fun(x, *args, **kwargs):
        g = grad_fun(x, *args, **kwargs)
        if hessian_solve is None:
            step = _hessian_solve(fun, x, g, args, kwargs)
        else:
            step = hessian_solve(x, g, *args, **kwargs)
        return tree_add_scalar_mul(x, -1.0, step)

    return fixed_point_fun


def make_block_proximal_gradient_fixed_point(
    fun: Callable, block_prox: Callable, step_size: Any = 1.0
) -> Callable:
    r"""Block proximal gradient fixed point of ``min_x f(x, *args) + sum_j g(x_j, hyperparams)``.

    Block ``j`` of ``T(x, hyperparams_prox, *args)`` is
    ``block_prox(x_j - eta_j [grad_x f(x, *args)]_j, hyperparams_prox, eta_j)``.

    Blocks are the rows of an array ``x`` (``x[j]``; ``block_prox`` is vmapped over the leading
    axis), or the elements of a tuple/list ``x`` (blocks of different shapes). This is the
    condition a block coordinate descent solver satisfies at convergence (the blocks may use
    different step sizes, e.g. ``1 / L_j``).

    Args:
      fun: the smooth part ``f(x, *args)``, scalar.
      block_prox: ``block_prox(x_j, hyperparams, scaling)``, the prox of ``g`` on one block.
      step_size: ``eta``, a scalar or one per block (array of shape ``(n_blocks,)``).

    Returns:
      ``T(x, hyperparams_prox, *args)``, for :func:`sensitivity.custom_fixed_point`.
    """
    grad_fun = jax.grad(fun)

    def fixed_point_fun(x, hyperparams_prox, *args, **kwargs):
        g = grad_fun(x, *args, **kwargs)
        if isinstance(x, (tuple, list)):
            steps = jnp.broadcast_to(jnp.asarray(step_size), (len(x),))
            return type(x)(
                block_prox(tree_add_scalar_mul(x[j], -steps[j], g[j]), hyperparams_prox, steps[j])
                for j in range(len(x))
            )
        steps = jnp.broadcast_to(jnp.asarray(step_size, dtype=x.dtype), (x.shape[0],))
        y = x - steps.reshape((-1,) + (1,) * (x.ndim - 1)) * g
        return jax.vmap(block_prox, in_axes=(0, None, 0))(y, hyperparams_prox, steps)

    return fixed_point_fun
