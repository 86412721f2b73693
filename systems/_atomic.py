"""Files that appear whole or not at all: the one atomic writer of the package.

Every file ``sensitivity`` writes (results, packings, configs, markers, summaries, figures) is
written under a temporary name in its destination folder, flushed to disk, then renamed over
the destination (``os.replace``, atomic on POSIX file systems). A process killed at any
instant leaves either the previous file or the new one, never half of one.

Temporary names are ``.<name>.<host>.<pid>.<random>.tmp``: unique per writer, so two processes
never share one, and recognisable, so a run holding a task folder's lock can remove the
leftovers of a writer that was killed (SIGKILL gives no chance to clean up) without touching
anybody else's files: only temporaries of the artifact names it owns are removed.

Storage failures (disk full, read-only file system, permission denied, a path that is a file)
become :class:`~systems._errors.StorageError`, one line naming the path and the cause; the
temporary file is removed and the destination is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from ._errors import StorageError

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "ensure_writable_folder",
    "remove_stale_temporaries",
    "storage_error",
]

_HOST = socket.gethostname().split(".")[0] or "host"

_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted (an immutable or protected file?)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.EEXIST: "a file of that name exists where a folder is needed",
    errno.EFBIG: "the file is larger than allowed (file size limit)",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ELOOP: "too many symbolic links",
}


def storage_error(path: str | os.PathLike, error: BaseException, doing: str = "write") -> StorageError:
    """A one-line :class:`StorageError` for an OSError met while writing ``path``."""
    code = getattr(error, "errno", None)
    cause = _CAUSES.get(code)
    if cause is None:
        # h5py reports HDF5 write failures without errno; find the cause in the text.
        text = " ".join(str(error).split())
        lowered = text.lower()
        if "no space" in lowered or "disk full" in lowered:
            cause = _CAUSES[errno.ENOSPC]
        elif "read-only" in lowered:
            cause = _CAUSES[errno.EROFS]
        elif "permission" in lowered:
            cause = _CAUSES[errno.EACCES]
        elif "file too large" in lowered or "file size limit" in lowered:
            cause = _CAUSES[errno.EFBIG]
        else:
            cause = text or type(error).__name__
    return StorageError(f"{os.fspath(path)}: cannot {doing} ({cause})")


def temporary_name(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (``.<name>.<host>.<pid>.<random>.tmp``)."""
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def ensure_writable_folder(folder: str | os.PathLike, what: str = "output folder",
                           replaces: Iterable[str] = ()) -> Path:
    """Create ``folder`` if needed and prove a file can be created in it, and that the existing
    files ``replaces`` (names in it) can be replaced.

    Called before any long computation, so that a read-only target, a permission problem, an
    immutable earlier result or a path naming an existing file fails in the first second, not
    after hours.

    Raises:
        StorageError: one line naming the folder and the cause.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"{folder}: the {what} is an existing file, not a folder; "
                           "choose another output.directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise storage_error(folder, error, f"create the {what}") from None
    probe = temporary_name(folder / "write-probe")
    try:
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, b"\0")
        finally:
            os.close(descriptor)
    except OSError as error:
        raise storage_error(folder, error, f"write in the {what}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    for name in replaces:
        existing = folder / name
        if not existing.is_file():
            continue
        try:  # opening for writing (no truncation) fails on an immutable or read-only file
            os.close(os.open(existing, os.O_WRONLY | os.O_APPEND))
        except OSError as error:
            raise storage_error(existing, error, "replace it") from None
    return folder


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` whole.

    The caller writes the complete file to the yielded path (and closes it). On leaving the
    block normally the file is flushed to disk and renamed over ``path``; on any exception
    (including a signal) the temporary file is removed and ``path`` is untouched.

    Raises:
        StorageError: the folder cannot be created, or writing, flushing or renaming failed
            with an OSError (disk full, read-only, permission denied, ...).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise storage_error(folder, error, "create the folder") from None
    if path.is_dir():
        raise StorageError(f"{path}: cannot write (it is a folder)")
    tmp = temporary_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic_path: nothing was written to {tmp}")
        os.chmod(tmp, 0o666 & ~_current_umask())
        _fsync(tmp)
        os.replace(tmp, path)
    except StorageError:
        _discard(tmp)
        raise
    except OSError as error:
        _discard(tmp)
        raise storage_error(path, error) from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as stream:
            stream.write(text)
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Remove leftover temporaries of the files ``names`` in ``folder`` (and nothing else).

    Only call this while holding the folder's task lock: then no live writer of ours can own
    such a file. Temporaries of other names (a user's ``.draft.tmp``) are never touched.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for name in names:
        for leftover in folder.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()
                removed.append(leftover)
    return removed
