"""FIRE and gradient descent: stopping rules, reports, neighbor-list overflow handling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sensitivity import systems  # noqa: F401
from sensitivity.systems._errors import InputError
from sensitivity.systems.generate import random_packing
from sensitivity.systems.potentials import PairModel, Pairs, resolve_potential
from sensitivity.systems.relax import (Relaxer, clear_compile_cache, make_relaxer,
                                       resolve_minimizer)


@pytest.fixture(scope="module")
def small():
    system = random_packing(32, dim=2, phi=0.9, seed=0)
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    params = model.default_params(system.diameters)
    relaxer = make_relaxer(model, resolve_minimizer({"ftol": 1e-12, "report_every": 200}),
                           [params])
    return system, model, params, relaxer


def max_force(model, params, positions):
    pairs = Pairs.all_pairs(model.n)
    # jitted: eagerly, each of its operations would compile on its own
    f = np.asarray(jax.jit(model.forces)(jnp.asarray(positions), params, pairs))
    return np.max(np.linalg.norm(f, axis=1))


@pytest.mark.slow
def test_fire_converges_and_reports(small):
    system, model, params, relaxer = small
    events = []
    clear_compile_cache()  # compiled functions are shared by the process: start cold
    result = relaxer.run(system.positions, params, lambda e, **f: events.append((e, f)))
    assert result.converged and result.stop_reason == "ftol"
    assert result.max_force <= 1e-12 and result.steps > 0
    assert max_force(model, params, result.positions) == pytest.approx(result.max_force,
                                                                       rel=1e-6)
    energy = float(jax.jit(model.energy)(jnp.asarray(result.positions), params,
                                         Pairs.all_pairs(model.n)))
    assert result.energy == pytest.approx(energy, rel=1e-12)
    assert np.all((result.positions >= 0) & (result.positions < system.box))
    assert events and all(e == "relax" for e, _ in events)
    assert events[-1][1]["step"] == result.steps
    assert result.time_compile_s > 0 and result.time_s > 0
    assert "converged" in result.message()
    # a second run compiles nothing
    again = relaxer.run(result.positions, params)
    assert again.time_compile_s == 0 and again.steps == 0 and again.converged


def test_max_steps_is_reported_not_raised(small):
    system, model, params, relaxer = small
    result = relaxer.run(system.positions, params, max_steps=7)
    assert not result.converged and result.stop_reason == "max_steps" and result.steps == 7
    assert "raise minimizer.max_steps" in result.message()


@pytest.mark.slow
def test_gradient_descent_and_energy_tolerance():
    system = random_packing(16, dim=2, phi=0.9, seed=1)
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    params = model.default_params(system.diameters)

    def relax(minimizer):
        relaxer = make_relaxer(model, resolve_minimizer(minimizer), [params])
        return relaxer.run(system.positions, params)

    gd = relax({"kind": "gradient_descent", "ftol": 1e-8, "step_size": 0.2})
    assert gd.converged and gd.stop_reason == "ftol" and gd.minimizer == "gradient_descent"
    etol = relax({"ftol": 1e-30, "etol": 1e-6})
    assert etol.converged and etol.stop_reason == "etol"


@pytest.mark.slow
def test_neighbor_list_overflow_is_reallocated():
    system = random_packing(160, dim=2, phi=0.9, seed=3)
    model = PairModel.build(system, resolve_potential({"neighbor_list": True,
                                                       "capacity_multiplier": 1.0},
                                                      system.n_species))
    params = model.default_params(system.diameters)
    relaxer = Relaxer(model, resolve_minimizer({"ftol": 1e-10}),
                      cutoff=model.reference_cutoff([params]), neighbor_list=True, skin=0.3)
    allocate = relaxer._allocate
    calls = []

    def too_small_at_first(y, extra=0):
        calls.append(extra)
        return allocate(y, extra - 2 if len(calls) == 1 else extra)

    relaxer._allocate = too_small_at_first
    result = relaxer.run(system.positions, params)
    assert result.neighbor_list and result.reallocations >= 1
    assert result.converged
    assert max_force(model, params, result.positions) <= 1e-10 * 1.0001


def test_minimizer_validation():
    assert resolve_minimizer({}).kind == "fire"
    for bad in ({"kind": "lbfgs"}, {"ftol": -1}, {"max_steps": 0}, {"max_steps": 1.5},
                {"ftol": 0, "etol": 0}, {"dt_max": "big"}, {"unknown": 1}):
        with pytest.raises(InputError):
            resolve_minimizer(bad)
