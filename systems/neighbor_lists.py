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
import warnings
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ._compile import device_array
from ._jaxmd import module, nearest_image, wrap_mod
from ._system import pairs_within

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
    half the skin; until then the list is returned as jax-md would return it. Over a cell
    list there, the test (a move over half the skin, as jax-md's) and the rebuild are
    :func:`_cell_rebuild`'s: the same pairs in the same order, about half the cost.
    """
    if skin is None or not model.periodic or np.ndim(model.box) != 1:
        return _update_sorted(model, neighbors, y)
    # round-off here moves only the margin, not jax-md's decision
    side = jnp.asarray(model.box, jnp.float64)
    d = nearest_image(y - neighbors.reference_position, side)
    moved2 = jnp.max(jnp.sum(d * d, axis=-1))
    if _cells_apply(model, neighbors):
        return jax.lax.cond(moved2 > (0.5 * skin) ** 2,
                            functools.partial(_cell_rebuild, y=y, side=side),
                            lambda nbrs: nbrs, neighbors)
    return jax.lax.cond(moved2 > (_MARGIN * 0.5 * skin) ** 2,
                        functools.partial(_update_sorted, model, y=y),
                        lambda nbrs: nbrs, neighbors)


def overflowed(neighbors) -> bool:
    """``neighbors.did_buffer_overflow`` read on the host (jax-md's property is a device
    operation: a small program at a process's first list)."""
    partition = module("partition")
    mask = int(partition.PEC.NEIGHBOR_LIST_OVERFLOW) | int(partition.PEC.CELL_LIST_OVERFLOW)
    return bool(int(np.asarray(neighbors.error.code)) & mask)


def _cells_apply(model: PairModel, neighbors) -> bool:
    """Whether :func:`_cell_rebuild` serves ``neighbors``: an OrderedSparse list over a cell
    list in an orthorhombic periodic box (Cartesian positions)."""
    partition = module("partition")
    return (model.periodic and np.ndim(model.box) == 1 and not model.fractional_lists
            and neighbors.cell_list_fn is not None and neighbors.cell_size is not None
            and neighbors.format is partition.NeighborListFormat.OrderedSparse)


def _count_at_most(table, q, length: int):
    """Per query, how many of the first ``length`` entries of the non-decreasing ``table``
    (1D, or one row per query) are ``<= q``: a binary search, ``log2(length)`` gathers."""
    found = jnp.zeros(q.shape, jnp.int32)
    step = 1 << (int(length).bit_length() - 1)
    while step:
        probe = found + step
        at = jnp.clip(probe - 1, 0, length - 1)
        v = table[at] if table.ndim == 1 else jnp.take_along_axis(table, at[:, None], 1)[:, 0]
        found = jnp.where((probe <= length) & (v <= q), probe, found)
        step >>= 1
    return found


def _cell_rebuild(neighbors, y, side):
    """The list rebuilt at ``y`` (orthorhombic box ``side``, :func:`_cells_apply`): jax-md's
    cell list and candidates (every particle of the 3^d cells around a particle's), then, in
    place of jax-md's candidate distances (a floating remainder each) and its compaction
    (a cumulative sum and two scatters over every candidate), a branch-free minimum image of
    the wrapped positions and a binary search per list slot, sorted by :func:`sort_pairs`.
    The same pairs as jax-md's rebuild (``tests/physics/test_pair_forces.py`` compares them),
    the same overflow flags.
    """
    partition = module("partition")
    n, dim = y.shape
    wrapped = wrap_mod(y, side)
    cells = neighbors.cell_list_fn.update(wrapped, neighbors.cell_list_capacity)
    buffer = cells.id_buffer  # (cells per side ..., capacity, 1), N marks an empty slot
    capacity = buffer.shape[dim]
    grid = buffer.shape[:dim]
    per_side = jnp.asarray(grid[::-1], jnp.int32)
    shifted = jnp.mod(cells.particle_cell_id[:, None, :]
                      + partition._neighboring_cells_arr(dim)[None], per_side)
    strides = [1]
    for k in range(1, dim):
        strides.append(strides[-1] * grid[dim - k])
    cell = jnp.sum(shifted * jnp.asarray(strides, jnp.int32), axis=2)  # (N, 3^d)
    candidates = buffer.reshape(-1, capacity)[cell].reshape(n, -1)  # (N, L)
    length = candidates.shape[1]
    d = wrapped[:, None, :] - wrapped[jnp.minimum(candidates, n - 1)]
    half = 0.5 * side
    d = jnp.where(d > half, d - side, jnp.where(d < -half, d + side, d))
    # |d|² written out per component: as a reduction, XLA:CPU hands it to a (slower) YNN
    # fusion
    own = jnp.arange(n, dtype=jnp.int32)[:, None]
    keep = ((candidates < n) & (candidates > own)
            & (sum(d[..., c] * d[..., c] for c in range(dim)) < neighbors.cell_size ** 2))
    row_count = jnp.cumsum(keep, axis=1, dtype=jnp.int32)  # per row, kept so far
    ends = jnp.cumsum(row_count[:, -1])  # where each particle's pairs end in the list
    slots = neighbors.idx.shape[1]
    k = jnp.arange(slots, dtype=jnp.int32)
    row = jnp.minimum(_count_at_most(ends, k, n), n - 1)
    rank = k - (ends[row] - row_count[row, -1])
    column = jnp.minimum(_count_at_most(row_count[row], rank, length), length - 1)
    used = k < ends[-1]
    idx = jnp.stack([jnp.where(used, row, n),
                     jnp.where(used, candidates[row, column], n)]).astype(neighbors.idx.dtype)
    error = neighbors.error.update(partition.PEC.CELL_LIST_OVERFLOW, cells.did_buffer_overflow)
    error = error.update(partition.PEC.NEIGHBOR_LIST_OVERFLOW, ends[-1] > slots)
    return sort_pairs(dataclasses.replace(neighbors, idx=idx, reference_position=y,
                                          error=error))


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
    if _cells_apply(model, neighbors):
        fresh = dataclasses.replace(neighbors,
                                    error=partition.PartitionError(jnp.zeros((), jnp.uint8)))
        return _cell_rebuild(fresh, y, jnp.asarray(model.box, jnp.float64))
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
        self._args = (model, float(cutoff), float(skin))
        self._fn = None
        self.reach = float(cutoff) + float(skin)  # jax-md's list cutoff and cell size
        box = np.asarray(model.box, np.float64)
        # half a box away along every axis (of the coordinates the list is given)
        self.half_box = device_array(
            0.5 * (np.ones(model.dim) if model.fractional_lists
                   else box.sum(axis=1) if box.ndim == 2 else box), np.float64)
        self.model = model
        self.cell_list_fn = None
        self.kept: dict[tuple, Any] = {}  # positions shape -> the template list

    @property
    def fn(self):
        """jax-md's :func:`neighbor_list_fn`, made when first asked for. Its constructor runs
        four small device programs (``f32(box)``, ``cutoff ** 2``, ...) and traces the
        displacement: a process's first list paid for them, although an orthorhombic box's
        lists are allocated on the host and rebuilt by :func:`_cell_rebuild` without it."""
        if self._fn is None:
            with _LOCK, jax.ensure_compile_time_eval():  # concrete, even inside a trace
                if self._fn is None:
                    self._fn = neighbor_list_fn(*self._args)
        return self._fn

    def __stable_key__(self):
        """What a disk cache of compiled code keys on (:mod:`systems._exports`): the maker's
        arguments, which determine :attr:`fn` (the model by its static key)."""
        model, cutoff, skin = self._args
        return (model.static_key(), cutoff, skin)

    def _update(self, position, neighbors, **kwargs):
        """The lists' ``update_fn``: jax-md's update (one object for every list, so compiled
        functions are shared, whether or not jax-md's functions were made yet)."""
        return self.fn.update(position, neighbors, **kwargs)

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
        nbrs = self._host_allocate(y, int(extra_per_particle))
        if nbrs is None:
            nbrs = self.fn.allocate(self.model.list_positions(y),
                                    extra_capacity=int(extra_per_particle))
            if self.cell_list_fn is None:
                self.cell_list_fn = nbrs.cell_list_fn
        # the same static functions in every list: compiled functions are shared
        nbrs = dataclasses.replace(nbrs, cell_list_fn=self.cell_list_fn,
                                   update_fn=self._update)
        kept = self.kept.get(key)
        if kept is not None:
            nbrs = _grow(nbrs, kept.max_occupancy, kept.cell_list_capacity)
        self.kept[key] = nbrs
        return nbrs


    def _host_allocate(self, y, extra: int):
        """jax-md's allocation of an OrderedSparse list over a cell list in an orthorhombic
        box, computed on the host: the same capacities (the cell list's from the particles
        per cell of jax-md's grid, times the capacity multiplier; the list's from the pairs
        within the cutoff) and the same pairs.
        jax-md allocates op by op: some 60 small device programs, each lowered, looked up in
        the persistent cache and loaded at a process's first list (~0.9 s of a warm run at
        N = 256). The pairs are the host's (:func:`~systems._system.pairs_within`), in the
        order :func:`sort_pairs` gives a rebuilt list. ``None`` where jax-md would not use a
        cell list (then it allocates)."""
        model = self.model
        if not model.periodic or np.ndim(model.box) != 1 or model.fractional_lists:
            return None
        partition = module("partition")
        box = np.asarray(model.box, np.float64).astype(np.float32)  # jax-md: f32(box)
        if not np.all(self.reach < box / 3.0):
            return None
        y = np.asarray(y, np.float64)
        n, dim = y.shape
        multiplier = float(model.spec.capacity_multiplier)
        # jax-md's count_cell_filling: the cell index truncated toward zero, then periodic;
        # and of the wrapped positions, which the rebuild files (they differ for unwrapped
        # positions, where jax-md's estimate could fall short of the rebuild's need)
        per_side = np.floor(box / self.reach)
        size, shape = box / per_side, per_side.astype(np.int64)
        filling = 0
        for at in (y, np.mod(y, np.asarray(model.box, np.float64))):
            at = at / size
            if not np.all(np.abs(at) < 2**31):  # jax-md's int32 index would wrap around
                continue
            cell = at.astype(np.int32) % per_side.astype(np.int32)
            filling = max(filling, np.bincount(np.ravel_multi_index(cell.T, shape)).max())
        cell_capacity = int(filling * multiplier) + extra
        pairs = pairs_within(y, self.reach, np.asarray(model.box, np.float64))
        max_occupancy = min(int(len(pairs) * multiplier + n * extra),
                            n * 3 ** dim * cell_capacity, n * (n - 1) // 2)
        if self.cell_list_fn is None:
            self.cell_list_fn = partition.cell_list(box, self.reach, multiplier)
        kept = min(len(pairs), max_occupancy)  # fewer with a negative extra, as jax-md
        idx = np.full((2, max_occupancy), n, np.int32)  # the pairs in (i, j) order, as
        idx[:, :kept] = pairs[:kept].T                   # sort_pairs leaves a rebuilt list
        code = ((int(partition.PEC.NEIGHBOR_LIST_OVERFLOW) if len(pairs) > max_occupancy else 0)
                | (int(partition.PEC.CELL_LIST_OVERFLOW) if filling > cell_capacity else 0))
        return partition.NeighborList(
            device_array(idx, np.int32), device_array(y, np.float64),
            partition.PartitionError(device_array(code, np.uint8)), cell_capacity, max_occupancy,
            partition.NeighborListFormat.OrderedSparse, self.reach, self.cell_list_fn,
            self._update)


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
        box = device_array(model.box, np.float64)
        displacement, _ = space.periodic_general(box, fractional_coordinates=True)
        return partition.neighbor_list(
            displacement, box, r_cutoff=float(cutoff), dr_threshold=float(skin),
            capacity_multiplier=float(model.spec.capacity_multiplier),
            fractional_coordinates=True,
            format=partition.NeighborListFormat.OrderedSparse)
    if model.box is not None and np.ndim(model.box) == 2:
        # jax-md prunes the every-pair candidates by scattering their int64 indices (x64)
        # into int32 ones; jax 0.10 warns at each trace that a later release will refuse
        # the cast (FutureWarning from its scatter). The indices are below N: the cast is
        # exact, and the warning would only puzzle a user. Hidden for that one message.
        warnings.filterwarnings(
            "ignore", message="scatter inputs have incompatible types: cannot safely cast "
            "value from dtype=int64 to dtype=int32", category=FutureWarning,
            module=r"jax\._src\.ops\.scatter")
        return partition.neighbor_list(
            model.displacement_fn, device_array(model.box, np.float64),
            r_cutoff=float(cutoff), dr_threshold=float(skin),
            capacity_multiplier=float(model.spec.capacity_multiplier),
            disable_cell_list=True, format=partition.NeighborListFormat.OrderedSparse)

    return partition.neighbor_list(
        model.displacement_fn,
        device_array(model.box, np.float64),
        r_cutoff=float(cutoff),
        dr_threshold=float(skin),
        capacity_multiplier=float(model.spec.capacity_multiplier),
        format=partition.NeighborListFormat.OrderedSparse,
    )
