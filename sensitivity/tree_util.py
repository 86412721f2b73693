"""Arithmetic on pytrees, under jaxopt's ``jaxopt.tree_util`` names.

Binary operations take two pytrees of the same structure (leaf by leaf); inner products
and norms run over every leaf together. Complex leaves are supported: ``tree_vdot``
conjugates its first argument (``jnp.vdot``), norms use ``|z|``.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "broadcast_pytrees",
    "tree_map",
    "tree_reduce",
    "tree_add",
    "tree_sub",
    "tree_mul",
    "tree_scalar_mul",
    "tree_add_scalar_mul",
    "tree_dot",
    "tree_vdot",
    "tree_vdot_real",
    "tree_div",
    "tree_sum",
    "tree_l2_norm",
    "tree_where",
    "tree_zeros_like",
    "tree_ones_like",
    "tree_negative",
    "tree_inf_norm",
    "tree_conj",
    "tree_real",
    "tree_imag",
]

tree_map = jax.tree_util.tree_map
tree_reduce = jax.tree_util.tree_reduce


def broadcast_pytrees(*trees: Any) -> tuple:
    """Give every tree the structure of the non-leaf ones: a tree that is a single leaf is
    repeated at every leaf position. Raises ``ValueError`` when two non-leaf trees have
    different structures."""
    structures = [jax.tree_util.tree_structure(t) for t in trees]
    target = None
    for struct in structures:
        if struct.num_nodes == 1 and struct.num_leaves == 1:
            continue  # a leaf
        if target is None:
            target = struct
        elif struct != target:
            raise ValueError(f"broadcast_pytrees: the structures {target} and {struct} differ")
    if target is None:
        return tuple(trees)
    return tuple(
        jax.tree_util.tree_unflatten(target, [t] * target.num_leaves)
        if s.num_nodes == 1 and s.num_leaves == 1 else t
        for t, s in zip(trees, structures)
    )


def tree_add(a: Any, b: Any) -> Any:
    """``a + b`` leaf by leaf."""
    return jax.tree_util.tree_map(operator.add, a, b)


def tree_sub(a: Any, b: Any) -> Any:
    """``a - b`` leaf by leaf."""
    return jax.tree_util.tree_map(operator.sub, a, b)


def tree_mul(a: Any, b: Any) -> Any:
    """``a * b`` leaf by leaf."""
    return jax.tree_util.tree_map(operator.mul, a, b)


def tree_div(a: Any, b: Any) -> Any:
    """``a / b`` leaf by leaf."""
    return jax.tree_util.tree_map(operator.truediv, a, b)


def tree_scalar_mul(scalar: Any, tree: Any) -> Any:
    """``scalar * tree``."""
    return jax.tree_util.tree_map(lambda leaf: scalar * leaf, tree)


def tree_add_scalar_mul(a: Any, scalar: Any, b: Any) -> Any:
    """``a + scalar * b``."""
    return jax.tree_util.tree_map(lambda u, v: u + scalar * v, a, b)


def _sum_leaves(values) -> Any:
    return functools.reduce(operator.add, values, 0.0)


def tree_dot(a: Any, b: Any) -> Any:
    """``sum(a * b)`` over every leaf, without conjugation."""
    return _sum_leaves(jnp.sum(u * v) for u, v in
                       zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def tree_vdot(a: Any, b: Any) -> Any:
    """``<a, b> = sum(conj(a) * b)`` over every leaf."""
    return _sum_leaves(jnp.vdot(u, v) for u, v in
                       zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def tree_vdot_real(a: Any, b: Any) -> Any:
    """``Re <a, b>``."""
    return jnp.real(tree_vdot(a, b))


def tree_sum(tree: Any) -> Any:
    """Sum of every entry of every leaf."""
    return _sum_leaves(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(tree))


def tree_l2_norm(tree: Any, squared: bool = False) -> Any:
    """``sqrt(sum |x|^2)`` over every leaf (the squared norm with ``squared=True``)."""
    sq = _sum_leaves(jnp.sum(jnp.real(leaf * jnp.conj(leaf)))
                     for leaf in jax.tree_util.tree_leaves(tree))
    return sq if squared else jnp.sqrt(sq)


def tree_inf_norm(tree: Any) -> Any:
    """``max |x|`` over every entry of every non-empty leaf."""
    return functools.reduce(
        jnp.maximum,
        [jnp.max(jnp.abs(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
         if jnp.size(leaf) > 0],
        0.0,
    )


def tree_where(cond: Any, a: Any, b: Any) -> Any:
    """``jnp.where(cond, a, b)`` leaf by leaf; a single-leaf ``cond``, ``a`` or ``b`` is
    broadcast to the others' structure."""
    cond, a, b = broadcast_pytrees(cond, a, b)
    return jax.tree_util.tree_map(jnp.where, cond, a, b)


def tree_zeros_like(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def tree_ones_like(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.ones_like, tree)


def tree_negative(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.negative, tree)


def tree_conj(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.conj, tree)


def tree_real(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.real, tree)


def tree_imag(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.imag, tree)


