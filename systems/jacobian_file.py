"""The ``[P][N][d]`` Jacobian of a vector θ on disk: chunked storage, and slices read alone.

The whole ``diameters`` Jacobian of N particles is ``8 N² d`` bytes (268 MB at N = 4,096 in
2D, 4.3 GB at 16,384). :func:`jacobian_layout` gives the storage of ``dx_dtheta`` in a
result file (:func:`systems.io.write_result`): above :data:`CHUNKED_MIN_BYTES`, HDF5 chunks
of ``[64][64][d]`` (64 KiB in 2D), so that one θ component's field ``[p, :, :]`` or one
particle's response to every θ ``[:, i, :]`` reads ``N / 64`` chunks, 1/64 of the file,
instead of the whole matrix. :func:`read_jacobian_slice` reads such a slice by name.

A Jacobian too large to hold comfortably is not held at all: :func:`write_streamed` fills the
chunked dataset block by block as a :class:`~systems.many_rhs.FactorizedJacobian` computes
it, in the result's temporary file (:func:`systems.io.write_result`, atomic as every file of
the package), so the run's memory grows by one block, not by the result.
"""

from __future__ import annotations

import os

import numpy as np

from ._errors import InputError
from ._h5 import open_for_reading

__all__ = ["CHUNK_EDGE", "CHUNKED_MIN_BYTES", "jacobian_layout", "read_jacobian_slice",
           "is_stream", "write_streamed"]

#: Chunks of ``[CHUNK_EDGE][CHUNK_EDGE][d]`` along (θ component, particle).
CHUNK_EDGE = 64

#: A ``[P][N][d]`` Jacobian of at least this many bytes is stored chunked.
CHUNKED_MIN_BYTES = 1 << 20


def jacobian_layout(shape) -> dict:
    """``h5py.Group.create_dataset`` keywords for a ``dx_dtheta`` of ``shape``: chunked
    ``[64][64][d]`` for a ``[P][N][d]`` array of at least :data:`CHUNKED_MIN_BYTES`, else
    contiguous (``{}``)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or 8 * int(np.prod(shape)) < CHUNKED_MIN_BYTES:
        return {}
    p, n, d = shape
    return {"chunks": (min(p, CHUNK_EDGE), min(n, CHUNK_EDGE), d)}


def is_stream(value) -> bool:
    """Whether a response's ``dx_dtheta`` is computed while it is written (it has
    ``shape`` and ``blocks()``; :class:`~systems.many_rhs.FactorizedJacobian`)."""
    return hasattr(value, "blocks") and hasattr(value, "shape")


def write_streamed(group, stream):
    """Create ``group/dx_dtheta`` (chunked, :func:`jacobian_layout`) and fill it with every
    block of ``stream`` as it is computed; the stream's report (``stream.report``) is
    available when this returns. Returns the dataset."""
    shape = tuple(int(s) for s in stream.shape)
    dataset = group.create_dataset("dx_dtheta", shape=shape, dtype="f8",
                                   **(jacobian_layout(shape) or {"chunks": True}))
    for start, stop, block in stream.blocks():
        dataset[start:stop] = block
    return dataset


def _index(value, size: int, what: str, where: str):
    if value is None:
        return slice(None)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{where}: {what} must be an integer or None, got {value!r}")
    if not -size <= int(value) < size:
        raise InputError(f"{where}: {what} {value} is out of range; the Jacobian has {size} "
                         f"along that axis (0 .. {size - 1})")
    return int(value)


def read_jacobian_slice(path: str | os.PathLike, name: str, *, theta: int | None = None,
                        particle: int | None = None, axis: int | None = None) -> np.ndarray:
    """A slice of ``/sensitivity/<name>/dx_dtheta`` read without reading the rest.

    Args:
      path: a result file (``sensitivity run``).
      name: the θ's name.
      theta: component ``p`` of a vector θ (``[P][N][d]``; must be None for a scalar θ).
      particle: particle ``i``; axis: coordinate ``a``. None keeps the whole axis.

    Returns:
      ``dx_dtheta[p, i, a]`` with the None axes kept (e.g. ``particle=i``: ``[P][d]``, how
      particle i moves when each θ component changes). Rattler rows are NaN.

    Raises:
      InputError: the file, the dataset or an index is wrong (named, with the shape).
    """
    with open_for_reading(path) as (handle, label):
        where = f"/sensitivity/{name}/dx_dtheta"
        dataset = handle.get(where)
        if dataset is None or not hasattr(dataset, "shape"):
            names = [k for k in handle.get("/sensitivity", {}) if k != "rattlers"]
            raise InputError(f"{label}: {where} is missing; θ names in the file: "
                             f"{', '.join(names) or 'none'}")
        shape = dataset.shape
        at = f"{label}: {where} of shape {shape}"
        if len(shape) == 2:
            if theta is not None:
                raise InputError(f"{at}: θ {name!r} is a scalar; pass theta=None")
            index = (_index(particle, shape[0], "particle", at),
                     _index(axis, shape[1], "axis", at))
        elif len(shape) == 3:
            index = (_index(theta, shape[0], "theta", at),
                     _index(particle, shape[1], "particle", at),
                     _index(axis, shape[2], "axis", at))
        else:
            raise InputError(f"{at}: expected [N][d] or [P][N][d]")
        return np.asarray(dataset[index], dtype=np.float64)
