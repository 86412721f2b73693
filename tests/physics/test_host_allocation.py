"""The neighbor list's first allocation on the host (NeighborLists._host_allocate) against
jax-md's own allocation: the same capacities, cell size and format, and relaxations equal
to the ones from jax-md's list."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from sensitivity.systems import neighbor_lists as nl
from sensitivity.systems.generate import random_packing
from sensitivity.systems.potentials import PairModel, resolve_potential
from sensitivity.systems.relax import make_relaxer, resolve_minimizer

# (N, dim, phi, seed, extra per particle): a negative extra makes a list too small (an
# overflow, as the relaxer's test of reallocation provokes); seed 4 unwraps the positions
CASES = [(256, 2, 0.9, 0, 0), (300, 2, 0.84, 1, 0), (256, 2, 0.9, 2, 3), (400, 3, 0.64, 3, 0),
         (200, 2, 0.9, 4, 0), (160, 2, 0.9, 3, -2)]


@pytest.fixture(autouse=True)
def fresh_lists():
    """Every test starts and ends without kept lists (they are shared per model, and the
    tests below switch the host allocation off on one)."""
    nl.clear()
    yield
    nl.clear()


def _lists(system):
    model = PairModel.build(system, resolve_potential({"neighbor_list": True},
                                                      system.n_species))
    params = model.default_params(system.diameters)
    relaxer = make_relaxer(model, resolve_minimizer({"ftol": 1e-12}), [params])
    assert relaxer.use_nl
    return model, params, relaxer


@pytest.mark.parametrize("n, dim, phi, seed, extra", CASES)
def test_host_allocation_has_jax_mds_capacities(n, dim, phi, seed, extra):
    system = random_packing(n, dim=dim, phi=phi, seed=seed)
    positions = system.positions
    if seed == 4:  # unwrapped positions: a third of the particles a whole box away
        rng = np.random.default_rng(0)
        images = rng.integers(-1, 2, size=positions.shape) * (rng.random((n, 1)) < 0.3)
        positions = positions + images * system.box[None, :]
    model, params, relaxer = _lists(system.replace(positions=positions))
    lists = relaxer._lists
    ours = lists._host_allocate(jnp.asarray(positions), extra)
    assert ours is not None
    theirs = lists.fn.allocate(model.list_positions(jnp.asarray(positions)),
                               extra_capacity=extra)
    if extra < 0:  # jax-md counts the pairs of its overflowing cell list: fewer than all
        assert ours.cell_list_capacity == theirs.cell_list_capacity
        assert ours.max_occupancy >= theirs.max_occupancy
    elif seed != 4:
        assert ours.max_occupancy == theirs.max_occupancy
        assert ours.cell_list_capacity == theirs.cell_list_capacity
    else:  # jax-md's cell list misses pairs of unwrapped positions; ours counts them all,
        # and the cells of the wrapped positions the rebuild files
        assert ours.max_occupancy > theirs.max_occupancy
        assert ours.cell_list_capacity >= theirs.cell_list_capacity
    assert ours.cell_size == theirs.cell_size and type(ours.cell_size) is type(theirs.cell_size)
    assert ours.format is theirs.format
    assert ours.idx.shape == (2, ours.max_occupancy) and ours.idx.dtype == theirs.idx.dtype
    if seed != 4 and extra >= 0:  # the same pairs, in the order of a sorted list
        np.testing.assert_array_equal(np.asarray(ours.idx), np.asarray(nl.sort_pairs(theirs).idx))
    assert int(ours.error.code) == int(theirs.error.code)  # the overflow flags
    assert (int(ours.error.code) != 0) == (extra < 0)
    # the cell list functions are jax-md's, for the same box, cell size and multiplier
    a = ours.cell_list_fn.allocate(jnp.asarray(positions))
    b = theirs.cell_list_fn.allocate(jnp.asarray(positions))
    assert a.id_buffer.shape == b.id_buffer.shape


def test_relaxation_from_a_host_list_equals_one_from_jax_mds():
    system = random_packing(256, dim=2, phi=0.9, seed=5)
    runs = []
    for host in (True, False):
        nl.clear()
        model, params, relaxer = _lists(system)
        if not host:
            relaxer._lists._host_allocate = lambda y, extra: None
        runs.append(relaxer.run(system.positions, params))
        assert runs[-1].converged
    a, b = runs
    assert a.steps == b.steps
    np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-9)
    assert a.energy == pytest.approx(b.energy, rel=1e-12)


def test_every_list_shares_the_static_functions():
    system = random_packing(256, dim=2, phi=0.9, seed=6)
    model, params, relaxer = _lists(system)
    lists = relaxer._lists
    first = lists.allocate(jnp.asarray(system.positions))
    lists._host_allocate = lambda y, extra: None  # now jax-md allocates
    second = lists.allocate(jnp.asarray(system.positions), 2)
    for field in ("cell_list_fn", "update_fn", "format", "cell_size"):
        assert getattr(first, field) == getattr(second, field), field
    assert dataclasses.replace(second, idx=first.idx) is not None


def test_positions_far_outside_the_box_allocate_without_warnings():
    """Positions a trillion boxes away (an int32 cell index would wrap): the capacities
    of the wrapped positions, silently."""
    import warnings

    system = random_packing(200, dim=2, phi=0.9, seed=1)
    model, params, relaxer = _lists(system)
    lists = relaxer._lists
    near = lists._host_allocate(system.positions, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        far = lists._host_allocate(system.positions + 1e12 * system.box, 0)
    assert (far.cell_list_capacity, far.max_occupancy) == (near.cell_list_capacity,
                                                           near.max_occupancy)


def test_a_relaxation_in_an_orthorhombic_box_never_builds_jax_mds_list_functions():
    """jax-md's constructor (four small device programs at a process's first list) is made
    only when asked for: not by a relaxation whose lists are allocated on the host and
    rebuilt over the cell list, even one that overflows and reallocates; a list's update
    still works (it makes them then), and gives jax-md's own update."""
    system = random_packing(256, dim=2, phi=0.9, seed=7)
    model, params, relaxer = _lists(system)
    lists = relaxer._lists
    small = lists._host_allocate(jnp.asarray(system.positions), -2)  # overflows in init
    lists.kept[lists._key(jnp.asarray(system.positions))] = small
    result = relaxer.run(system.positions, params)
    assert result.converged and result.reallocations == 0 and lists._fn is None
    listed = lists.allocate(jnp.asarray(system.positions))
    assert lists._fn is None
    moved = jnp.asarray(system.positions) + 0.3
    ours = nl.sort_pairs(listed.update(moved))  # makes jax-md's functions
    assert lists._fn is not None
    theirs = nl.sort_pairs(lists.fn.update(moved, listed))
    np.testing.assert_array_equal(np.asarray(ours.idx), np.asarray(theirs.idx))
