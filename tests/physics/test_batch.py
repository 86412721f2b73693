"""systems.batch: the decisions of a sweep that the command line only prints (the standard
library only: no jax here)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from sensitivity.systems.batch import StopSignals, Terminated, cache_directory, select_tasks
from sensitivity.systems.config import ConfigError, load_config


def test_cache_directory_follows_the_documented_order(tmp_path: Path, monkeypatch):
    for name in ("JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_directory() == tmp_path / "home" / ".cache" / "sensitivity" / "jax"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_directory() == tmp_path / "xdg" / "sensitivity" / "jax"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert cache_directory() == tmp_path / "jax"
    assert cache_directory("~/c") == tmp_path / "home" / "c"  # the option wins, ~ expanded
    for off in ("off", " OFF ", "none", "0", "false", ""):
        assert cache_directory(off) is None
    assert cache_directory(str(tmp_path / "c"), disabled=True) is None


def test_select_tasks_reads_the_slurm_array_index(tmp_path: Path, monkeypatch):
    (tmp_path / "p.h5").write_bytes(b"")
    (tmp_path / "c.yaml").write_text("system: {path: p.h5}\nsweep: {seed: [0, 1, 2]}\n")
    loaded = load_config(tmp_path / "c.yaml")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert [t.index for t in select_tasks(loaded, None)] == [0, 1, 2]
    assert [t.index for t in select_tasks(loaded, 2)] == [2]
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "")
    assert len(select_tasks(loaded, None)) == 3
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert [t.index for t in select_tasks(loaded, None)] == [1]
    assert [t.index for t in select_tasks(loaded, 0)] == [0]  # --task-index wins
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "x")
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID = 'x' is not a task number"):
        select_tasks(loaded, None)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    with pytest.raises(ConfigError, match="this config has 3 task"):
        select_tasks(loaded, None)


def test_stop_signals_raise_remember_and_restore():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as stopped:
        with StopSignals() as signals:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):  # the handler runs between bytecodes
                pass
    assert stopped.value.signum == signal.SIGTERM and signals.signum == signal.SIGTERM
    with pytest.raises(Terminated):
        signals.check()  # remembered, even if the exception had been swallowed
    assert signal.getsignal(signal.SIGTERM) is before
