"""The periodic wrap without XLA's floating remainder gives jax-md's results bit for bit.

``systems._jaxmd.wrap_mod`` replaces ``jnp.mod`` (the minimum image of every pair and the
position wrap of every FIRE step) where the remainder is a plain add or subtract, and
``neighbor_lists.update_sorted`` skips jax-md's update while no particle is near half the
skin. References: ``jnp.mod`` and jax-md's own ``space.periodic_displacement``, and a
relaxation run with those (and jax-md's update at every step) instead.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sensitivity import systems  # noqa: F401
from sensitivity.systems import _jaxmd, neighbor_lists, potentials, relax
from sensitivity.systems.generate import random_packing
from sensitivity.systems.potentials import PairModel, Pairs, resolve_potential


def _bits(a):
    return np.asarray(a).view(np.int64)


def test_wrap_mod_is_jnp_mod_bit_for_bit():
    side = jnp.asarray([3.7, 11.3], jnp.float64)
    rng = np.random.default_rng(0)
    near = rng.uniform(-1.0, 2.0, (5000, 2)) * np.asarray(side)
    s = np.asarray(side)
    edges = np.array([[0.0, -0.0], [np.nextafter(s[0], 0), s[1]],
                      [np.nextafter(-s[0], 0), np.nextafter(2 * s[1], 0)],
                      [-1e-300, 1e-300], [s[0], -s[1] / 2]])
    for u in (near, edges):
        u = jnp.asarray(u)
        assert bool(jnp.all((u > -side) & (u < 2 * side)))  # the fast branch
        assert np.array_equal(_bits(jax.jit(_jaxmd.wrap_mod)(u, side)), _bits(jnp.mod(u, side)))
    # outside (-side, 2 side): jnp.mod itself, the fast branch would be wrong
    far = jnp.asarray(np.vstack([near[:10], [[-s[0], 2 * s[1]]], [[1e6, -7e5]]]))
    assert np.array_equal(_bits(jax.jit(_jaxmd.wrap_mod)(far, side)), _bits(jnp.mod(far, side)))
    assert not np.array_equal(np.asarray(far[-1] - side), np.asarray(jnp.mod(far[-1], side)))
    nan = jnp.asarray([[np.nan, 1.0]])
    assert np.isnan(np.asarray(_jaxmd.wrap_mod(nan, side))[0, 0])


@pytest.mark.parametrize("unwrapped", [False, True], ids=["in-box", "unwrapped"])
def test_periodic_difference_is_jax_md_displacement(unwrapped):
    space = _jaxmd.module("space")
    box = np.array([9.5, 7.25])
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 1, (2, 4000, 2)) * box
    if unwrapped:
        a = a + rng.integers(-3, 4, a.shape) * box
    displacement, _ = space.periodic(jnp.asarray(box))
    ref = jax.vmap(displacement)(jnp.asarray(a), jnp.asarray(b))
    got = jax.jit(_jaxmd.periodic_difference)(jnp.asarray(a) - jnp.asarray(b), jnp.asarray(box))
    assert np.array_equal(_bits(got), _bits(ref))


@pytest.mark.slow
@pytest.mark.parametrize("n", [48, 160], ids=["all-pairs", "neighbor-list"])
def test_relaxation_matches_the_jax_md_wrap(n, monkeypatch):
    """FIRE from an unwrapped start against the same run with jnp.mod, jax-md's
    displacement and jax-md's update at every step: forces at one point to the bit, and the
    relaxed packing. (Bit for bit at XLA's default optimisation, as a user runs it, where 32
    packings of N = 256 gave identical positions, steps and energies; the tests compile
    without LLVM's optimisation, where the two programs round differently after hundreds of
    steps.)"""
    system = random_packing(n, dim=2, phi=0.9, seed=3)
    system = system.replace(positions=system.positions + np.array([1.0, -2.0]) * system.box)
    model = PairModel.build(system, resolve_potential(None, system.n_species))
    params = model.default_params(system.diameters)
    pairs = Pairs.all_pairs(n)

    def run():
        relax.clear_compile_cache()
        relaxer = relax.make_relaxer(model, relax.resolve_minimizer({"ftol": 1e-12}), [params])
        result = relaxer.run(system.positions, params)
        forces = jax.jit(model.forces)(jnp.asarray(system.positions), params, pairs)
        return relaxer.use_nl, result, np.asarray(forces)

    use_nl, fast, fast_forces = run()
    assert use_nl == (n == 160) and fast.converged
    update = neighbor_lists.update_sorted
    with monkeypatch.context() as patch:
        patch.setattr(potentials, "wrap_mod", jnp.mod)
        patch.setattr(potentials, "periodic_difference",
                      lambda dr, side: _jaxmd.module("space").periodic_displacement(side, dr))
        patch.setattr(relax, "update_sorted", lambda m, nbrs, y, skin=None: update(m, nbrs, y))
        _, ref, ref_forces = run()
    relax.clear_compile_cache()
    assert np.array_equal(_bits(fast_forces), _bits(ref_forces))
    assert ref.converged and fast.stop_reason == ref.stop_reason
    assert abs(fast.steps - ref.steps) <= 0.05 * ref.steps
    scale = np.max(system.box)
    assert np.max(np.abs(fast.positions - ref.positions)) <= 1e-10 * scale
    assert fast.energy == pytest.approx(ref.energy, rel=1e-10)
