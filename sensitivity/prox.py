"""jaxopt's ``jaxopt.prox`` module path: ``prox(x, hyperparams=None, scaling=1.0)``.

The operators of :mod:`sensitivity._prox` under jaxopt's names, with one change of
parametrization so jaxopt code keeps its meaning: here ``prox_elastic_net`` takes jaxopt's
``hyperparams = (lam, gamma)`` for the penalty ``lam * (||y||_1 + gamma / 2 ||y||^2)``,
where the flat ``sensitivity.prox_elastic_net`` takes independent strengths
``(l1reg, l2reg)`` (README, "Migrating from jaxopt").
"""

from __future__ import annotations

from typing import Any

import jax

from sensitivity import _prox
from sensitivity._prox import (
    make_prox_from_projection,
    prox_group_lasso,
    prox_lasso,
    prox_non_negative_lasso,
    prox_non_negative_ridge,
    prox_none,
    prox_ridge,
)

__all__ = [
    "make_prox_from_projection",
    "prox_none",
    "prox_lasso",
    "prox_non_negative_lasso",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_ridge",
    "prox_non_negative_ridge",
]


def prox_elastic_net(x: Any, hyperparams: Any = None, scaling: float = 1.0) -> Any:
    r"""Proximal operator of ``lam * (||y||_1 + gamma / 2 ||y||_2^2)`` (jaxopt's form).

    ``soft_threshold(x, scaling * lam) / (1 + scaling * lam * gamma)``.

    Args:
      x: input pytree.
      hyperparams: ``(lam, gamma)``, scalars or pytrees like ``x`` (``None`` means
        ``(1, 1)``).
      scaling: step size multiplying the penalty.

    Returns:
      A pytree like ``x``.
    """
    lam, gamma = (1.0, 1.0) if hyperparams is None else hyperparams
    l2reg = jax.tree_util.tree_map(lambda u, v: u * v, lam, gamma)
    return _prox.prox_elastic_net(x, (lam, l2reg), scaling)
