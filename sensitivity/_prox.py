"""Proximal operators.

Every operator has the signature ``prox(x, hyperparams=None, scaling=1.0)`` (``None``
meaning the documented default strength, 1, as in jaxopt) and returns

    prox_{scaling * g}(x) = argmin_y  1/2 ||y - x||^2 + scaling * g(y, hyperparams),

so that the proximal gradient step with step size ``eta`` reads
``prox(x - eta * grad_f(x), hyperparams, eta)`` (see
:func:`sensitivity.make_proximal_gradient_fixed_point`). ``x`` may be an array or a pytree of
arrays; scalar hyperparameters apply to every leaf, a pytree of hyperparameters with ``x``'s
structure applies leaf by leaf (except group lasso, whose group is the whole pytree).

Derivatives at kinks. The operators are piecewise smooth; at the measure-zero set where two
pieces meet (``|x_i| = scaling * l1reg`` for the soft threshold, ``x_i = 0`` for the
non-negative variants, ``||x|| = scaling * l2reg`` for the group soft threshold) the JVP takes
the value of the piece that maps to zero (the coordinate is treated as *inactive*). This is
one element of the Clarke generalized Jacobian, it is finite (no NaN, also at ``x = 0``), and
it matches the support ``{i : |x_i| > threshold}`` used by the closed-form lasso Jacobian.

References: Parikh & Boyd, "Proximal Algorithms", Found. Trends Optim. 2014;
Blondel et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from .tree_util import tree_l2_norm

__all__ = [
    "prox_none",
    "prox_lasso",
    "prox_non_negative_lasso",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_ridge",
    "prox_non_negative_ridge",
    "make_prox_from_projection",
]


def _map_with_hyperparams(fn: Callable, x: Any, hyperparams: Any) -> Any:
    """Applies ``fn(leaf, hp)`` leaf by leaf; ``hyperparams`` is a scalar or a pytree like x."""
    if jax.tree.structure(hyperparams) == jax.tree.structure(x):
        return jax.tree.map(fn, x, hyperparams)
    return jax.tree.map(lambda leaf: fn(leaf, hyperparams), x)


def _soft_threshold(x, threshold):
    # where-based so that the derivative at |x| == threshold is the zero branch's.
    return jnp.where(jnp.abs(x) > threshold, x - jnp.sign(x) * threshold, 0.0)


def prox_none(x: Any, hyperparams: Any = None, scaling: float = 1.0) -> Any:
    """Proximal operator of ``g = 0``: the identity.

    Args:
      x: input pytree.
      hyperparams: ignored.
      scaling: ignored.

    Returns:
      ``x``.
    """
    del hyperparams, scaling
    return x


def prox_lasso(x: Any, l1reg: Any = None, scaling: float = 1.0) -> Any:
    r"""Proximal operator of the l1 norm (soft thresholding).

    ``argmin_y 1/2 ||y - x||^2 + scaling * l1reg * ||y||_1``, i.e.
    ``sign(x) * max(|x| - scaling * l1reg, 0)``.

    Args:
      x: input pytree.
      l1reg: non-negative regularization strength, a scalar or a pytree like ``x``
        (or arrays broadcastable against its leaves, for per-coordinate weights).
      scaling: step size multiplying the regularization.

    Returns:
      A pytree like ``x``. JVP convention at ``|x_i| = scaling * l1reg``: zero.
    """
    l1reg = 1.0 if l1reg is None else l1reg
    return _map_with_hyperparams(lambda u, lam: _soft_threshold(u, scaling * lam), x, l1reg)


def prox_non_negative_lasso(x: Any, l1reg: Any = None, scaling: float = 1.0) -> Any:
    r"""Proximal operator of ``l1reg * ||y||_1 + indicator(y >= 0)``.

    ``argmin_{y >= 0} 1/2 ||y - x||^2 + scaling * l1reg * sum(y)`` =
    ``max(x - scaling * l1reg, 0)``.

    Args:
      x: input pytree.
      l1reg: regularization strength (scalar or pytree like ``x``).
      scaling: step size multiplying the regularization.

    Returns:
      A pytree like ``x``. JVP convention at ``x_i = scaling * l1reg``: zero.
    """

    l1reg = 1.0 if l1reg is None else l1reg

    def fn(u, lam):
        shifted = u - scaling * lam
        return jnp.where(shifted > 0, shifted, 0.0)

    return _map_with_hyperparams(fn, x, l1reg)


def prox_elastic_net(
    x: Any, hyperparams: tuple[Any, Any] | None = None, scaling: float = 1.0
) -> Any:
    r"""Proximal operator of the elastic net penalty.

    With ``hyperparams = (l1reg, l2reg)`` and
    ``g(y) = l1reg * ||y||_1 + l2reg / 2 * ||y||_2^2``:
    ``argmin_y 1/2 ||y - x||^2 + scaling * g(y)`` =
    ``soft_threshold(x, scaling * l1reg) / (1 + scaling * l2reg)``.

    (jaxopt parametrizes the same penalty as ``l1reg * (||y||_1 + gamma/2 ||y||^2)``;
    here the two strengths are independent.)

    Args:
      x: input pytree.
      hyperparams: pair ``(l1reg, l2reg)`` of scalars or pytrees like ``x`` (``None``
        means ``(1, 1)``).
      scaling: step size multiplying the penalty.

    Returns:
      A pytree like ``x``. JVP convention at ``|x_i| = scaling * l1reg``: zero.
    """
    l1reg, l2reg = (1.0, 1.0) if hyperparams is None else hyperparams
    soft = _map_with_hyperparams(lambda u, lam: _soft_threshold(u, scaling * lam), x, l1reg)
    return _map_with_hyperparams(lambda u, gam: u / (1.0 + scaling * gam), soft, l2reg)


def prox_group_lasso(x: Any, l2reg: Any = 1.0, scaling: float = 1.0) -> Any:
    r"""Proximal operator of the (unsquared) l2 norm: block soft thresholding.

    ``argmin_y 1/2 ||y - x||^2 + scaling * l2reg * ||y||_2`` =
    ``max(1 - scaling * l2reg / ||x||, 0) * x``.

    The whole input (all leaves of the pytree together) is one group. For several groups,
    ``jax.vmap`` this operator over a leading group axis, or use it as the ``block_prox`` of
    :func:`sensitivity.block_coordinate_descent`.

    Args:
      x: input pytree (one group).
      l2reg: scalar regularization strength.
      scaling: step size multiplying the regularization.

    Returns:
      A pytree like ``x``. At ``||x|| <= scaling * l2reg`` (including ``x = 0``) the output is 0
      and so is the JVP; no NaN is produced.
    """
    l2reg = 1.0 if l2reg is None else l2reg
    sq_norm = tree_l2_norm(x, squared=True)
    active = sq_norm > (scaling * l2reg) ** 2
    # Double-where: the norm is never evaluated at 0 on the branch that is differentiated.
    safe_norm = jnp.sqrt(jnp.where(active, sq_norm, 1.0))
    factor = jnp.where(active, 1.0 - scaling * l2reg / safe_norm, 0.0)
    return jax.tree.map(lambda u: factor * u, x)


def prox_ridge(x: Any, l2reg: Any = None, scaling: float = 1.0) -> Any:
    r"""Proximal operator of the squared l2 norm.

    ``argmin_y 1/2 ||y - x||^2 + scaling * l2reg / 2 * ||y||^2`` = ``x / (1 + scaling * l2reg)``.

    Args:
      x: input pytree.
      l2reg: regularization strength (scalar or pytree like ``x``).
      scaling: step size multiplying the regularization.

    Returns:
      A pytree like ``x``.
    """
    l2reg = 1.0 if l2reg is None else l2reg
    return _map_with_hyperparams(lambda u, gam: u / (1.0 + scaling * gam), x, l2reg)


def prox_non_negative_ridge(x: Any, l2reg: Any = None, scaling: float = 1.0) -> Any:
    r"""Proximal operator of ``l2reg / 2 * ||y||^2 + indicator(y >= 0)``.

    ``argmin_{y >= 0} 1/2 ||y - x||^2 + scaling * l2reg / 2 * ||y||^2`` =
    ``max(x, 0) / (1 + scaling * l2reg)``.

    Args:
      x: input pytree.
      l2reg: regularization strength (scalar or pytree like ``x``).
      scaling: step size multiplying the regularization.

    Returns:
      A pytree like ``x``. JVP convention at ``x_i = 0``: zero.
    """
    l2reg = 1.0 if l2reg is None else l2reg
    return _map_with_hyperparams(
        lambda u, gam: jnp.where(u > 0, u, 0.0) / (1.0 + scaling * gam), x, l2reg
    )


def make_prox_from_projection(projection: Callable) -> Callable:
    """Turns a projection onto a convex set C into the prox of C's indicator function.

    ``prox_{scaling * indicator_C}(x) = projection(x, hyperparams)`` whatever the scaling;
    with ``hyperparams=None`` the projection is called as ``projection(x)``, so its own
    default applies (``make_prox_from_projection(projection_simplex)(x)`` works).

    Args:
      projection: ``projection(x, hyperparams) -> x_projected``.

    Returns:
      ``prox(x, hyperparams=None, scaling=1.0)``.
    """

    def prox(x, hyperparams=None, scaling=1.0):
        del scaling
        if hyperparams is None:
            return projection(x)
        return projection(x, hyperparams)

    prox.__name__ = f"prox_from_{getattr(projection, '__name__', 'projection')}"
    prox.__doc__ = f"Prox of the indicator of the set that ``{prox.__name__[10:]}`` projects onto."
    return prox
