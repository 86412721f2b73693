"""Running the tasks of a config: which to run, where JAX caches, stopping cleanly, what each left.

The command line parses its options and prints; what it decides with them lives here, so a
script driving a sweep decides the same way: the tasks a run selects (``--task-index`` or
Slurm's ``SLURM_ARRAY_TASK_ID``), the tasks a submission puts in its array, the table
``status`` prints, the JAX set-up of a process that runs physics (float64 and the persistent
compilation cache), SIGTERM/SIGINT turned into a clean stop, and a result file's figures as
plain data.

Only the standard library and PyYAML are imported at module level (no jax, no h5py).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from .config import ConfigError, LoadedConfig, Task

__all__ = ["StopSignals", "Terminated", "cache_directory", "result_record", "select_tasks",
           "setup_jax", "status_table", "submission_indices", "task_state", "STATES_SHOWN"]

#: Values of the cache setting that turn the persistent compilation cache off.
_CACHE_OFF = ("", "off", "none", "0", "false")


def array_index(task_index: int | None) -> int | None:
    """``task_index``, else ``$SLURM_ARRAY_TASK_ID`` as a number, else None (every task);
    for :func:`~systems.config.load_config`'s ``only``, then :func:`select_tasks`."""
    if task_index is not None:
        return task_index
    env = os.environ.get("SLURM_ARRAY_TASK_ID")
    if env is None or env == "":
        return None
    try:
        return int(env)
    except ValueError:
        raise ConfigError(
            f"SLURM_ARRAY_TASK_ID = {env!r} is not a task number; pass --task-index N"
        ) from None


def select_tasks(loaded: LoadedConfig, task_index: int | None) -> list[Task]:
    """The task ``task_index``, else ``$SLURM_ARRAY_TASK_ID``'s, else every task."""
    task_index = array_index(task_index)
    if task_index is None:
        return list(loaded.tasks)
    return [loaded.task(task_index)]


def task_state(task: Task):
    """The :class:`systems.tasks.TaskStatus` of a task (stdlib only: no jax, no h5py)."""
    from .tasks import task_status

    return task_status(task.directory, task.config)


def submission_indices(loaded: LoadedConfig, *, all_tasks: bool = False,
                       only_failed: bool = False, keep_failed: bool = False) -> list[int]:
    """The tasks a Slurm array should run: every one (``all_tasks``), else those not finished,
    not running and not queued by an earlier submission (``only_failed``: of those, the ones
    that ran)."""
    if all_tasks:
        return [task.index for task in loaded.tasks]
    from .slurm import queued_indices

    queued = queued_indices(loaded.output_directory)
    indices = []
    for task in loaded.tasks:
        status = task_state(task)
        if status.finished(keep_failed) or status.state == "running" or task.index in queued:
            continue
        if only_failed and status.state == "missing":
            continue
        indices.append(task.index)
    return indices


#: The states ``status`` counts, in the order it shows them.
STATES_SHOWN = ("done", "failed", "incomplete", "stale", "running", "missing")


def status_table(top: Path, tasks: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """One row per task of ``find_tasks(top)`` (index, folder relative to ``top``, state,
    reason, Slurm state of its array element) and the count of tasks in each state."""
    from .slurm import submitted_states
    from .tasks import task_status

    slurm_states = submitted_states(top)
    rows = []
    for task in tasks:
        status = task_status(task["directory"], config_sha256=task.get("config_sha256"))
        rows.append({
            "task": task["index"],
            "directory": os.path.relpath(task["directory"], top),
            "state": status.state,
            "reason": status.reason,
            "slurm": slurm_states.get(task["index"]),
        })
    counts = {name: sum(1 for r in rows if r["state"] == name) for name in STATES_SHOWN}
    return rows, counts


def result_record(path: Path) -> dict:
    """What a result file's stats block shows, as data (numpy and h5py imported here)."""
    from .io import read_result

    result = read_result(path)
    return {
        "result": str(path),
        "converged": bool(result.converged),
        "n": result.system.n,
        "dim": result.system.dim,
        "rattlers": int(sum(bool(r) for r in result.rattlers)),
        "relaxation": result.relaxation.to_attrs(),
        "responses": {name: r["report"].to_attrs() for name, r in result.responses.items()},
        "timings": result.timings,
    }


# ---------------------------------------------------------------------------------------------
# The process that runs physics


def cache_directory(cache_dir: str | None = None, *, disabled: bool = False) -> Path | None:
    """Where JAX's persistent compilation cache lives (None: off): ``cache_dir`` (``off``
    disables it), else ``$JAX_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME`` or
    ``~/.cache``, then ``sensitivity/jax``."""
    if disabled:
        return None
    if cache_dir is not None:
        if cache_dir.strip().lower() in _CACHE_OFF:
            return None
        return Path(cache_dir).expanduser()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sensitivity" / "jax"


def setup_jax(directory: Path | None, reporter=None) -> None:
    """Import jax (64-bit) and turn the persistent compilation cache on in ``directory``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if reporter is not None:
            reporter.warning(f"compilation cache off: cannot create {directory} ({error})")
        return
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # Cache every compilation: on small packings each one takes well under JAX's 1 s default.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    with contextlib.suppress(AttributeError, KeyError, ValueError):
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if reporter is not None:
        reporter.detail(f"JAX compilation cache: {directory}")


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM (Slurm's time limit) or SIGINT to stop cleanly."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGTERM and SIGINT as :class:`Terminated`, and remembered (a context manager).

    The handler raises in whatever the main thread runs, so cleanup handlers run. Python drops
    an exception raised inside a destructor or weakref callback ("Exception ignored in ..."),
    so the signal is also recorded: :meth:`check` raises it again at the points where a task
    would be declared complete and between tasks, and a command that received one never
    exits 0.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if self.signum is None:
            self.signum = signum
        raise Terminated(signum)

    def check(self) -> None:
        """Raise :class:`Terminated` if a signal arrived (even one whose exception was lost)."""
        if self.signum is not None:
            raise Terminated(self.signum)

    def __enter__(self) -> "StopSignals":
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread: nothing to install
                break
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        # A C extension can turn the handler's exception into its own error (matplotlib's
        # Agg: "Invalid bounding box"): after a signal, any failure is the stop.
        if isinstance(exc, Exception) and self.signum is not None:
            raise Terminated(self.signum) from exc
