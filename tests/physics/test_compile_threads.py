"""Compiled functions and relaxations shared by threads (a sweep's relax-ahead workers).

- ``systems._compile.compiled``: a key is compiled once however many threads ask for it at
  once, and a thread compiling one function does not hold up a thread that needs another
  (checked with a tracing that waits for the other thread: a process-wide lock deadlocks).
- ``systems.relax_ahead.RelaxAhead``: the first job runs alone, the others after it (the
  first packing's list and compiled functions serve them, as in a sweep run in turn).
- ``systems.contacts.pair_capacity``: a new bucket has head room; a count near it reuses it.
"""

import threading
import time

import jax.numpy as jnp
import numpy as np

from sensitivity.systems import _compile, relax_ahead
from sensitivity.systems.contacts import HEAD_ROOM, clear_capacities, pair_capacity

_TIMEOUT = 60.0


def _run_threads(*targets):
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread is stuck (a shared lock?)"


def test_one_key_is_compiled_once_by_concurrent_threads():
    traced = []

    def fn(static, x):
        traced.append(threading.current_thread().name)
        time.sleep(0.2)  # both threads ask while the first one traces
        return x * static

    x = jnp.arange(7.0)
    got = {}
    _run_threads(*(lambda k=k: got.setdefault(k, _compile.compiled("test-threads", fn, 3.0, x))
                   for k in range(2)))
    (exe_a, sec_a), (exe_b, sec_b) = got[0], got[1]
    assert len(traced) == 1 and exe_a is exe_b
    assert sorted([sec_a > 0, sec_b > 0]) == [False, True]  # one compiled, one waited
    np.testing.assert_array_equal(np.asarray(exe_a(x)), 3.0 * np.arange(7.0))
    info = _compile.cache_info("test-threads")
    assert info["compiles"] == 1 and info["hits"] == 1
    _compile.clear("test-threads")


def test_a_compilation_does_not_hold_up_another_function():
    other_done = threading.Event()

    def slow(static, x):  # traced only once the other thread has its executable
        assert other_done.wait(_TIMEOUT)
        return x + static

    def quick(static, x):
        return x - static

    x = jnp.arange(5.0)
    results = {}

    def first():
        results["slow"] = _compile.compiled("test-threads", slow, 1.0, x)[0](x)

    def second():
        time.sleep(0.1)  # the first thread is tracing by now
        results["quick"] = _compile.compiled("test-threads", quick, 1.0, x)[0](x)
        other_done.set()

    _run_threads(first, second)
    np.testing.assert_array_equal(np.asarray(results["slow"]), np.arange(5.0) + 1)
    np.testing.assert_array_equal(np.asarray(results["quick"]), np.arange(5.0) - 1)
    _compile.clear("test-threads")


def test_the_first_job_relaxes_alone(monkeypatch):
    spans, differentiated, asked = {}, {}, threading.Event()

    def fake(config, output_dir=None, stop=None, differentiate=None, relaxed_event=None):
        start = time.perf_counter()
        time.sleep(0.15 if config == 0 else 0.02)
        spans[config] = (start, time.perf_counter())
        if relaxed_event is not None:
            relaxed_event.set()
            # the first job's derivatives: the others go on meanwhile
            assert asked.wait(_TIMEOUT)
        if config == 4:
            time.sleep(0.3)  # relaxed once the first job has finished
        differentiated[config] = differentiate is None or differentiate()
        if config == 1:
            asked.set()
        return config

    monkeypatch.setattr(relax_ahead, "prepare_and_relax", fake)
    with relax_ahead.RelaxAhead([(k, k, None) for k in range(5)], 3) as ahead:
        assert [ahead.take(k) for k in range(5)] == list(range(5))
    first_end = spans[0][1]
    assert all(spans[k][0] >= first_end for k in range(1, 5))
    # the others do run side by side
    assert spans[1][0] < spans[2][1] and spans[2][0] < spans[1][1]
    # those relaxed before the first job finished leave their derivatives to the caller
    assert differentiated[0] and not differentiated[1] and differentiated[4]


def test_a_stopped_sweep_does_not_start_the_waiting_jobs(monkeypatch):
    started = []
    release = threading.Event()

    def fake(config, output_dir=None, stop=None, *more):
        started.append(config)
        release.wait(_TIMEOUT)
        return config

    monkeypatch.setattr(relax_ahead, "prepare_and_relax", fake)
    ahead = relax_ahead.RelaxAhead([(k, k, None) for k in range(3)], 2)
    time.sleep(0.1)
    threading.Timer(0.1, release.set).start()
    ahead.close()  # stops before the first job ends: the others never start
    assert started == [0]


def test_pair_capacity_head_room():
    clear_capacities()
    n = 256  # step 32
    first = pair_capacity(1184, n, "test")
    assert first % 32 == 0 and first >= 1184 * (1 + HEAD_ROOM)
    assert first - 32 < 1184 * (1 + HEAD_ROOM)
    # counts a few per cent either side share the bucket
    assert {pair_capacity(c, n, "test") for c in (1143, 1193, 1240)} == {first}
    assert pair_capacity(first + 1, n, "test") > first
    assert pair_capacity(100, n, "test") < first  # far below: a bucket of its own
    clear_capacities()
