"""Packings of one sweep share compiled relaxations (issue 5), without leaking data.

Per size (N = 64, every pair; N = 256, a neighbor list): packing B is relaxed alone in a
clean cache (the reference); then, in a clean cache, packing A and after it B, which has
other positions, a shuffled species assignment, other diameters and the same box; then C,
in a different box. Compilations are counted by jax's own monitoring events (every
lowering to MLIR and every backend compile, whichever cache answers), independently of
the relaxer's cache counters.
"""

import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sensitivity import systems  # noqa: F401
from sensitivity.systems.generate import random_packing
from sensitivity.systems.potentials import PairModel, Pairs, resolve_potential
from sensitivity.systems.relax import (
    clear_compile_cache,
    compile_cache_info,
    make_relaxer,
    resolve_minimizer,
)

pytestmark = pytest.mark.slow  # each test relaxes packings of up to 256 particles twice

# species matter only through a non-uniform ε matrix
POTENTIAL = {"epsilon": [[1.0, 1.3], [1.3, 0.8]]}
FTOL = 1e-12
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def count_compiles():
    """Collects the names of the functions jax lowers or compiles inside the block."""
    names = []

    def listener(event, duration, **kwargs):
        if event in _COMPILE_EVENTS:
            names.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def packing_b(n):
    """Seed 1 with shuffled species, small diameters 0.95 (largest, so the cutoff, kept)."""
    system = random_packing(n, dim=2, phi=0.9, seed=1)
    species = np.random.default_rng(7).permutation(system.species).astype(np.int32)
    diameters = np.where(species == 0, 0.95, 1.4)
    return system.replace(species=species, diameters=diameters)


def relax_one(system):
    model = PairModel.build(system, resolve_potential(POTENTIAL, system.n_species))
    params = model.default_params(system.diameters)
    relaxer = make_relaxer(model, resolve_minimizer({"ftol": FTOL}), [params])
    with count_compiles() as names:
        result = relaxer.run(system.positions, params)
    return {"model": model, "params": params, "use_nl": relaxer.use_nl, "result": result,
            "compiled": list(names), "system": system}


@pytest.fixture(scope="module", params=[64, 256], ids=["N64-all-pairs", "N256-neighbor-list"])
def sweep(request):
    n = request.param
    a = random_packing(n, dim=2, phi=0.9, seed=0)
    b = packing_b(n)
    c = random_packing(n, dim=2, phi=0.85, seed=1)
    assert np.array_equal(a.box, b.box) and not np.array_equal(a.box, c.box)
    assert not np.array_equal(a.species, b.species)
    clear_compile_cache()
    fresh_b = relax_one(b)
    assert compile_cache_info()["entries"] >= 2
    clear_compile_cache()
    assert compile_cache_info() == {"entries": 0, "compiles": 0, "hits": 0, "compile_s": 0.0}
    out = {"n": n, "fresh_b": fresh_b, "a": relax_one(a)}
    info_a = compile_cache_info()
    out["b"] = relax_one(b)
    out["info_b"] = compile_cache_info()
    out["c"] = relax_one(c)
    out["info_c"] = compile_cache_info()
    out["info_a"] = info_a
    return out


@jax.jit
def energy_and_forces(model, y, params, pairs):
    """All-pairs energy and forces: an evaluation independent of the relaxer's."""
    e, g = jax.value_and_grad(model.energy)(y, params, pairs)
    return e, -g


def check_minimum(run):
    """Converged, and a minimum of its own model by an all-pairs evaluation."""
    model, params, result = run["model"], run["params"], run["result"]
    assert result.converged, result.message()
    e, f = energy_and_forces(model, jnp.asarray(result.positions), params,
                             Pairs.all_pairs(model.n))
    assert np.max(np.linalg.norm(np.asarray(f), axis=1)) <= FTOL * 1.0001
    assert result.energy == pytest.approx(float(e), rel=1e-12)


@pytest.mark.slow
def test_second_packing_compiles_nothing(sweep):
    assert sweep["a"]["use_nl"] == (sweep["n"] == 256)
    # the hook sees compilations: the first packing compiled the relaxation
    assert sweep["fresh_b"]["compiled"] and sweep["a"]["compiled"]
    assert sweep["a"]["result"].time_compile_s > 0
    b = sweep["b"]
    assert b["compiled"] == [], b["compiled"]
    assert b["result"].time_compile_s == 0
    assert sweep["info_b"]["compiles"] == sweep["info_a"]["compiles"]
    assert sweep["info_b"]["entries"] == sweep["info_a"]["entries"]
    assert sweep["info_b"]["hits"] >= sweep["info_a"]["hits"] + 2  # init and chunk


@pytest.mark.slow
def test_shared_compilation_gives_the_result_of_a_fresh_one(sweep):
    b, fresh = sweep["b"]["result"], sweep["fresh_b"]["result"]
    check_minimum(sweep["b"])
    assert b.steps == fresh.steps
    if jax.default_backend() == "cpu" and os.environ.get("SENSITIVITY_TEST_XLA_DEFAULTS"):
        assert np.array_equal(b.positions, fresh.positions)
    else:  # scatter-adds on accelerators are not ordered; and compiled without LLVM's
        # optimisation (the suite's default, tests/conftest.py) the two programs (their list
        # rebuilds differ in cell capacity) round differently after hundreds of steps, as in
        # test_fast_periodic.py
        np.testing.assert_allclose(b.positions, fresh.positions, rtol=0, atol=1e-9)
    assert b.energy == pytest.approx(fresh.energy, rel=1e-12, abs=0)
    # the test can fail: A's species or diameters would give B another energy
    a = sweep["a"]
    model_b, params_b = sweep["b"]["model"], sweep["b"]["params"]
    y = jnp.asarray(b.positions)
    pairs = Pairs.all_pairs(model_b.n)
    with_a_species = PairModel.build(sweep["b"]["system"].replace(
        species=a["system"].species), model_b.spec)
    e_species = float(energy_and_forces(with_a_species, y, params_b, pairs)[0])
    e_diameters = float(energy_and_forces(model_b, y, a["params"], pairs)[0])
    for e in (e_species, e_diameters):
        assert abs(e - b.energy) > 1e-6 * abs(b.energy)
    assert not np.allclose(b.positions, a["result"].positions)


def test_another_box_compiles_its_own(sweep):
    c = sweep["c"]
    assert c["compiled"] and c["result"].time_compile_s > 0
    assert sweep["info_c"]["compiles"] > sweep["info_b"]["compiles"]
    check_minimum(c)
    box_c = np.asarray(c["model"].box)
    assert np.all(c["result"].positions < box_c) and box_c[0] > sweep["a"]["model"].box[0]
