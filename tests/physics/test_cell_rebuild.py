"""The FIRE loop's neighbor-list rebuild over a cell list (``neighbor_lists._cell_rebuild``)
against jax-md's own rebuild (the same pairs in the same order, the same overflow flags) and,
for positions outside the box, against a brute-force search (``_system.pairs_within``: jax-md's
cell list misplaces negative coordinates there and misses pairs)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sensitivity import systems  # noqa: F401
from sensitivity.systems import _jaxmd, neighbor_lists, relax
from sensitivity.systems._system import pairs_within, wrap_positions
from sensitivity.systems.generate import random_packing
from sensitivity.systems.potentials import PairModel, resolve_potential


def _setup(n, dim, seed):
    system = random_packing(n, dim=dim, phi=0.9 if dim == 2 else 0.6, seed=seed)
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    params = model.default_params(system.diameters)
    relaxer = relax.make_relaxer(model, relax.resolve_minimizer({}), [params])
    assert relaxer.use_nl
    nbrs = relaxer._allocate(jnp.asarray(system.positions))
    assert neighbor_lists._cells_apply(model, nbrs)
    return system, model, relaxer, nbrs


def _jax_md_rebuild(nbrs, y, half_box):
    partition = _jaxmd.module("partition")
    far = dataclasses.replace(nbrs, reference_position=y + half_box,
                              error=partition.PartitionError(jnp.zeros((), jnp.uint8)))
    return neighbor_lists.sort_pairs(far.update(y))


def _pairs(nbrs, n):
    idx = np.asarray(nbrs.idx)
    return {(int(a), int(b)) for a, b in idx.T if a < n}


@pytest.mark.parametrize("n, dim", [(160, 2), (300, 3)])
def test_cell_rebuild_is_jax_md_rebuild(n, dim):
    system, model, relaxer, nbrs = _setup(n, dim, seed=n)
    half_box = relaxer._lists.half_box
    ours = jax.jit(lambda nb, y: neighbor_lists.rebuild(model, nb, y, half_box))
    theirs = jax.jit(_jax_md_rebuild)
    rng = np.random.default_rng(0)
    box = np.asarray(system.box)
    checked = 0
    for spread in (0.0, 0.1, 0.2, 0.5):
        y = wrap_positions(system.positions + rng.normal(0, spread, system.positions.shape), box)
        y = jnp.asarray(y)
        a, b = theirs(nbrs, y, half_box), ours(nbrs, y)
        assert int(b.error.code) == int(a.error.code)
        if bool(a.did_buffer_overflow):  # a cell too full: both say so, the list is void
            continue
        checked += 1
        np.testing.assert_array_equal(np.asarray(b.idx), np.asarray(a.idx))
        np.testing.assert_array_equal(np.asarray(b.reference_position), np.asarray(y))
        expected = {tuple(p) for p in np.sort(pairs_within(np.asarray(y), nbrs.cell_size, box))}
        assert _pairs(b, n) == expected

    assert checked >= 2
    # unwrapped positions (moved by whole boxes): every pair within reach all the same
    y = jnp.asarray(system.positions + rng.integers(-2, 3, system.positions.shape) * box)
    b = ours(nbrs, y)
    assert not bool(b.did_buffer_overflow)
    expected = {tuple(p) for p in np.sort(pairs_within(np.asarray(y), nbrs.cell_size, box))}
    assert _pairs(b, n) == expected


def test_cell_rebuild_flags_overflows_as_jax_md():
    system, model, relaxer, nbrs = _setup(160, 2, seed=1)
    half_box = relaxer._lists.half_box
    y = jnp.asarray(system.positions)
    partition = _jaxmd.module("partition")
    short = dataclasses.replace(nbrs, idx=nbrs.idx[:, :100], max_occupancy=100)
    cramped = dataclasses.replace(nbrs, cell_list_capacity=2)
    # jitted, as the FIRE loop runs them (eagerly, each operation compiles on its own)
    ours = jax.jit(lambda nb, y: neighbor_lists.rebuild(model, nb, y, half_box))
    theirs = jax.jit(_jax_md_rebuild)
    for small, flag in ((short, partition.PEC.NEIGHBOR_LIST_OVERFLOW),
                        (cramped, partition.PEC.CELL_LIST_OVERFLOW)):
        a = theirs(small, y, half_box)
        b = ours(small, y)
        assert int(a.error.code) & flag and int(b.error.code) & flag
        assert bool(b.did_buffer_overflow)


def test_update_rebuilds_past_half_the_skin_only():
    system, model, relaxer, nbrs = _setup(160, 2, seed=2)
    skin = relaxer.skin
    y = jnp.asarray(system.positions)
    nbrs = neighbor_lists.rebuild(model, nbrs, y, relaxer._lists.half_box)
    update = jax.jit(lambda nb, y: neighbor_lists.update_sorted(model, nb, y, skin))
    step = np.zeros(system.positions.shape)
    step[7, 0] = 0.49 * skin  # under half the skin: the list as it was
    kept = update(nbrs, y + step)
    np.testing.assert_array_equal(np.asarray(kept.reference_position), np.asarray(y))
    step[7, 0] = 0.51 * skin  # past it: rebuilt at the new positions
    moved = y + step
    rebuilt = update(nbrs, moved)
    np.testing.assert_array_equal(np.asarray(rebuilt.reference_position), np.asarray(moved))
    np.testing.assert_array_equal(
        np.asarray(rebuilt.idx),
        np.asarray(_jax_md_rebuild(nbrs, jnp.asarray(wrap_positions(
            np.asarray(moved), np.asarray(system.box))), relaxer._lists.half_box).idx))
