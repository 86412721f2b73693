"""Exceptions shared by ``systems`` and the command line.

Two kinds of failure are kept apart because the user fixes them differently:

* :class:`InputError` -- the input is wrong (a file, a dataset, a configuration key).
  Its message is one line that names the file, the dataset or key path, and what was
  expected, e.g. ``"packing.h5: /particles/all/diameter has shape (63,), expected (64,)
  to match /particles/all/position"``. The command line prints it and exits with code 2.
* :class:`ConvergenceError` -- the input was fine but a numerical method failed (a
  minimizer or a linear solve did not reach its tolerance). Exit code 1.
"""

from __future__ import annotations

__all__ = ["ConvergenceError", "InputError"]


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
