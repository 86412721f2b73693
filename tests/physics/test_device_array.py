"""Host values reach the device without a device program (systems._compile.device_array),
and a small run loads only its own compiled functions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_pipeline import config_for

from sensitivity.systems import _compile, relax, response
from sensitivity.systems._compile import device_array
from sensitivity.systems.generate import random_packing
from sensitivity.systems.io import write_packing
from sensitivity.systems.pipeline import run_task

_LOWERED = "/jax/core/compile/jaxpr_to_mlir_module_duration"


def _lowered_during(fn):
    names = []

    def listener(event, duration, **kwargs):
        if event == _LOWERED:
            names.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        out = fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return out, names


# shapes no other test converts, so that jax's per-process caches cannot hide a program
# (jax.clear_caches() would, at the price of every later test of the worker recompiling)
CASES = [(np.arange(13), jnp.int32), (np.array([True, False] * 9), jnp.float64),
         (tuple(np.linspace(0.0, 1.0, 11)), jnp.float64),
         (np.ones((3, 17), np.float32), jnp.float64), (1.5, jnp.float64), (3, jnp.int64)]


def test_device_array_equals_asarray_and_runs_no_program():
    for value, dtype in CASES:
        out, lowered = _lowered_during(lambda: device_array(value, dtype))
        assert lowered == [], (value, dtype)
    for value, dtype in CASES:
        expected = jnp.asarray(value, dtype)
        out = device_array(value, dtype)
        assert out.dtype == expected.dtype and out.shape == expected.shape
        assert out.weak_type is False and expected.weak_type is False
        np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_jax_arrays_and_tracers_pass_through():
    x = jnp.arange(4.0)
    assert device_array(x, jnp.float64) is x or np.array_equal(device_array(x, jnp.float64), x)
    out = jax.jit(lambda t: device_array(t, jnp.float32))(x)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), np.arange(4.0))


@pytest.mark.slow
def test_a_run_lowers_only_its_own_compiled_functions(tmp_path, monkeypatch):
    """Every program a run lowers (each one is also a persistent-cache lookup and load at
    a warm start) is one of the physics functions it compiles on purpose, none an eager
    conversion or array operation."""
    path = tmp_path / "p.h5"
    # a size no other test uses: conversions of its arrays cannot be cached already
    write_packing(path, random_packing(23, dim=2, phi=0.9, seed=3))
    own = set()
    compiled = _compile.compiled

    def recording(owner, fn, static, *args):
        own.add(f"jit({fn.__name__})")
        return compiled(owner, fn, static, *args)

    monkeypatch.setattr(_compile, "compiled", recording)
    # without the compilation cache: with it, each physics function is lowered as a call of
    # its exported program (tests/physics/test_exports.py); conftest puts the option back
    jax.config.update("jax_compilation_cache_dir", None)
    relax.clear_compile_cache()
    response.clear_compile_cache()
    config = config_for(path, **{"sensitivity.audit": False})
    summary, lowered = _lowered_during(lambda: run_task(config, tmp_path / "out"))
    assert summary.converged, summary.message
    assert lowered and set(lowered) <= own, sorted(set(lowered) - own)
