"""A task's output folder: what it holds, who is writing it, and whether it is complete.

One task of ``sensitivity run`` writes, in its folder: ``sensitivity.h5`` (the result),
``config.yaml`` (the resolved config), ``plots/`` (when asked) and, last of all,
``complete.json``, the completion marker. The marker records what made the artifacts (the
digest of the config that decides the result, the SHA-256 of every input file) and each
artifact's size and modification time, whether the task converged and its message.

A task is **done** only when its marker exists, its config and inputs still match, every
artifact it lists is in place unchanged, and it converged. Otherwise it is

- ``missing``: never run (nothing in the folder);
- ``incomplete``: stopped before its marker was written (killed, disk full, an artifact
  removed or replaced since);
- ``stale``: complete, but for another config or another version of an input file;
- ``failed``: complete but not converged (``--keep-failed`` counts it as finished);
- ``running``: another process holds the folder's lock.

Writers hold an exclusive lock (``fcntl.flock`` on ``.sensitivity.lock``) for the whole task,
so two runs never write one folder; the marker is removed before any artifact is replaced and
written after all of them, so a process killed between any two lines leaves a task that is
either complete or not counted complete.

Only the standard library is imported here (no jax, no h5py): ``status`` stays instant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ._atomic import atomic_write_text, remove_stale_temporaries
from ._errors import InputError

__all__ = [
    "CONFIG_NAME",
    "MARKER_NAME",
    "PLOTS_NAME",
    "RESULT_NAME",
    "TaskBusy",
    "TaskStatus",
    "comparable_config",
    "config_digest",
    "file_sha256",
    "lock_task",
    "mark_complete",
    "mark_started",
    "task_status",
]

RESULT_NAME = "sensitivity.h5"
CONFIG_NAME = "config.yaml"
PLOTS_NAME = "plots"  # the figures of a task, and of `sensitivity plot` beside a result
MARKER_NAME = "complete.json"
LOCK_NAME = ".sensitivity.lock"
MARKER_FORMAT = "sensitivity-task"
#: Files of a task folder whose leftover temporaries a lock holder may remove.
OWNED_NAMES = (RESULT_NAME, CONFIG_NAME, MARKER_NAME)

STATES = ("done", "failed", "incomplete", "stale", "missing", "running")


class TaskBusy(InputError):
    """Another process holds the task folder's lock."""


# ---------------------------------------------------------------------------------------------
# What decides a result


def comparable_config(config: Mapping[str, Any]) -> dict:
    """The config less where it is written and how it is queued (``output.directory``,
    ``slurm``): what decides a task's result."""
    plain = json.loads(json.dumps(config, default=str))
    plain.pop("slurm", None)
    if isinstance(plain.get("output"), dict):
        plain["output"].pop("directory", None)
    return plain


def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 of :func:`comparable_config` in canonical JSON."""
    text = json.dumps(comparable_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


_DIGESTS: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes, remembered per (path, size, mtime, inode)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    digest = _DIGESTS.get(key)
    if digest is None:
        hasher = hashlib.sha256()
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                hasher.update(chunk)
        digest = _DIGESTS[key] = hasher.hexdigest()
        if len(_DIGESTS) > 4096:
            _DIGESTS.pop(next(iter(_DIGESTS)))
    return digest


def input_paths(config: Mapping[str, Any]) -> list[str]:
    """The input files a task reads."""
    path = (config.get("system") or {}).get("path")
    return [str(path)] if path else []


def input_digests(config: Mapping[str, Any]) -> dict[str, str]:
    """``{path: sha256}`` of every input file (``"missing"`` for one that cannot be read)."""
    out = {}
    for path in input_paths(config):
        try:
            out[path] = file_sha256(path)
        except OSError:
            out[path] = "missing"
    return out


# ---------------------------------------------------------------------------------------------
# The lock


def _holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["time"])))
        return f"pid {info['pid']} on {info['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def lock_task(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold the task folder's exclusive lock; :class:`TaskBusy` if another process has it.

    Inside the lock, leftover temporaries of a killed writer of this folder's artifacts are
    removed (nobody else can be writing them). The lock file itself is never deleted (deleting
    it would let two processes lock two different files of the same name).
    """
    import fcntl

    directory = Path(directory)
    lock_path = directory / LOCK_NAME
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise TaskBusy(
                    f"{directory}: this task folder is being written by another sensitivity "
                    f"run ({_holder(lock_path)}); wait for it to finish, or give another "
                    "output.directory"
                ) from None
            raise
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "time": time.time()})
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, record.encode(), 0)
        remove_stale_temporaries(directory, OWNED_NAMES)
        yield lock_path
    finally:
        os.close(descriptor)  # releases the lock


def is_locked(directory: str | os.PathLike) -> bool:
    """Whether another process holds the folder's lock now."""
    import fcntl

    lock_path = Path(directory) / LOCK_NAME
    try:
        descriptor = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(descriptor)
    return False


# ---------------------------------------------------------------------------------------------
# The marker


def mark_started(directory: str | os.PathLike) -> None:
    """Forget that the task was complete: remove the marker before any artifact changes."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(directory) / MARKER_NAME)


def _stamp(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def mark_complete(
    directory: str | os.PathLike,
    config: Mapping[str, Any],
    *,
    artifacts: Iterable[str | os.PathLike],
    converged: bool,
    message: str = "",
    exit_code: int = 0,
    inputs: Mapping[str, str] | None = None,
) -> Path:
    """Write the completion marker (atomically), after every artifact is in place.

    Args:
        artifacts: the files the task wrote (inside ``directory``).
        inputs: ``{path: sha256}`` of the inputs as they were read (default: hashed now).
    """
    directory = Path(directory)
    stamps = {}
    for artifact in artifacts:
        path = Path(artifact)
        stamps[os.path.relpath(path, directory)] = _stamp(path)
    marker = {
        "format": MARKER_FORMAT,
        "version": 1,
        "config_sha256": config_digest(config),
        "inputs": dict(inputs) if inputs is not None else input_digests(config),
        "artifacts": stamps,
        "converged": bool(converged),
        "exit_code": int(exit_code),
        "message": str(message),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    return atomic_write_text(directory / MARKER_NAME, json.dumps(marker, indent=1) + "\n")


def read_marker(directory: str | os.PathLike) -> dict | None:
    """The marker as a dict, or None when absent or unreadable."""
    try:
        marker = json.loads((Path(directory) / MARKER_NAME).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return None
    return marker


@dataclasses.dataclass(frozen=True)
class TaskStatus:
    """Where a task stands (see the module docstring).

    Attributes:
        state: one of ``done``, ``failed``, ``incomplete``, ``stale``, ``missing``, ``running``.
        reason: one line saying why (empty for ``done``).
        marker: the completion marker, when one was read.
    """

    state: str
    reason: str = ""
    marker: dict | None = None

    def finished(self, keep_failed: bool = False) -> bool:
        """Nothing to recompute: done, or failed with ``keep_failed``."""
        return self.state == "done" or (keep_failed and self.state == "failed")


def task_status(
    directory: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    *,
    config_sha256: str | None = None,
) -> TaskStatus:
    """The status of the task whose folder is ``directory``.

    Args:
        config: the task's resolved config, to check the marker against (or give its
            ``config_sha256``); with neither, the config is not compared.
    """
    directory = Path(directory)
    if is_locked(directory):
        return TaskStatus("running", f"{_holder(directory / LOCK_NAME)} holds its lock")
    marker = read_marker(directory)
    if marker is None:
        if (directory / MARKER_NAME).exists():
            return TaskStatus("incomplete", f"{MARKER_NAME} is unreadable")
        if (directory / RESULT_NAME).exists() or (directory / CONFIG_NAME).exists():
            return TaskStatus("incomplete", "stopped before it finished (no completion marker)")
        return TaskStatus("missing", "not run yet")
    wanted = config_sha256 or (config_digest(config) if config is not None else None)
    if wanted is not None and marker.get("config_sha256") != wanted:
        return TaskStatus("stale", "the config changed since it ran", marker)
    for path, digest in (marker.get("inputs") or {}).items():
        try:
            now = file_sha256(path)
        except OSError:
            return TaskStatus("stale", f"input {path} is gone", marker)
        if now != digest:
            return TaskStatus("stale", f"input {path} changed since it ran", marker)
    for name, stamp in (marker.get("artifacts") or {}).items():
        path = directory / name
        try:
            if _stamp(path) != stamp:
                return TaskStatus("incomplete", f"{name} changed since it was written", marker)
        except OSError:
            return TaskStatus("incomplete", f"{name} is missing", marker)
    if not marker.get("converged"):
        return TaskStatus("failed", marker.get("message") or "did not converge", marker)
    return TaskStatus("done", "", marker)


# ---------------------------------------------------------------------------------------------
# Running a task in its folder


@dataclasses.dataclass(frozen=True)
class TaskOutcome:
    """What :func:`run_in_folder` left in a task's folder (its marker records the same)."""

    result_path: Path
    converged: bool
    message: str  # one line; empty when converged
    artifacts: tuple[Path, ...]


def _fields(summary: Any) -> dict:
    """The fields of what a ``run`` returned (a dataclass such as TaskSummary, or a dict)."""
    if summary is None:
        return {}
    if isinstance(summary, Mapping):
        return dict(summary)
    if dataclasses.is_dataclass(summary):
        return {f.name: getattr(summary, f.name) for f in dataclasses.fields(summary)}
    return dict(getattr(summary, "__dict__", {}))


def run_in_folder(
    config: Mapping[str, Any],
    directory: str | os.PathLike,
    run,
    *,
    before_complete=None,
    not_converged_code: int = 1,
) -> TaskOutcome:
    """Run one task in its folder, in the order that keeps the folder honest.

    Prove the folder writable, lock it, forget its completion, ``run(config, directory)``
    (computes and writes the result and plots), write ``config.yaml``, call
    ``before_complete()`` (a last chance to refuse, e.g. a signal whose exception was lost),
    and only then write the marker. A crash or signal anywhere before the marker leaves the
    task counted as not complete.

    Raises:
        StorageError, InputError, ConvergenceError: from the run or a write; nothing is
        marked complete.
    """
    from ._atomic import ensure_writable_folder
    from .config import dump_yaml

    directory = Path(directory)
    ensure_writable_folder(directory, replaces=OWNED_NAMES)
    with lock_task(directory):
        mark_started(directory)
        inputs = input_digests(config)  # as they were read, before the run
        fields = _fields(run(config, directory))
        # Written after the run, so that it always describes the result file beside it.
        config_path = atomic_write_text(directory / CONFIG_NAME, dump_yaml(config))
        result_path = Path(fields.get("result_path") or directory / RESULT_NAME)
        converged = bool(fields.get("converged"))
        message = " ".join(str(fields.get("message") or "").split())
        if not converged and not message:
            message = "did not converge (see the stats above)"
        artifacts = (result_path, config_path, *map(Path, fields.get("plot_paths") or ()))
        if before_complete is not None:
            before_complete()
        mark_complete(directory, config, artifacts=artifacts, converged=converged,
                      message=message, exit_code=0 if converged else not_converged_code,
                      inputs=inputs)
    return TaskOutcome(result_path, converged, "" if converged else message, artifacts)
