"""The FIRE loop's forces (``systems.pair_forces``: the pair law's derivative, summed per
particle) against ``-jax.grad`` of ``PairModel.energy``, the energy against the energy, for
every pair law, square / sheared / free boxes, box scale, strain, ``active`` masks, every
pair and a padded jax-md neighbor list; and the relaxation that uses them against one driven
by ``-jax.grad``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sensitivity import systems  # noqa: F401
from sensitivity.systems import relax
from sensitivity.systems.generate import random_packing
from sensitivity.systems.pair_forces import energy_and_forces
from sensitivity.systems.potentials import PairModel, Pairs, resolve_potential

POTENTIALS = {
    "harmonic": {"kind": "soft_sphere"},
    "hertzian": {"kind": "soft_sphere", "alpha": 2.5, "epsilon": [[1.0, 0.7], [0.7, 1.3]]},
    "lennard_jones": {"kind": "lennard_jones", "r_onset": 1.5, "r_cutoff": 2.0},
    "morse": {"kind": "morse", "morse_alpha": 4.0, "sigma": [[1.0, 1.2], [1.2, 1.4]]},
}


def _system(box: str, n: int, kind: str):
    phi = 0.9 if kind == "soft_sphere" else 0.3  # LJ/Morse: fewer near-coincident pairs
    if box == "square":
        return random_packing(n, dim=2, phi=phi, seed=1)
    if box == "sheared-2d":
        return random_packing(n, dim=2, phi=phi, seed=2, tilt={"xy": 0.3})
    if box == "sheared-3d":
        return random_packing(n, dim=3, phi=phi, seed=3, tilt={"xy": 0.2, "yz": -0.3})
    system = random_packing(n, dim=2, phi=phi, seed=4)
    return system.replace(box=None, periodic=False)


QUICK = {("harmonic", "square"), ("lennard_jones", "sheared-2d"), ("morse", "free")}
CASES = [pytest.param(p, b, id=f"{b}-{p}",
                      marks=() if (p, b) in QUICK else pytest.mark.slow)
         for b in ("square", "sheared-2d", "sheared-3d", "free") for p in POTENTIALS]


@pytest.mark.parametrize("potential, box", CASES)
def test_forces_are_minus_the_energy_gradient(potential, box):
    config = POTENTIALS[potential]
    system = _system(box, 24, config["kind"])
    model = PairModel.build(system, resolve_potential(config, system.n_species))
    base = model.default_params(system.diameters)
    dim = system.positions.shape[1]
    rng = np.random.default_rng(5)
    strain = rng.uniform(-0.02, 0.02, (dim, dim))
    cases = {
        "plain": (base, None),
        "scaled, active": (base._replace(scale=jnp.asarray(1.07)),
                           jnp.asarray((rng.uniform(size=system.n) > 0.3).astype(float))),
        "strained": (base._replace(scale=jnp.asarray(0.96),
                                   strain=jnp.asarray(0.5 * (strain + strain.T))), None),
    }
    y = jnp.asarray(system.positions)
    pairs = Pairs.all_pairs(system.n)
    fast = jax.jit(energy_and_forces, static_argnums=(0, 5))
    for name, (params, active) in cases.items():
        e_ref, g_ref = jax.jit(jax.value_and_grad(model.energy))(y, params, pairs, active)
        e, f = fast(model, y, params, pairs, active, True)
        scale = float(jnp.max(jnp.abs(g_ref)))
        assert scale > 0, name
        assert float(jnp.max(jnp.abs(f + g_ref))) <= 1e-11 * scale, name
        assert float(e) == pytest.approx(float(e_ref), rel=1e-12, abs=1e-14), name
        _, f_only = fast(model, y, params, pairs, active, False)
        assert float(jnp.max(jnp.abs(f_only - f))) <= 1e-14 * scale, name


def test_forces_over_a_padded_neighbor_list_and_unwrapped_positions():
    system = random_packing(160, dim=2, phi=0.9, seed=6)
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    params = model.default_params(system.diameters)
    relaxer = relax.make_relaxer(model, relax.resolve_minimizer({}), [params])
    assert relaxer.use_nl
    nbrs = relaxer._allocate(jnp.asarray(system.positions))
    pairs = Pairs.from_sparse_neighbor_list(nbrs)
    assert int(jnp.sum(pairs.weight == 0)) > 0  # padding present
    # positions moved by whole boxes: the minimum image must find the same pairs
    shifted = system.positions + np.array([2.0, -3.0]) * system.box
    for y in (system.positions, shifted):
        y = jnp.asarray(y)
        g_ref = jax.jit(jax.grad(model.energy))(y, params, Pairs.all_pairs(system.n))
        _, f = jax.jit(energy_and_forces, static_argnums=0)(model, y, params, pairs)
        assert float(jnp.max(jnp.abs(f + g_ref))) <= 1e-11 * float(jnp.max(jnp.abs(g_ref)))


@pytest.mark.parametrize("n", [48, pytest.param(160, marks=pytest.mark.slow)],
                         ids=["all-pairs", "neighbor-list"])
def test_relaxation_matches_autodiff_forces(n, monkeypatch):
    """FIRE with these forces against FIRE with ``-jax.grad`` of the energy: the same
    minimum to round-off (the step counts may drift by a few)."""
    system = random_packing(n, dim=2, phi=0.9, seed=7)
    model = PairModel.build(system, resolve_potential(None, system.n_species))
    params = model.default_params(system.diameters)

    def run():
        relax.clear_compile_cache()
        relaxer = relax.make_relaxer(model, relax.resolve_minimizer({"ftol": 1e-12}), [params])
        return relaxer.use_nl, relaxer.run(system.positions, params)

    use_nl, fast = run()
    assert use_nl == (n == 160) and fast.converged

    def autodiff(s, model, y, params, neighbors, with_energy):
        e, g = jax.value_and_grad(model.energy)(y, params, relax._pairs(s, neighbors))
        return (e if with_energy else jnp.nan), -g

    monkeypatch.setattr(relax, "_energy_and_force", autodiff)
    _, ref = run()
    relax.clear_compile_cache()
    assert ref.converged and fast.stop_reason == ref.stop_reason
    assert abs(fast.steps - ref.steps) <= 0.05 * ref.steps
    assert np.max(np.abs(fast.positions - ref.positions)) <= 1e-9 * np.max(system.box)
    assert fast.energy == pytest.approx(ref.energy, rel=1e-9)
