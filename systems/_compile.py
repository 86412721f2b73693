"""The process's one cache of compiled physics functions (relaxation and response).

Every compiled function takes the packing's arrays as arguments and its settings as one
static, hashable object, so the key is ``(function, settings, argument structure, shapes,
dtypes, weak types)``: the tasks of a sweep that share the number of particles, the box,
the potential and the solver settings compile once. Executables are evicted least recently
used beyond :data:`CACHE_SIZE`, which bounds the memory of a sweep that recompiles (each
task of a sweep over N, say); a task needs about 8 (2-3 relaxation, ~6 response).

The time spent compiling is counted per ``owner`` (``"relax"``, ``"response"``) so that a
stage can report the compile seconds it caused (:func:`compile_seconds`).

Across processes, a function missing here is compiled by :mod:`systems._exports`: where
JAX's persistent compilation cache is on, its traced and lowered program is kept on disk
too, so a later process neither traces nor compiles it.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _exports

__all__ = ["CACHE_SIZE", "cache_info", "clear", "compile_seconds", "compiled", "device_array"]

CACHE_SIZE = 48

_ENTRIES: collections.OrderedDict[tuple, tuple[str, Any]] = collections.OrderedDict()
_STATS: dict[str, dict[str, float]] = {}
# A sweep relaxes upcoming packings in threads (:mod:`systems.relax_ahead`) while the main
# thread differentiates: _LOCK guards the table, and each key being compiled has a lock of its
# own (_PENDING), so a thread that needs the same function waits for that one executable while
# a thread that needs another (or a compiled one) goes on.
_LOCK = threading.Lock()
_PENDING: dict[tuple, threading.Lock] = {}


def device_array(value, dtype) -> jax.Array:
    """``jnp.asarray(value, dtype)`` without a device program for host values.

    ``jnp.asarray`` of a host value runs a small device program (jax 0.10: ``stage``, and
    ``convert_element_type`` for a Python scalar or another dtype), lowered, looked up in the
    persistent cache and loaded the first time per shape in every process: 10-30 ms each, a
    sizeable part of a small run's start-up. Host values are converted by NumPy here and
    copied by ``jax.device_put``, which runs no program; jax arrays (and tracers) go to
    ``jnp.asarray`` as before. The result is the same array, strongly typed.
    """
    if isinstance(value, jax.Array):
        return jnp.asarray(value, dtype)
    return jax.device_put(np.asarray(value, dtype))


def _counts(owner: str) -> dict[str, float]:
    return _STATS.setdefault(owner, {"compiles": 0, "hits": 0, "compile_s": 0.0})


def _aval_key(leaf) -> tuple:
    return (getattr(leaf, "shape", None), str(getattr(leaf, "dtype", type(leaf).__name__)),
            bool(getattr(leaf, "weak_type", False)))


def compiled(owner: str, fn: Callable, static: Any, *args) -> tuple[Any, float]:
    """``jit(partial(fn, static)).lower(*args).compile()``, shared by the process.

    Returns the executable and the seconds spent compiling it now (0.0 on a hit).
    """
    key = _key(fn, static, args)
    with _LOCK:
        exe = _hit(owner, key)
        if exe is not None:
            return exe, 0.0
        pending = _PENDING.setdefault(key, threading.Lock())
    with pending:  # one compilation per key: a second thread waits for the first's result
        with _LOCK:
            exe = _hit(owner, key)
        if exe is not None:
            return exe, 0.0
        try:
            t0 = time.perf_counter()
            exe = _exports.compile_function(fn, static, args)
            seconds = time.perf_counter() - t0
        finally:
            with _LOCK:
                _PENDING.pop(key, None)
                if exe is not None:
                    _ENTRIES[key] = (owner, exe)
                    while len(_ENTRIES) > CACHE_SIZE:
                        _ENTRIES.popitem(last=False)
                    counts = _counts(owner)
                    counts["compiles"] += 1
                    counts["compile_s"] += seconds
    return exe, seconds


def first_compilation(fn: Callable, static: Any, *args) -> bool:
    """Whether compiling ``fn`` for ``args`` will be a first compilation, not found in this
    process nor on disk (:func:`systems._exports.missing`): what makes starting the next
    function's compilation early (in a thread, from abstract arguments) worth it."""
    with _LOCK:
        if _key(fn, static, args) in _ENTRIES:
            return False
    return _exports.missing(fn, static, args)


def abstract_outputs(fn: Callable, static: Any, *args):
    """``fn(static, *args)``'s outputs as ``jax.ShapeDtypeStruct`` s, traced, not run: the
    arguments for compiling what takes them before they exist. As a compiled program returns
    them: strongly typed (a program loaded by :mod:`systems._exports` drops weak types) and
    committed to the arguments' device (the lowered program records its inputs' sharding, so
    the persistent cache's key would differ without it)."""
    device = next(iter(next(a for a in jax.tree.leaves(args)
                            if isinstance(a, jax.Array)).devices()))
    sharding = jax.sharding.SingleDeviceSharding(device)
    out = jax.eval_shape(functools.partial(fn, static), *args)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), out)


def _key(fn: Callable, static: Any, args: tuple) -> tuple:
    return (fn, static, jax.tree.structure(args),
            tuple(_aval_key(a) for a in jax.tree.leaves(args)))


def _hit(owner: str, key: tuple):
    """The cached executable of ``key`` (counted as a hit), or None; under _LOCK."""
    hit = _ENTRIES.get(key)
    if hit is None:
        return None
    _ENTRIES.move_to_end(key)
    _counts(owner)["hits"] += 1
    return hit[1]


def compile_seconds(owner: str) -> float:
    """Seconds this process has spent compiling ``owner``'s functions since its last clear."""
    return _counts(owner)["compile_s"]


def cache_info(owner: str) -> dict[str, Any]:
    """``{"entries", "compiles", "hits", "compile_s"}`` of ``owner`` since its last clear."""
    entries = sum(1 for who, _ in _ENTRIES.values() if who == owner)
    return {"entries": entries, **_counts(owner)}


def clear(owner: str) -> None:
    """Forget ``owner``'s executables and counts."""
    for key in [k for k, (who, _) in _ENTRIES.items() if who == owner]:
        del _ENTRIES[key]
    _STATS.pop(owner, None)
