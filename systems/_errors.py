"""Exceptions shared by ``systems`` and the command line.

Two kinds of failure are kept apart because the user fixes them differently:

* :class:`InputError` -- the input is wrong (a file, a dataset, a configuration key).
  Its message is one line that names the file, the dataset or key path, and what was
  expected, e.g. ``"packing.h5: /particles/all/diameter has shape (63,), expected (64,)
  to match /particles/all/position"``. The command line prints it and exits with code 2.
* :class:`ConvergenceError` -- the input was fine but a numerical method failed (a
  minimizer or a linear solve did not reach its tolerance). Exit code 1.
* :class:`StorageError` -- the environment refused a write (disk full, read-only file system,
  permission denied, a path that is a file). One line naming the path and the cause; the
  command line exits with code 74 (``EX_IOERR``) and any earlier result is left intact.
"""

from __future__ import annotations

__all__ = ["ConvergenceError", "InputError", "StorageError"]


class InputError(ValueError):
    """A user mistake in an input file or configuration.

    ``str(error)`` is a single line naming the file, the dataset/key path and what was
    expected, so that it can be shown without a traceback.
    """

    def __init__(self, message: str):
        # Keep the message on one line whatever the caller passed.
        super().__init__(" ".join(str(message).split()))


class ConvergenceError(RuntimeError):
    """A numerical method did not converge (minimizer, linear solve, audit)."""


class StorageError(OSError):
    """Writing an output failed for a reason of the environment, not of the input.

    ``str(error)`` is one line naming the path and the cause (``"out/sensitivity.h5: cannot
    write (the disk is full)"``).
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))

    def __str__(self) -> str:
        return self.args[0]
