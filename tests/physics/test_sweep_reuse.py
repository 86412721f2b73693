"""Tasks of one sweep in one process compile nothing after the first (issue 5): the second
packing of the same N, potential and box reuses every compiled function, and gets the same
answer as a process that never saw the first packing."""

import jax
import numpy as np
import pytest
from test_pipeline import config_for

from sensitivity import systems  # noqa: F401
from sensitivity.systems import response
from sensitivity.systems.generate import random_packing
from sensitivity.systems.io import read_result, write_packing
from sensitivity.systems.pipeline import run_task


class CompileCounter:
    """Counts XLA compilations and traces reported through jax.monitoring."""

    def __init__(self):
        self.events = 0
        self.on = False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, name, seconds, **kwargs):
        if self.on and name in ("/jax/core/compile/backend_compile_duration",
                                "/jax/core/compile/jaxpr_trace_duration"):
            self.events += 1

    def count(self, fn):
        self.events, self.on = 0, True
        try:
            out = fn()
        finally:
            self.on = False
        return out, self.events


COUNTER = CompileCounter()


def _packings(tmp_path, n, seeds):
    paths = []
    for seed in seeds:
        system = random_packing(n, dim=2, phi=0.9, seed=seed)
        if seed % 2:  # another species assignment and other diameters: nothing may leak
            rng = np.random.default_rng(seed)
            order = rng.permutation(system.n)
            system = system.replace(species=system.species[order],
                                    diameters=system.diameters[order])
        path = tmp_path / f"p{seed}.h5"
        write_packing(path, system)
        paths.append(path)
    return paths


@pytest.mark.parametrize("n", [40, 160], ids=["dense-pairs", "neighbor-list"])
@pytest.mark.slow
def test_second_task_compiles_nothing_and_matches_a_fresh_process(tmp_path, n):
    first, second = _packings(tmp_path, n, [2, 3])

    def run(path, name):
        config = config_for(path, **{"sensitivity.audit": False})
        return run_task(config, tmp_path / name)

    summary, _ = COUNTER.count(lambda: run(first, "first"))
    assert summary.converged, summary.message
    summary, events = COUNTER.count(lambda: run(second, "second"))
    assert summary.converged, summary.message
    assert events == 0, f"the second task compiled or traced {events} times"
    warm = read_result(tmp_path / "second" / "sensitivity.h5")
    assert warm.timings["time_compile_s"] == 0.0

    # the same packing in a cleared cache: the same numbers (no stale species, pairs or box)
    response.clear_compile_cache()
    from sensitivity.systems import relax
    relax.clear_compile_cache()
    summary = run(second, "fresh")
    fresh = read_result(tmp_path / "fresh" / "sensitivity.h5")
    assert fresh.timings["time_compile_s"] > 0.0
    for name in ("small_diameter", "box"):
        a = warm.responses[name]["dx_dtheta"]
        b = fresh.responses[name]["dx_dtheta"]
        assert np.array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_a_sweep_over_epsilon_compiles_nothing_after_the_first_task(tmp_path):
    """ε reaches compiled code as a traced parameter: a sweep over potential.epsilon once
    recompiled every task (and grew 19 MB per task). The compiled code must still see each
    task's ε: with one species E is ε times a function of x, so x* and dx*/dσ are the same
    for ε = 1 and 2 and dx*/dε is zero, while the energy doubles."""
    (path,) = _packings(tmp_path, 40, [4])

    def run(epsilon, name):
        config = config_for(path, **{"sensitivity.audit": False,
                                     "potential.epsilon": epsilon})
        config["parameters"] = [{"name": "eps", "kind": "epsilon", "species": None},
                                {"name": "small_diameter", "kind": "diameter", "species": 0}]
        return run_task(config, tmp_path / name)

    summary, _ = COUNTER.count(lambda: run(1.0, "one"))
    assert summary.converged, summary.message
    summary, events = COUNTER.count(lambda: run(2.0, "two"))
    assert summary.converged, summary.message
    assert events == 0, f"the second ε compiled or traced {events} times"
    one = read_result(tmp_path / "one" / "sensitivity.h5")
    two = read_result(tmp_path / "two" / "sensitivity.h5")
    assert two.responses["eps"]["report"].theta == 2.0
    d1 = one.responses["small_diameter"]["dx_dtheta"]
    d2 = two.responses["small_diameter"]["dx_dtheta"]
    np.testing.assert_allclose(d2, d1, rtol=1e-6, atol=1e-9)  # x*(σ) does not depend on ε
    assert np.nanmax(np.abs(two.responses["eps"]["dx_dtheta"])) < 1e-8
    assert two.relaxation.energy == pytest.approx(2 * one.relaxation.energy, rel=1e-6)
