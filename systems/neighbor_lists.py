"""jax-md neighbor lists for the relaxation, shared by the packings of a process.

A jax-md ``NeighborList`` keeps as static pytree data its update function, its cell-list
functions and its capacities, so two lists share a compiled function only if these are
equal. Here one :func:`neighbor_list_fn` serves every packing with the same model static
key, cutoff and skin (:func:`neighbor_lists`, an LRU of :data:`LISTS_KEPT`), the last list
allocated for a number of particles is the template of the next packing, and every rebuilt
list has its pairs in (i, j) order (:func:`sort_pairs`), so a packing relaxed after others
gives bit for bit what it gives alone. Pure JAX pieces (:func:`update_sorted`,
:func:`rebuild`) run inside the compiled relaxation loop of :mod:`systems.relax`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ._jaxmd import module, nearest_image

if TYPE_CHECKING:
    from .potentials import PairModel

__all__ = ["LISTS_KEPT", "NeighborLists", "clear", "neighbor_list_fn", "neighbor_lists",
           "rebuild", "sort_pairs", "update_sorted"]

LISTS_KEPT = 16  # neighbor-list templates (one per model, cutoff and skin)


def sort_pairs(neighbors):
    """The list with its pairs in (i, j) order, padding last.

    A jax-md rebuild orders the pairs by cell, and within a cell by a slot that depends on
    the cell-list capacity; sorted, the list (and so the force summation) is the same
    whatever capacities the list was built with, so a packing relaxed with another
    packing's list gives the bitwise result it gets alone.
    """
    # One sorted key per pair, padding (n, n) last: a single-operand sort is several times
    # faster than an argsort on XLA:CPU (0.13 vs 0.7 ms for 4752 pairs).
    n = neighbors.reference_position.shape[0]
    dtype = jnp.int32 if (n + 1) ** 2 < 2**31 else jnp.int64
    i = neighbors.idx[0].astype(dtype)
    j = neighbors.idx[1].astype(dtype)
    valid = (i < n) & (j < n)
    key = jnp.sort(jnp.where(valid, i * (n + 1) + j, n * (n + 1) + n))
    idx = jnp.stack([key // (n + 1), key % (n + 1)]).astype(neighbors.idx.dtype)
    return dataclasses.replace(neighbors, idx=idx)


#: :func:`update_sorted` calls jax-md's update once a particle moved this fraction of the
#: distance at which jax-md rebuilds (half the skin): a margin over round-off; jax-md's own
#: test then decides, so the margin changes no result.
_MARGIN = 0.9


def update_sorted(model: PairModel, neighbors, y, skin: float | None = None):
    """jax-md's update, sorted (:func:`sort_pairs`) where it rebuilt the list.

    Given the list's ``skin`` in an orthorhombic box, jax-md's update (its displacement
    test, a branch carrying the whole list) runs only once some particle has moved nearly
    half the skin; until then the list is returned as jax-md would return it.
    """
    if skin is None or not model.periodic or np.ndim(model.box) != 1:
        return _update_sorted(model, neighbors, y)
    # round-off here moves only the margin, not jax-md's decision
    d = nearest_image(y - neighbors.reference_position, jnp.asarray(model.box, jnp.float64))
    moved = jnp.max(jnp.sum(d * d, axis=-1)) > (_MARGIN * 0.5 * skin) ** 2
    return jax.lax.cond(moved, functools.partial(_update_sorted, model, y=y),
                        lambda nbrs: nbrs, neighbors)


def _update_sorted(model: PairModel, neighbors, y):
    new = neighbors.update(model.list_positions(y))
    rebuilt = jnp.any(new.reference_position != neighbors.reference_position)
    return jax.lax.cond(rebuilt, sort_pairs, lambda nbrs: nbrs, new)


def rebuild(model: PairModel, neighbors, y, half_box):
    """``neighbors`` rebuilt at ``y`` with its capacities (a forced jax-md update).

    jax-md rebuilds a list only where a particle moved more than skin/2 from the list's
    reference positions; placing those half a box away forces the rebuild, which orders
    the pairs exactly as a fresh allocation at ``y`` would (the candidate order does not
    depend on the capacities). The overflow flag tells whether the capacities suffice.
    """
    partition = module("partition")
    y = model.list_positions(y)
    far = dataclasses.replace(neighbors, reference_position=y + half_box,
                              error=partition.PartitionError(jnp.zeros((), jnp.uint8)))
    return sort_pairs(far.update(y))


class NeighborLists:
    """jax-md neighbor lists whose pytree structure is the same for every packing.

    A jax-md ``NeighborList`` keeps as static pytree data its update function, its cell-list
    functions (new objects at every allocation) and its two capacities (set from the
    positions at allocation). Two lists share a compiled function only if all of these
    are equal, so here: one :func:`neighbor_list_fn` per (model static key, cutoff, skin); the
    first allocation's cell-list functions stand for every later one (they depend only on
    the box, the cell size and the capacity multiplier, which the key fixes); and the last
    list allocated for a number of particles is kept as the template of the next packing
    (rebuilt at its positions inside the compiled ``init``, checked for overflow). A packing
    that needs more room gets a fresh allocation, padded up to at least the template's
    capacities, which then becomes the template.
    """

    def __init__(self, model: PairModel, cutoff: float, skin: float):
        self.fn = neighbor_list_fn(model, cutoff, skin)
        box = np.asarray(model.box, np.float64)
        # half a box away along every axis (of the coordinates the list is given)
        self.half_box = jnp.asarray(
            0.5 * (np.ones(model.dim) if model.fractional_lists
                   else box.sum(axis=1) if box.ndim == 2 else box))
        self.model = model
        self.cell_list_fn = None
        self.kept: dict[tuple, Any] = {}  # positions shape -> the template list

    @staticmethod
    def _key(y) -> tuple:
        return (tuple(y.shape), str(y.dtype))

    def template(self, y):
        """The kept list for ``y``'s shape (any positions), or ``None``."""
        return self.kept.get(self._key(y))

    def allocate(self, y, extra_per_particle: int = 0):
        """A fresh list at ``y`` (capacities at least the template's); the new template."""
        with _LOCK:  # packings relaxed in threads (:mod:`systems.relax_ahead`) share it
            return self._allocate(y, extra_per_particle)

    def _allocate(self, y, extra_per_particle: int):
        key = self._key(y)
        nbrs = self.fn.allocate(self.model.list_positions(y),
                                extra_capacity=int(extra_per_particle))
        if self.cell_list_fn is None:
            self.cell_list_fn = nbrs.cell_list_fn
        nbrs = dataclasses.replace(nbrs, cell_list_fn=self.cell_list_fn)
        kept = self.kept.get(key)
        if kept is not None:
            nbrs = _grow(nbrs, kept.max_occupancy, kept.cell_list_capacity)
        self.kept[key] = nbrs
        return nbrs


def _grow(nbrs, max_occupancy: int, cell_list_capacity: int | None):
    """``nbrs`` with capacities at least the given ones (padded with the index N)."""
    occupancy = max(int(nbrs.max_occupancy), int(max_occupancy))
    cells = nbrs.cell_list_capacity
    if cells is not None and cell_list_capacity is not None:
        cells = max(int(cells), int(cell_list_capacity))
    idx = nbrs.idx
    n = nbrs.reference_position.shape[0]
    if occupancy > idx.shape[-1]:
        pad = jnp.full(idx.shape[:-1] + (occupancy - idx.shape[-1],), n, idx.dtype)
        idx = jnp.concatenate([idx, pad], axis=-1)
    return dataclasses.replace(nbrs, idx=idx, max_occupancy=occupancy,
                               cell_list_capacity=cells)


_LISTS: collections.OrderedDict[tuple, NeighborLists] = collections.OrderedDict()
_LOCK = threading.RLock()


def neighbor_lists(model: PairModel, cutoff: float, skin: float) -> NeighborLists:
    """The shared neighbor-list maker for (model static key, cutoff, skin) (an LRU of
    :data:`LISTS_KEPT`)."""
    key = (model.static_key(), float(cutoff), float(skin))
    with _LOCK:
        lists = _LISTS.get(key)
        if lists is None:
            lists = _LISTS[key] = NeighborLists(model, cutoff, skin)
            if len(_LISTS) > LISTS_KEPT:
                _LISTS.popitem(last=False)
        _LISTS.move_to_end(key)
        return lists


def clear() -> None:
    """Forget every neighbor-list template."""
    _LISTS.clear()


def neighbor_list_fn(model: PairModel, cutoff: float, skin: float):
    """jax-md OrderedSparse (i < j) neighbor list over the reference box, ``cutoff + skin``.

    A sheared cell: jax-md's cell lists work in fractional coordinates, so the list is
    given :meth:`~systems.potentials.PairModel.list_positions` (the energy still takes
    Cartesian ``y``, the list gives only indices) with ``periodic_general(H,
    fractional_coordinates=True)``'s displacement (distances in real units). A cell matrix
    that is not upper triangular has no cell list: the candidates are every pair
    (``disable_cell_list``), pruned at each rebuild.
    """
    partition = module("partition")
    if model.fractional_lists:
        space = module("space")
        box = jnp.asarray(model.box, jnp.float64)
        displacement, _ = space.periodic_general(box, fractional_coordinates=True)
        return partition.neighbor_list(
            displacement, box, r_cutoff=float(cutoff), dr_threshold=float(skin),
            capacity_multiplier=float(model.spec.capacity_multiplier),
            fractional_coordinates=True,
            format=partition.NeighborListFormat.OrderedSparse)
    if model.box is not None and np.ndim(model.box) == 2:
        return partition.neighbor_list(
            model.displacement_fn, jnp.asarray(model.box, jnp.float64),
            r_cutoff=float(cutoff), dr_threshold=float(skin),
            capacity_multiplier=float(model.spec.capacity_multiplier),
            disable_cell_list=True, format=partition.NeighborListFormat.OrderedSparse)

    return partition.neighbor_list(
        model.displacement_fn,
        jnp.asarray(model.box, jnp.float64),
        r_cutoff=float(cutoff),
        dr_threshold=float(skin),
        capacity_multiplier=float(model.spec.capacity_multiplier),
        format=partition.NeighborListFormat.OrderedSparse,
    )
