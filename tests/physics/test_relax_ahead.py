"""A sweep's tasks relaxed ahead in threads give what each task gives run alone.

Reference: ``run_task`` of the same config with nothing prepared (read and relaxed in the
calling thread), after the threads ran; compared bit for bit (positions, steps, energy, the
Jacobian) and in the progress reports the user sees.
"""

import threading

import numpy as np
import pytest

from sensitivity import systems  # noqa: F401
from sensitivity.systems.generate import random_packing
from sensitivity.systems.io import read_result, write_packing
from sensitivity.systems.pipeline import run_task
from sensitivity.systems.relax_ahead import RelaxAhead, workers_for

from _physics import task_config


def _events():
    seen = []

    def progress(event, **fields):
        fields.pop("time_s", None)
        seen.append((event, fields))
    return seen, progress


@pytest.mark.slow
def test_relaxed_ahead_in_threads_equals_each_task_alone(tmp_path):
    configs = []
    for seed, n in enumerate([40, 40, 48, 40]):  # two shapes: the threads share compiles
        path = tmp_path / f"p{seed}.h5"
        write_packing(path, random_packing(n, dim=2, phi=0.9, seed=seed))
        configs.append(task_config(path))
    ahead_runs = []
    with RelaxAhead([(k, c, tmp_path / f"a{k}") for k, c in enumerate(configs)], 2) as ahead:
        for k, config in enumerate(configs):
            prepared = ahead.take(k)
            assert prepared is not None and prepared.relaxed.converged
            seen, progress = _events()
            summary = run_task(config, tmp_path / f"a{k}", progress=progress,
                               prepared=prepared)
            ahead_runs.append((summary, seen))
    for k, config in enumerate(configs):
        seen, progress = _events()
        alone = run_task(config, tmp_path / f"s{k}", progress=progress)
        summary, ahead_seen = ahead_runs[k]
        assert summary.converged and alone.converged
        a, b = read_result(summary.result_path), read_result(alone.result_path)
        assert np.array_equal(a.system.positions, b.system.positions)
        ra, rb = a.relaxation.to_attrs(), b.relaxation.to_attrs()
        for key in ("steps", "energy", "max_force", "stop_reason"):
            assert ra[key] == rb[key], key
        assert np.array_equal(a.responses["diameters"]["dx_dtheta"],
                              b.responses["diameters"]["dx_dtheta"], equal_nan=True)
        relax_reports = [f for e, f in ahead_seen if e == "relax"]
        assert relax_reports and relax_reports == [f for e, f in seen if e == "relax"]
        assert [e for e, _ in ahead_seen] == [e for e, _ in seen]


def test_a_failing_task_runs_on_its_own_path_and_workers_stop(tmp_path):
    bad = task_config(tmp_path / "missing.h5")
    good_path = tmp_path / "p.h5"
    write_packing(good_path, random_packing(40, dim=2, phi=0.9, seed=0))
    with RelaxAhead([(0, bad, tmp_path / "a0"), (1, task_config(good_path), None)], 1) as ahead:
        assert ahead.take(0) is None  # the task's own run reports the missing file
        assert ahead.take(7) is None  # never submitted
    # leaving the context stopped the workers: the second job ran or was cancelled
    assert not any(t.name.startswith("relax-ahead") for t in threading.enumerate())

@pytest.mark.slow
def test_an_input_changed_after_it_was_read_ahead_is_read_again(tmp_path):
    path = tmp_path / "p.h5"
    write_packing(path, random_packing(40, dim=2, phi=0.9, seed=0))
    config = task_config(path)
    with RelaxAhead([(0, config, tmp_path / "a")], 1) as ahead:
        prepared = ahead.take(0)
    assert prepared is not None and prepared.current()
    write_packing(path, random_packing(40, dim=2, phi=0.9, seed=5))  # another packing
    assert not prepared.current()
    got = read_result(run_task(config, tmp_path / "a", prepared=prepared).result_path)
    fresh = read_result(run_task(config, tmp_path / "b").result_path)
    assert np.array_equal(got.system.positions, fresh.system.positions)
    assert not np.allclose(got.system.positions, prepared.relaxed.positions)


def test_worker_count_and_its_environment_variable(monkeypatch):
    from sensitivity.systems.config import ConfigError

    monkeypatch.delenv("SENSITIVITY_RELAX_THREADS", raising=False)
    assert workers_for(1) == 0 and 1 <= workers_for(32) <= 4
    monkeypatch.setenv("SENSITIVITY_RELAX_THREADS", "0")
    assert workers_for(32) == 0
    monkeypatch.setenv("SENSITIVITY_RELAX_THREADS", " 3 ")
    assert workers_for(32) == 3 and workers_for(2) == 2 and workers_for(1) == 0
    monkeypatch.setenv("SENSITIVITY_RELAX_THREADS", "64")
    assert workers_for(100) == 64
    for bad in ("-1", "two", "1.5", "65", "10" * 30):
        monkeypatch.setenv("SENSITIVITY_RELAX_THREADS", bad)
        with pytest.raises(ConfigError, match="SENSITIVITY_RELAX_THREADS = .*whole number"):
            workers_for(32)


def test_a_task_differentiated_in_a_worker_equals_the_task_alone(tmp_path):
    from sensitivity.systems.relax_ahead import prepare_and_relax

    path = tmp_path / "p.h5"
    write_packing(path, random_packing(40, dim=2, phi=0.9, seed=3))
    config = task_config(path)
    worker = {}
    thread = threading.Thread(target=lambda: worker.setdefault(
        "prepared", prepare_and_relax(config, tmp_path / "a")))
    thread.start()
    thread.join(120)
    prepared = worker["prepared"]
    assert prepared.computed is not None  # the derivatives too (N = 40)
    seen_ahead, progress = _events()
    ahead = read_result(run_task(config, tmp_path / "a", progress=progress,
                                 prepared=prepared).result_path)
    seen, progress = _events()
    alone = read_result(run_task(config, tmp_path / "b", progress=progress).result_path)
    assert np.array_equal(ahead.system.positions, alone.system.positions)
    for name in alone.responses:
        assert np.array_equal(ahead.responses[name]["dx_dtheta"],
                              alone.responses[name]["dx_dtheta"], equal_nan=True)
    assert np.array_equal(ahead.rattlers, alone.rattlers)
    # the total counts the worker's time too: no less than the stages it holds (it had
    # read 0.0004 s for a relaxation of 0.1 s, only the caller's writing)
    for result in (ahead, alone):
        t = result.timings
        assert t["time_total_s"] >= (t["time_relax_s"] + t["time_sensitivity_s"]
                                     + t["time_setup_s"] + t["time_diagnostics_s"]), t
    assert ahead.timings["time_total_s"] >= prepared.time_s > ahead.timings["time_relax_s"]
    assert [e for e, _ in seen_ahead] == [e for e, _ in seen]
    strip = {"time_s", "time_compile_s", "path"}
    assert ([(e, {k: v for k, v in f.items() if k not in strip}) for e, f in seen_ahead]
            == [(e, {k: v for k, v in f.items() if k not in strip}) for e, f in seen])
