"""Relaxing the next tasks of a sweep in threads while the current one is finished.

A sweep run in one process spends most of each task relaxing (FIRE in a compiled loop that
releases the GIL) and the rest differentiating, checking and writing. :class:`RelaxAhead`
reads and relaxes the next tasks in worker threads, one per usable CPU (at most
:data:`MAX_WORKERS`; ``SENSITIVITY_RELAX_THREADS=N`` sets N, 0 turns them off), while the
main thread runs the current task's remaining stages: each task is still run, locked and
marked complete in order by the caller (:func:`systems.tasks.run_in_folder`), and the
progress reports of what a worker did are replayed when its turn comes, so the output reads
as before.

Why threads and not one batched (``vmap``) relaxation: on a CPU a FIRE step at N = 256 is
not dispatch-bound; its cost grows with the number of pairs (the force: 31 µs at N = 256,
421 µs at N = 2,048), and a vmapped force over 8 packings cost 14× one packing's. Threads
use the other cores instead, and a packing relaxed in a thread runs the same compiled
programs on the same inputs as alone: the same result, bit for bit
(``tests/physics/test_relax_ahead.py``).

The first job relaxes alone: it allocates the process's first neighbor list and compiles
(or loads from the persistent cache) the relaxation's functions; the others start once it has
relaxed, from its list as their template and with its compiled functions, as tasks run one
after the other do. Started together, a second task could allocate a list of its own first
(other capacities, so other shapes): a compilation that missed the persistent cache, seconds
at N = 256, taken or not from run to run.

A small packing (:data:`COMPUTE_MAX_N`) is differentiated in the worker as well, once the
first job has loaded the derivatives' functions (a job relaxed before that leaves its
derivatives to the caller, as before): the caller is then left with writing and marking
each task, and every core works on the tasks, where the caller's derivatives used to be the
sweep's bottleneck. The same compiled functions on the same inputs: the same results.

Anything a worker raises (a bad input file, a neighbor list that keeps overflowing) is
dropped: :meth:`RelaxAhead.take` returns None and the task runs on its usual path, which
raises the same error in its own folder. A task whose input file changed since a worker
read it is read and relaxed again (:meth:`Prepared.current`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Hashable, Iterable, Mapping

__all__ = ["COMPUTE_MAX_N", "LOOK_AHEAD", "MAX_THREADS", "MAX_WORKERS", "THREADS_ENV",
           "Prepared", "RelaxAhead", "prepare_and_relax", "workers_for"]

#: Worker threads at most by default (each relaxes one packing at a time) ...
MAX_WORKERS = 4
#: ... and at most when ``SENSITIVITY_RELAX_THREADS`` asks (each thread holds a packing and
#: :data:`LOOK_AHEAD` more wait: a huge value must not allocate a sweep's worth of packings).
MAX_THREADS = 64
#: Jobs relaxed ahead beyond those running: the workers go on while the caller is slower
#: than they are (above all while it compiles the first task's derivatives, a second or
#: more, when a packing of a few hundred particles relaxes in a tenth of one). A waiting
#: result holds the task's arrays and its relaxed positions (kilobytes at N = 256, a few MB
#: at N = 65,536).
LOOK_AHEAD = 8
#: Up to this many particles a worker also differentiates the packing (the derivatives,
#: the diagnostics, an audit): for small packings they cost about half as much as the
#: relaxation, and the caller, left with writing, is no longer the sweep's bottleneck. A
#: waiting result then holds the response solver too (its Hessian and preconditioner).
COMPUTE_MAX_N = 4096


class _Stopped(Exception):
    """Raised in a worker by its progress callback once the sweep stops."""


@dataclasses.dataclass
class Prepared:
    """A task read and relaxed ahead: what :func:`systems.pipeline.run_task` takes as
    ``prepared``. ``reports``: the ``progress(event, **fields)`` calls made meanwhile, as
    ``(event, fields)``. ``computed``: for a packing of at most :data:`COMPUTE_MAX_N`
    particles, what :func:`systems.pipeline._compute` returned (the derivatives too), else
    None (the relaxation only). ``time_s``: the seconds the worker spent on it (reading,
    relaxing, differentiating), part of the task's ``time_total_s``."""

    task: Any  # systems.pipeline._Task
    relaxed: Any  # systems.relax.RelaxResult
    reports: list
    computed: tuple | None = None
    time_s: float = 0.0

    def replay(self, progress=None):
        """The relaxation's result, after calling ``progress`` with its reports."""
        for event, fields in self.reports if progress is not None else ():
            progress(event, **fields)
        return self.relaxed

    def current(self) -> bool:
        """Whether the input file is still the one read (else the task is read again)."""
        from .tasks import file_sha256

        try:
            return file_sha256(self.task.input_path) == self.task.input_sha256
        except OSError:
            return False


def prepare_and_relax(config: Mapping[str, Any], output_dir=None,
                      stop: threading.Event | None = None, differentiate=None,
                      relaxed_event: threading.Event | None = None) -> Prepared:
    """Read the task of ``config`` and relax it, as :func:`~systems.pipeline.run_task` would;
    a packing of at most :data:`COMPUTE_MAX_N` particles is differentiated as well where
    ``differentiate()`` (called once relaxed; None: always) is true. ``relaxed_event`` is
    set once the relaxation is done."""
    from .pipeline import _differentiate, _prepare, _relax

    t0 = time.perf_counter()
    reports: list = []

    def progress(event, **fields):
        if stop is not None and stop.is_set():
            raise _Stopped()
        reports.append((event, fields))

    task = _prepare(config, for_audit=False, output_dir=output_dir)
    try:
        relaxed = _relax(task, progress)
    finally:
        if relaxed_event is not None:
            relaxed_event.set()
    if task.system.n > COMPUTE_MAX_N or not (differentiate is None or differentiate()):
        return Prepared(task, relaxed, reports, time_s=time.perf_counter() - t0)
    computed = (relaxed, None, None, None)
    if relaxed.converged:  # with the arguments of run_task's own call
        computed = (relaxed, *_differentiate(task, relaxed, progress,
                                             audit=bool(task.settings["audit"]), stream=True))
    return Prepared(task, relaxed, reports, computed, time_s=time.perf_counter() - t0)


#: Environment variable: the number of worker threads (0: relax each task in turn, in the
#: main thread, as a single task is).
THREADS_ENV = "SENSITIVITY_RELAX_THREADS"


def workers_for(tasks: int) -> int:
    """Worker threads for a run of ``tasks`` tasks: none for one task, else
    ``$SENSITIVITY_RELAX_THREADS`` if set, else one per usable CPU, at most
    :data:`MAX_WORKERS`; never more than ``tasks``.

    Raises:
      ConfigError: the variable is not a whole number from 0 to :data:`MAX_THREADS`.
    """
    text = os.environ.get(THREADS_ENV, "").strip()
    if text:
        try:
            wanted = int(text)
        except ValueError:
            wanted = -1
        if not 0 <= wanted <= MAX_THREADS:
            from .config import ConfigError

            raise ConfigError(f"{THREADS_ENV} = {text!r}: expected a whole number from 0 to "
                              f"{MAX_THREADS} (0 relaxes the tasks one after the other)")
    else:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        wanted = min(cpus, MAX_WORKERS)
    return 0 if tasks < 2 else max(0, min(wanted, tasks))


class RelaxAhead:
    """Relaxes ``jobs`` (``(key, config, output_dir)``, in the order they will be taken)
    ahead of the caller, ``workers`` at a time and up to :data:`LOOK_AHEAD` more waiting; a
    context manager.

    :meth:`take` returns a job's :class:`Prepared` (waiting for it) or None; leaving the
    context stops the workers at their next progress report and waits for them.
    """

    def __init__(self, jobs: Iterable[tuple[Hashable, Mapping[str, Any], Any]], workers: int):
        self._queue = list(jobs)
        self._futures: dict[Hashable, Future] = {}
        self._ahead = max(1, int(workers)) + LOOK_AHEAD
        self._stop = threading.Event()
        # the first job relaxed; finished (both set when the sweep stops)
        self._lead_relaxed, self._lead_done = threading.Event(), threading.Event()
        self._led = False  # the first job was submitted
        self._pool = ThreadPoolExecutor(max(1, int(workers)), thread_name_prefix="relax-ahead")
        self._fill()

    def _fill(self) -> None:
        while self._queue and len(self._futures) < self._ahead:
            key, config, output_dir = self._queue.pop(0)
            lead, self._led = not self._led, True
            if lead:
                future = self._pool.submit(prepare_and_relax, config, output_dir, self._stop,
                                           None, self._lead_relaxed)
                # (also where the first job raised before it relaxed)
                future.add_done_callback(lambda _: (self._lead_relaxed.set(),
                                                    self._lead_done.set()))
            else:
                future = self._pool.submit(self._follow, config, output_dir, self._stop)
            self._futures[key] = future

    def _follow(self, config, output_dir, stop: threading.Event) -> Prepared:
        self._lead_relaxed.wait()
        if stop.is_set():
            raise _Stopped()
        # differentiated here once the first job has loaded the derivatives' functions;
        # relaxed only before that (the caller then differentiates, the functions loaded)
        return prepare_and_relax(config, output_dir, stop, self._lead_done.is_set)

    def take(self, key: Hashable) -> Prepared | None:
        """The job ``key`` read and relaxed, or None (not submitted, or it raised)."""
        future = self._futures.pop(key, None)
        self._fill()
        if future is None:
            return None
        try:
            return future.result()
        except Exception:  # the task's own path raises it again where it is reported
            return None

    def close(self) -> None:
        self._stop.set()
        self._lead_relaxed.set()
        self._lead_done.set()
        self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()

    def __enter__(self) -> "RelaxAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
