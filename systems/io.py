"""H5MD 1.1 files: packings in, sensitivity results out.

Input (:func:`read_packing`) follows the H5MD 1.1 layout (https://www.nongnu.org/h5md/), so
files written by other molecular-dynamics tools load::

    /h5md                                   (optional when reading; always written)
    /particles/<group>/
        position    time-dependent element {value [T][N][d], step, (time)} or fixed [N][d]
        box         attrs dimension (2 or 3), boundary (["periodic"]*d or ["none"]*d)
            edges   fixed [d] edge lengths or [d][d] cell (rows = cell vectors, H5MD's
                    convention; read as the cell matrix H whose columns they are), or a
                    time-dependent element of either
        (species)   [N] int, default all 0          (fixed or time-dependent)
        (diameter)  [N] float, default 1.0          (fixed or time-dependent)
    (/parameters/potential)  attrs: kind, and the potential's parameters

Every missing or malformed item raises :class:`~systems.InputError` with a one-line message
that names the file, the dataset path and what was expected.

Output (:func:`write_packing`, :func:`write_result`) is always float64, carries the
mandatory ``/h5md`` metadata (version [1, 1], author, creator) and is written atomically:
to a temporary name in the destination folder, then renamed over the destination.

Written files use the time-dependent form for ``position`` and ``box/edges`` (one frame,
step 0), which MDAnalysis' H5MD reader requires; ``write_packing(time_dependent=False)``
writes fixed datasets. Units are reduced (:data:`UNITS_NOTE`): ``unit`` = "sigma" on the box
edges, the diameters and the position element (not on ``position/value``, where MDAnalysis
refuses any unit it does not know), "epsilon" on energies.

Result files add (groups of our own, which H5MD allows)::

    /observables/potential_energy   time-dependent element, unit epsilon (for MD tools)
    /sensitivity                 attrs: format, timings (time_*_s), zero-mode figures
        rattlers     [N] bool
        <name>/                  one group per parameter θ; attrs: theta, solver, ...
            dx_dtheta            [N][d] (scalar θ) or [P][N][d] (θ with P components);
                                 attrs: axes, unit, theta_*, gauge, rattlers, the solve's
                                 converged / residual / iterations (:func:`_describe_jacobian`)
            (nonaffine)          [N][d], θ of kind strain: the non-affine part of dx_dtheta
    (/elasticity)                sensitivity.elasticity: stress [d][d], elastic_tensor
                                 [d][d][d][d], nonaffine [m][N][d], per_particle_stress
                                 [N][d][d]; attrs pressure,
                                 bulk_modulus, shear_modulus, definitions, solve report
    /relaxation                  attrs: steps, energy, max_force, stop_reason, converged
    (/audit)                     the finite-difference audit, if run
    /parameters/
        config                   attr json: the resolved configuration (attr text: as given)
        provenance               attrs: package versions, input sha256, device, x64, ...
        (potential)              attrs: kind and parameters, as in input files
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._atomic import atomic_path
from ._errors import InputError
from ._system import ParticleSystem, box_problem, cell_matrix, wrap_positions
from .tasks import file_sha256
from .versions import package_version

__all__ = [
    "Response",
    "Result",
    "file_sha256",
    "read_packing",
    "read_result",
    "response_magnitudes",
    "write_packing",
    "write_result",
]

H5MD_VERSION = (1, 1)

#: Units (H5MD unit strings, https://www.nongnu.org/h5md/modules/units.html). The physics is
#: in reduced units: lengths in the unit of the input packing's coordinates ("sigma"; for
#: `sensitivity generate`, the small diameter is 1) and energies in the potential's ε.
LENGTH_UNIT = "sigma"
ENERGY_UNIT = "epsilon"
UNITS_NOTE = (
    "reduced units: sigma = the length unit of the input packing's coordinates (for "
    "`sensitivity generate`: the small diameter), epsilon = the potential's energy scale"
)

#: The unit of θ for each parameter kind (as H5MD unit strings; "1": dimensionless).
THETA_UNITS = {"diameter": LENGTH_UNIT, "diameters": LENGTH_UNIT, "epsilon": ENERGY_UNIT,
               "box": "1", "strain": "1"}
RESULT_FORMAT = "sensitivity-result"
RESULT_FORMAT_VERSION = 1

# Arrays larger than this many elements are stored as datasets rather than attributes
# (HDF5 attributes are limited to 64 kB).
_MAX_ATTRIBUTE_ELEMENTS = 256


# --------------------------------------------------------------------------------------
# small helpers


def _default_author() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


#: Links and storage a reader follows: only what is inside the file itself. An external link,
#: external raw storage or a virtual dataset would make the result depend on other files that
#: the provenance hash (of this file's bytes) does not cover, so they are refused.
_MAX_OBJECTS = 100_000


def _max_read_bytes() -> int:
    """The largest dataset a reader loads: a quarter of the machine's memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _check_links(handle: h5py.File, label: str) -> None:
    """InputError for an external link, a dangling or looping soft link, external raw storage
    or a virtual dataset anywhere in the file."""
    problems: list[str] = []
    count = 0

    def visit(name: str, link) -> None:
        nonlocal count
        count += 1
        if count > _MAX_OBJECTS:
            return True  # stops the visit (an exception raised here would be mangled by h5py)
        path = "/" + name
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"{path} is an external link to {link.filename}:{link.path}; "
                            "external links are not followed (copy the data into this file)")
        elif isinstance(link, h5py.SoftLink):
            try:
                target = handle.get(path)
            except (KeyError, RuntimeError, OSError, ValueError):
                target = None
            if target is None:
                problems.append(f"{path} is a soft link to {link.path} that does not resolve "
                                "(dangling, or a loop of links)")

    try:
        handle.visititems_links(visit)
    except (KeyError, RuntimeError, OSError, ValueError, SystemError) as error:
        raise InputError(f"{label}: cannot list its contents ({' '.join(str(error).split())}); "
                         "the file is damaged") from None
    if count > _MAX_OBJECTS:
        raise InputError(f"{label}: holds more than {_MAX_OBJECTS} objects; not a packing or "
                         "result file")
    if problems:
        raise InputError(f"{label}: {problems[0]}")

    def datasets(name: str, item) -> None:
        if isinstance(item, h5py.Dataset):
            if item.external:
                problems.append(f"/{name} keeps its data in external file(s) "
                                f"{[e[0] for e in item.external]}; store it inside this file")
            elif item.is_virtual:
                problems.append(f"/{name} is a virtual dataset mapping other files; store its "
                                "data inside this file")

    try:
        handle.visititems(datasets)
    except (KeyError, RuntimeError, OSError, ValueError, SystemError) as error:
        raise InputError(f"{label}: cannot list its contents ({' '.join(str(error).split())}); "
                         "the file is damaged") from None
    if problems:
        raise InputError(f"{label}: {problems[0]}")


def _checked_read(dataset: h5py.Dataset, path: str, label: str, index: int | None = None):
    """Read a dataset (or one frame of it) after checking that its size is sensible."""
    shape = dataset.shape[1:] if index is not None else dataset.shape
    size = int(np.prod(shape, dtype=np.float64)) if shape is not None else 0
    nbytes = size * dataset.dtype.itemsize
    if nbytes > _max_read_bytes():
        raise InputError(
            f"{label}: {path} declares shape {dataset.shape} ({nbytes / 2**30:.1f} GiB), more "
            f"than this machine can read (limit {_max_read_bytes() / 2**30:.1f} GiB)")
    if size and dataset.id.get_storage_size() == 0 and dataset.fillvalue is not None \
            and not dataset.chunks:
        raise InputError(f"{label}: {path} declares shape {dataset.shape} but holds no data "
                         "(never written)")
    if index is None:
        return np.asarray(dataset[()])
    return np.asarray(dataset[index])


@contextlib.contextmanager
def _open_for_reading(path: str | os.PathLike) -> Iterator[tuple[h5py.File, str]]:
    """Open an HDF5 file for reading; InputError if it is missing, not HDF5, damaged, or
    reaches outside itself (external links or storage).

    Any low-level failure while the caller reads (a corrupt chunk, an attribute of an
    unexpected type) becomes an InputError naming the file, never a traceback.
    """
    label = os.fspath(path)
    if not os.path.exists(label):
        raise InputError(f"{label}: file not found")
    if os.path.isdir(label):
        raise InputError(f"{label}: is a directory, expected an HDF5 (H5MD) file")
    try:
        is_hdf5 = h5py.is_hdf5(label)
    except OSError as error:
        raise InputError(f"{label}: cannot be read ({error})") from None
    if not is_hdf5:
        raise InputError(f"{label}: not an HDF5 file, expected an H5MD packing (.h5)")
    try:
        handle = h5py.File(label, "r")
    except OSError as error:
        raise InputError(f"{label}: cannot be opened as HDF5 ({' '.join(str(error).split())})") \
            from None
    with handle:
        _check_links(handle, label)
        try:
            yield handle, label
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError,
                RuntimeError, UnicodeDecodeError) as error:
            message = " ".join(str(error).split()) or type(error).__name__
            raise InputError(f"{label}: cannot be read ({type(error).__name__}: {message[:200]}); "
                             "the file is damaged or not laid out as H5MD expects") from None


@contextlib.contextmanager
def _atomic_h5(path: str | os.PathLike, on_disk: int = 0) -> Iterator[h5py.File]:
    """Build an HDF5 file in memory, then write its bytes atomically
    (:func:`systems._atomic.atomic_path`).

    HDF5 handles a failing disk badly: with the disk full it reports the failed flush once per
    open object, from destructors, and then crashes the process (seen: exit 139). Built in
    memory (the ``core`` driver without a backing store), the file is written to disk by one
    plain write, whose failure is one OSError, reported as a StorageError.

    ``on_disk`` bytes (a Jacobian written as it is computed, too large to build in memory):
    the file is written in place, in the temporary file of :func:`atomic_path`: an empty
    HDF5 file (one plain write), then that much disk reserved behind it
    (:func:`systems.jacobian_file.reserve_space`: a full disk fails there, cleanly), then
    opened by HDF5, whose writes land in the reserved space (it trims the rest on closing);
    any failure removes the temporary file.
    """
    if on_disk:
        from .jacobian_file import reserve_space

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as stream:
                stream.write(_empty_h5_image(path))
            reserve_space(tmp, on_disk)
            with h5py.File(tmp, "r+") as handle:
                yield handle
        return
    name = f"{os.fspath(path)}.{secrets.token_hex(8)}.in-memory"  # never touches the disk
    handle = h5py.File(name, "w", driver="core", backing_store=False)
    try:
        yield handle
        handle.flush()
        image = handle.id.get_file_image()
    finally:
        handle.close()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as stream:
            stream.write(image)


def _empty_h5_image(path) -> bytes:
    """The bytes of an empty HDF5 file (built in memory, see :func:`_atomic_h5`)."""
    name = f"{os.fspath(path)}.{secrets.token_hex(8)}.in-memory"
    handle = h5py.File(name, "w", driver="core", backing_store=False)
    try:
        handle.flush()
        return handle.id.get_file_image()
    finally:
        handle.close()


def _decode(value: Any) -> Any:
    """An HDF5 attribute value as plain Python (str, int, float, bool, None, ndarray, list)."""
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO" or value.dtype.kind == "U":
            return [_decode(item) for item in value.tolist()]
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _encode(value: Any, where: str) -> Any:
    """A Python value as something h5py stores as an attribute."""
    if value is None:
        return h5py.Empty("f8")
    if isinstance(value, (bool, np.bool_)):
        return np.bool_(value)
    if isinstance(value, (int, np.integer)):
        return np.int64(value)
    if isinstance(value, (float, np.floating)):
        return np.float64(value)
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value)
        if array.dtype.kind in "US" or (
            array.dtype.kind == "O" and all(isinstance(item, str) for item in array.ravel())
        ):
            return np.array([str(item) for item in array.ravel()], dtype=h5py.string_dtype()).reshape(
                array.shape
            )
        if array.dtype.kind == "f":
            return array.astype(np.float64)
        if array.dtype.kind in "iub":
            return array
        raise TypeError(f"{where}: cannot store {type(value).__name__} {value!r} in HDF5")
    if hasattr(value, "__array__"):  # jax arrays
        return _encode(np.asarray(value), where)
    raise TypeError(f"{where}: cannot store {type(value).__name__} {value!r} as an HDF5 attribute")


def _fixed_string(text: str) -> np.bytes_:
    """A fixed-length ASCII string, the portable HDF5 string type."""
    return np.bytes_(text.encode("ascii", "replace"))


# --------------------------------------------------------------------------------------
# reading packings


class _Reader:
    """Reads and validates one particles group of an open H5MD file."""

    def __init__(self, handle: h5py.File, label: str, group: str):
        self.handle = handle
        self.label = label
        self.group_path = f"/particles/{group}"
        if "particles" not in handle or not isinstance(handle["particles"], h5py.Group):
            raise InputError(f"{label}: /particles is missing, expected an H5MD particles group")
        particles = handle["particles"]
        if group not in particles or not isinstance(particles[group], h5py.Group):
            present = ", ".join(sorted(name for name in particles if isinstance(particles[name], h5py.Group)))
            raise InputError(
                f"{label}: {self.group_path} is missing, expected a particles group "
                f"(groups present: {present or 'none'})"
            )
        self.group = particles[group]
        self._position_index = 0

    def error(self, message: str) -> InputError:
        return InputError(f"{self.label}: {message}")

    # time-dependent elements -----------------------------------------------------------

    def _steps(self, element: h5py.Group, path: str, n_frames: int) -> np.ndarray | None:
        """The step of every frame of a time-dependent element (None if no step)."""
        if "step" not in element:
            return None
        step = element["step"]
        if not isinstance(step, h5py.Dataset):
            raise self.error(f"{path}/step is not a dataset, expected integer steps")
        data = np.asarray(step[()])
        if data.ndim == 0:  # H5MD 1.1: scalar step = fixed interval, optional offset
            offset = _decode(step.attrs.get("offset", 0)) or 0
            return np.asarray(offset) + np.arange(n_frames) * data
        if data.shape != (n_frames,):
            raise self.error(
                f"{path}/step has shape {data.shape}, expected ({n_frames},) to match {path}/value"
            )
        return data

    def read_element(
        self, name: str, *, frame: int | None = None, steps: np.ndarray | None = None,
        n_frames: int | None = None,
    ) -> tuple[np.ndarray, str, dict]:
        """Read ``name`` under the particles group (``box/edges`` allowed).

        Returns (data for one frame, the dataset path read, frame info). For the position
        (``frame`` given) the frame is chosen by index; for other time-dependent elements it
        is the frame matching the position's (same index when the frame counts agree, the
        only frame when there is one, else the same ``step``).
        """
        path = f"{self.group_path}/{name}"
        item = self.group[name]
        if isinstance(item, h5py.Dataset):
            return _checked_read(item, path, self.label), path, {"time_dependent": False}
        if not isinstance(item, h5py.Group):
            raise self.error(f"{path} is neither a dataset nor a time-dependent element group")
        if "value" not in item or not isinstance(item["value"], h5py.Dataset):
            raise self.error(
                f"{path}/value is missing, expected a dataset (H5MD time-dependent element)"
            )
        value = item["value"]
        value_path = f"{path}/value"
        if value.ndim == 0:
            raise self.error(f"{value_path} is a scalar, expected a leading time axis")
        count = value.shape[0]
        if count == 0:
            raise self.error(f"{value_path} has no frames (shape {value.shape})")
        element_steps = self._steps(item, path, count)
        if frame is not None:
            if not -count <= frame < count:
                raise self.error(
                    f"{value_path} has {count} frame(s), frame {frame} is out of range "
                    f"(expected -{count} <= frame < {count})"
                )
            index = frame % count
        else:
            index = None
            if n_frames is not None and count == n_frames:
                index = self._position_index
            elif count == 1:
                index = 0
            elif steps is not None and element_steps is not None:
                wanted = steps[self._position_index]
                matches = np.flatnonzero(element_steps == wanted)
                if not matches.size:
                    raise self.error(
                        f"{path}/step has no frame at step {wanted}, expected one matching "
                        f"the frame read from {self.group_path}/position"
                    )
                index = int(matches[-1])
            if index is None:
                raise self.error(
                    f"{value_path} has {count} frames, expected 1, as many as "
                    f"{self.group_path}/position/value ({n_frames}), or a step dataset "
                    "matching the position's"
                )
        info = {
            "time_dependent": True,
            "n_frames": count,
            "index": index,
            "steps": element_steps,
        }
        if "time" in item and isinstance(item["time"], h5py.Dataset):
            time = np.asarray(item["time"][()])
            if time.ndim == 0:
                offset = _decode(item["time"].attrs.get("offset", 0.0)) or 0.0
                info["time"] = float(offset + index * time)
            elif time.shape == (count,):
                info["time"] = float(time[index])
        if element_steps is not None:
            info["step"] = int(element_steps[index])
        return _checked_read(value, value_path, self.label, index), value_path, info

    # the whole system ------------------------------------------------------------------

    def read_system(self, frame: int) -> ParticleSystem:
        group_path = self.group_path
        if "position" not in self.group:
            raise self.error(
                f"{group_path}/position is missing, expected [N][d] positions "
                "(a dataset or an H5MD time-dependent element)"
            )
        positions, position_path, info = self.read_element("position", frame=frame)
        self._position_index = info.get("index", 0)
        steps = info.get("steps")
        n_frames = info.get("n_frames")
        if not info["time_dependent"] and frame not in (0, -1):
            raise self.error(
                f"{position_path} is a fixed dataset (one frame), frame {frame} is out of range "
                "(expected 0 or -1)"
            )
        if positions.ndim != 2 or positions.shape[1] not in (2, 3):
            if info["time_dependent"]:
                shape, expected = (n_frames,) + positions.shape, "(T, N, d)"
            else:
                shape, expected = positions.shape, "(N, d)"
            raise self.error(f"{position_path} has shape {shape}, expected {expected} with d = 2 or 3")
        if positions.dtype.kind not in "fiu":
            raise self.error(f"{position_path} has dtype {positions.dtype}, expected floating point")
        positions = positions.astype(np.float64)
        n, dim = positions.shape
        if n == 0:
            raise self.error(f"{position_path} has no particles (shape {positions.shape})")
        bad = ~np.isfinite(positions)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise self.error(
                f"{position_path} has {int(bad.any(axis=1).sum())} particle(s) with NaN or "
                f"infinite coordinates (first: particle {row}), expected finite positions"
            )

        box, periodic = self._read_box(dim, steps, n_frames)
        per_particle = dict(steps=steps, n_frames=n_frames)
        diameters = self._read_per_particle("diameter", n, position_path, 1.0, per_particle)
        if diameters.dtype.kind not in "fiu":
            raise self.error(f"{group_path}/diameter has dtype {diameters.dtype}, expected float")
        diameters = diameters.astype(np.float64)
        if not np.all(np.isfinite(diameters)) or np.any(diameters <= 0):
            worst = diameters[~(np.isfinite(diameters) & (diameters > 0))][0]
            raise self.error(
                f"{group_path}/diameter has a non-positive or non-finite value ({worst}), "
                "expected diameters > 0"
            )
        species = self._read_per_particle("species", n, position_path, 0, per_particle)
        if species.dtype.kind == "f" and np.all(np.isfinite(species)) and np.all(species == np.round(species)):
            species = species.astype(np.int64)
        if species.dtype.kind not in "iu":
            raise self.error(f"{group_path}/species has dtype {species.dtype}, expected integers")
        if np.any(species < 0):
            raise self.error(f"{group_path}/species has negative values, expected integers >= 0")
        labels, codes = np.unique(species, return_inverse=True)  # any labels: S×S matrices

        if periodic:
            positions = wrap_positions(positions, box)
        return ParticleSystem(
            positions=positions, diameters=diameters, species=codes.astype(np.int32),
            box=box, periodic=periodic, species_labels=tuple(int(x) for x in labels),
        )

    def _read_per_particle(
        self, name: str, n: int, position_path: str, default: float, frames: dict
    ) -> np.ndarray:
        if name not in self.group:
            return np.full(n, default, dtype=np.float64 if isinstance(default, float) else np.int32)
        data, path, _ = self.read_element(name, **frames)
        if data.shape != (n,):
            raise self.error(
                f"{path} has shape {data.shape}, expected ({n},) to match {position_path}"
            )
        return data

    def _read_box(self, dim: int, steps, n_frames) -> tuple[np.ndarray | None, bool]:
        box_path = f"{self.group_path}/box"
        if "box" not in self.group or not isinstance(self.group["box"], h5py.Group):
            raise self.error(f"{box_path} is missing, expected an H5MD box group")
        box_group = self.group["box"]
        if "dimension" not in box_group.attrs:
            raise self.error(f"{box_path} has no attribute 'dimension', expected {dim}")
        dimension = _decode(box_group.attrs["dimension"])
        if isinstance(dimension, np.ndarray) and dimension.size == 1:
            dimension = dimension.item()
        if not isinstance(dimension, (int, np.integer)) or int(dimension) != dim:
            raise self.error(
                f"{box_path} attribute dimension = {dimension!r}, expected {dim} to match "
                f"{self.group_path}/position"
            )
        if "boundary" not in box_group.attrs:
            raise self.error(
                f"{box_path} has no attribute 'boundary', expected ['periodic']*{dim} or ['none']*{dim}"
            )
        boundary = _decode(box_group.attrs["boundary"])
        if isinstance(boundary, str):
            boundary = [boundary]
        if isinstance(boundary, np.ndarray):
            boundary = boundary.tolist()
        if not isinstance(boundary, list):
            raise self.error(
                f"{box_path} attribute boundary = {boundary!r}, expected {dim} strings, each "
                "'periodic' or 'none'"
            )
        boundary = [str(item).strip().lower() for item in boundary]
        if len(boundary) != dim or any(item not in ("periodic", "none") for item in boundary):
            raise self.error(
                f"{box_path} attribute boundary = {boundary}, expected {dim} entries, each "
                "'periodic' or 'none'"
            )
        if len(set(boundary)) > 1:
            raise self.error(
                f"{box_path} attribute boundary = {boundary} mixes periodic and free axes, "
                f"expected ['periodic']*{dim} or ['none']*{dim} (mixed boundaries are not supported)"
            )
        periodic = boundary[0] == "periodic"
        if "edges" not in box_group:
            if periodic:
                raise self.error(
                    f"{box_path}/edges is missing, expected [{dim}] edge lengths for a periodic box"
                )
            return None, False
        edges, edges_path, _ = self.read_element("box/edges", steps=steps, n_frames=n_frames)
        if edges.dtype.kind not in "fiu":
            raise self.error(f"{edges_path} has dtype {edges.dtype}, expected float")
        edges = edges.astype(np.float64)
        if edges.shape == (dim, dim) and np.array_equal(edges, np.diag(np.diag(edges))):
            edges = np.diag(edges).copy()  # a cuboid box written as a matrix
        if edges.shape not in ((dim,), (dim, dim)):
            raise self.error(
                f"{edges_path} has shape {edges.shape}, expected ({dim},) or ({dim}, {dim})"
            )
        if not periodic:
            return None, False
        if edges.ndim == 2:
            # H5MD: the rows of edges are the cell vectors; the box is the cell matrix
            # whose columns they are (x = H s for fractional coordinates s)
            problem = box_problem(edges, dim)
            if problem:
                raise self.error(f"{edges_path} {problem.replace('(the columns)', '(rows)')}")
            return edges.T.copy(), True
        problem = box_problem(edges, dim)
        if problem:
            raise self.error(f"{edges_path} {problem}")
        return edges, True


def _read_potential(handle: h5py.File, label: str) -> dict | None:
    if "parameters" not in handle:
        return None
    parameters = handle["parameters"]
    if not isinstance(parameters, h5py.Group) or "potential" not in parameters:
        return None
    potential = parameters["potential"]
    if not isinstance(potential, h5py.Group):
        raise InputError(
            f"{label}: /parameters/potential is a dataset, expected a group with attribute 'kind'"
        )
    if "kind" not in potential.attrs:
        raise InputError(
            f"{label}: /parameters/potential has no attribute 'kind', expected e.g. 'soft_sphere'"
        )
    result = {key: _decode(value) for key, value in potential.attrs.items()}
    if not isinstance(result["kind"], str):
        raise InputError(
            f"{label}: /parameters/potential attribute kind = {result['kind']!r}, expected a string"
        )
    # Put 'kind' first for readability.
    return {"kind": result.pop("kind"), **result}


def read_packing(
    path: str | os.PathLike, group: str = "all", frame: int = -1
) -> tuple[ParticleSystem, dict | None]:
    """Read a packing from an H5MD 1.1 file.

    Args:
        path: the HDF5 file.
        group: the particles group, ``/particles/<group>``.
        frame: which frame of a time-dependent ``position`` (negative counts from the end;
            the last frame by default). A fixed ``[N][d]`` position has the single frame 0.

    Returns:
        ``(system, potential)``: the :class:`ParticleSystem` (positions wrapped into a
        periodic box) and the attributes of ``/parameters/potential`` as a dict
        ``{"kind": ..., <parameters>}``, or ``None`` when the file has none.

    Raises:
        InputError: the file is missing, not HDF5, or an item is missing or malformed; the
            one-line message names the file, the dataset path and what was expected.
    """
    frame = int(frame)
    with _open_for_reading(path) as (handle, label):
        system = _Reader(handle, label, group).read_system(frame)
        potential = _read_potential(handle, label)
    return system, potential


# --------------------------------------------------------------------------------------
# writing packings


def _creator_fields(creator: Any) -> tuple[str, str]:
    if creator is None:
        return "sensitivity", package_version("sensitivity")
    if isinstance(creator, str):
        return creator, package_version("sensitivity")
    if isinstance(creator, Mapping):
        return str(creator.get("name", "sensitivity")), str(creator.get("version", "unknown"))
    name, version = creator
    return str(name), str(version)


def _write_h5md_header(handle: h5py.File, author: str | None, creator: Any) -> None:
    h5md = handle.create_group("h5md")
    h5md.attrs["version"] = np.array(H5MD_VERSION, dtype=np.int32)
    author_group = h5md.create_group("author")
    author_group.attrs["name"] = _fixed_string(author if author is not None else _default_author())
    name, version = _creator_fields(creator)
    creator_group = h5md.create_group("creator")
    creator_group.attrs["name"] = _fixed_string(name)
    creator_group.attrs["version"] = _fixed_string(version)


def _time_dependent(parent: h5py.Group, name: str, frame: np.ndarray) -> h5py.Dataset:
    """A one-frame H5MD time-dependent element ``name`` {value [1][...], step [1], time [1]};
    returns its ``value`` dataset. Step and time are 0: a relaxed state has no dynamics."""
    element = parent.create_group(name)
    value = element.create_dataset("value", data=frame[None], maxshape=(None,) + frame.shape)
    element.create_dataset("step", data=np.zeros(1, dtype=np.int64), maxshape=(None,))
    element.create_dataset("time", data=np.zeros(1, dtype=np.float64), maxshape=(None,))
    return value


def _write_particles(
    handle: h5py.File, system: ParticleSystem, group: str, time_dependent: bool
) -> None:
    """``/particles/<group>`` as MD readers expect it (see :data:`LENGTH_UNIT` for units).

    With ``time_dependent`` (results, and input packings by default) the position and the
    box edges are one-frame time-dependent elements, the form MDAnalysis' H5MD reader needs
    (``box/edges/value``); otherwise fixed datasets. ``species`` and ``diameter`` are fixed
    ``[N]`` datasets (H5MD 1.1 allows fixed per-particle data beside a time-dependent
    position).
    """
    particles = handle.require_group("particles").create_group(group)
    dim = system.dim
    box = particles.create_group("box")
    box.attrs["dimension"] = np.int32(dim)
    boundary = "periodic" if system.periodic else "none"
    box.attrs["boundary"] = np.array([boundary.encode()] * dim, dtype="S8")
    if system.box is not None:
        edges = np.asarray(system.box, dtype=np.float64)
        if edges.ndim == 2:  # a sheared cell: H5MD's rows are the cell vectors
            edges = edges.T.copy()
        if time_dependent:
            dataset = _time_dependent(box, "edges", edges)
        else:
            dataset = box.create_dataset("edges", data=edges)
        dataset.attrs["unit"] = _fixed_string(LENGTH_UNIT)
    positions = np.asarray(system.positions, dtype=np.float64)
    if time_dependent:
        # No `unit` on position/value: MDAnalysis refuses any length unit it does not know
        # (reduced units included), even with convert_units=False. The element states it.
        _time_dependent(particles, "position", positions)
        particles["position"].attrs["unit"] = _fixed_string(LENGTH_UNIT)
    else:
        dataset = particles.create_dataset("position", data=positions)
        dataset.attrs["unit"] = _fixed_string(LENGTH_UNIT)
    labels = np.asarray(system.labelled_species)
    particles.create_dataset(
        "species", data=labels.astype(np.int32 if labels.max(initial=0) < 2**31 else np.int64))
    diameter = particles.create_dataset("diameter",
                                        data=np.asarray(system.diameters, dtype=np.float64))
    diameter.attrs["unit"] = _fixed_string(LENGTH_UNIT)


def _write_potential(handle: h5py.File, potential: Mapping | None) -> None:
    if potential is None:
        return
    if "kind" not in potential:
        raise ValueError("potential needs a 'kind' entry, e.g. {'kind': 'soft_sphere', ...}")
    group = handle.require_group("parameters").create_group("potential")
    for key, value in potential.items():
        group.attrs[str(key)] = _encode(value, f"/parameters/potential attribute {key}")


def write_packing(
    path: str | os.PathLike,
    system: ParticleSystem,
    *,
    potential: Mapping | None = None,
    author: str | None = None,
    creator: Any = None,
    group: str = "all",
    time_dependent: bool = True,
) -> Path:
    """Write a packing as an H5MD 1.1 file (float64; atomic: temporary name, then rename).

    Args:
        path: destination file; its folder is created if needed.
        system: the particles.
        potential: optional ``{"kind": ..., <parameters>}`` stored as attributes of
            ``/parameters/potential`` (``None`` values are stored as empty attributes).
        author: ``/h5md/author`` name (default: the login name).
        creator: ``/h5md/creator`` as ``(name, version)``, a mapping with those keys, or a
            name; default ``("sensitivity", <package version>)``.
        group: the particles group name, ``/particles/<group>``.
        time_dependent: write ``position`` as a one-frame H5MD time-dependent element
            (``value [1][N][d]``, ``step``, ``time``; the default, what most MD readers expect)
            or as a fixed ``[N][d]`` dataset.

    Returns:
        The path written.
    """
    with _atomic_h5(path) as handle:
        _write_h5md_header(handle, author, creator)
        _write_particles(handle, system, group, time_dependent)
        _write_potential(handle, potential)
    return Path(path)


# --------------------------------------------------------------------------------------
# results


@dataclasses.dataclass(frozen=True, eq=False)
class Result:
    """Everything a ``sensitivity.h5`` result file holds (see :func:`write_result`).

    What :func:`read_result` returns: numpy arrays, no jax. By name: :attr:`positions`,
    :attr:`box`, :attr:`diameters`, :attr:`species`, :attr:`rattlers`, :attr:`provenance`;
    per θ, :meth:`response` (the Jacobian, its unit and the solve's report),
    :meth:`magnitudes` and :meth:`predicted_system` (``x* + Δθ · ∂x*/∂θ``).

    Attributes:
        system: the relaxed packing (``/particles/all``).
        relaxation: minimizer report (steps, energy, max_force, stop_reason, converged, ...).
        responses: ``{name: {"dx_dtheta": array, "attrs": {...}}}``, one entry per parameter
            θ: ``dx_dtheta`` is ``[N][d]`` for a scalar θ and ``[P][N][d]`` for a θ with P
            components; rattler rows are NaN. ``attrs`` holds θ's value, the solver,
            iterations, residual, converged, ...
        rattlers: ``[N]`` bool mask.
        zero_modes: zero-mode and conditioning figures.
        parameters: ``{"config": dict, "provenance": dict, ...}`` (``/parameters``).
        timings: wall-clock timings in seconds (``time_relax_s``, ``time_sensitivity_s``,
            ``time_compile_s``, ...).
        audit: the finite-difference audit, or ``None`` when it was not run.
        path: the file it was read from (``None`` if built in memory).
    """

    system: ParticleSystem
    relaxation: dict
    responses: dict
    rattlers: np.ndarray
    zero_modes: dict
    parameters: dict
    timings: dict
    audit: dict | None = None
    path: Path | None = None
    elasticity: dict | None = None
    #: ``{θ name: {"d_observable_d_theta" (K, P), "value" (K,), "attrs"}}``
    #: (``/observable_derivatives``, :mod:`systems.reverse`)
    observable_derivatives: dict = dataclasses.field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The parameter names, in the order they were written."""
        return list(self.responses)

    def dx_dtheta(self, name: str) -> np.ndarray:
        """``dx*/dθ`` for parameter ``name`` (``[N][d]`` or ``[P][N][d]``)."""
        return self.responses[name]["dx_dtheta"]

    @property
    def converged(self) -> bool:
        """True when the relaxation and every linear solve (the elastic tensor's included)
        report convergence."""
        ok = bool(self.relaxation.get("converged", True))
        for response in self.responses.values():
            ok = ok and bool(response.get("attrs", {}).get("converged", True))
        if self.elasticity is not None:  # the strain solves of the elastic tensor
            ok = ok and bool(self.elasticity.get("converged", True))
        return ok

    def __repr__(self) -> str:
        where = f"{str(self.path)!r}, " if self.path is not None else ""
        return (f"Result({where}n={self.system.n}, dim={self.system.dim}, "
                f"thetas={self.names}, rattlers={int(np.sum(self.rattlers))}, "
                f"converged={self.converged})")

    # -- the packing, by name -----------------------------------------------------------

    @property
    def positions(self) -> np.ndarray:
        """``[N][d]`` relaxed positions x* (wrapped into a periodic box)."""
        return self.system.positions

    @property
    def box(self) -> np.ndarray | None:
        """``[d]`` box edge lengths, or a sheared cell's ``[d][d]`` cell matrix (columns = cell
        vectors); ``None``: free boundaries."""
        return self.system.box

    @property
    def diameters(self) -> np.ndarray:
        """``[N]`` particle diameters."""
        return self.system.diameters

    @property
    def species(self) -> np.ndarray:
        """``[N]`` integer species."""
        return self.system.species

    @property
    def config(self) -> dict:
        """The resolved configuration of the run (``{}`` if the file has none)."""
        config = self.parameters.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def provenance(self) -> dict:
        """Package versions, input file and its SHA-256, device, x64, command line."""
        return dict(self.parameters.get("provenance") or {})

    # -- responses ------------------------------------------------------------------------

    def response(self, name: str | None = None) -> "Response":
        """θ ``name``'s Jacobian and its report (default: the only or first θ)."""
        if name is None:
            if not self.names:
                raise InputError(f"{self.path or 'result'}: /sensitivity holds no responses")
            name = self.names[0]
        if name not in self.responses:
            raise InputError(
                f"{self.path or 'result'}: /sensitivity/{name} is missing, expected one of: "
                f"{', '.join(self.names) or 'none'}"
            )
        entry = self.responses[name]
        attrs = dict(entry.get("attrs") or {})
        description = dict(entry.get("description") or {})
        unit, theta_unit = _jacobian_unit(attrs.get("kind"))  # files written before the attrs
        unit = str(description.get("unit", unit))
        theta_unit = str(description.get("theta_unit", theta_unit))
        theta = attrs.get("theta")
        return Response(
            name=name,
            dx_dtheta=entry["dx_dtheta"],
            kind=attrs.get("kind"),
            theta=None if theta is None else (np.asarray(theta, dtype=np.float64)
                                              if np.ndim(theta) else float(theta)),
            unit=unit or "unknown",
            theta_unit=theta_unit,
            converged=attrs.get("converged"),
            report=attrs,
            description=description,
        )

    def magnitudes(self, name: str | None = None, component: int | None = None) -> np.ndarray:
        """``[N]`` per-particle response magnitudes (see :meth:`Response.magnitudes`)."""
        return self.response(name).magnitudes(component)

    def predicted_system(self, name: str | None, delta: Any) -> ParticleSystem:
        """The packing linear response predicts at ``θ + Δθ``: ``x* + Δθ · ∂x*/∂θ``.

        ``delta`` is a number for a scalar θ, a ``[P]`` vector for a θ with P components
        (``x* + Σ_p Δθ_p ∂x*/∂θ_p``). What θ moves moves too: a species' diameter
        (``diameter``), every diameter (``diameters``), the box edges (``box``: edges ×
        (λ + Δλ)/λ), the cell (``strain``: ``(I + Δε E) H`` for the unit symmetric strain
        ``E`` of the component, a sheared cell for a shear). Positions are wrapped into the
        (new) periodic box. Rattlers, whose
        response is undefined (NaN), stay where they are. The prediction is in the result's
        gauge (backbone mean unchanged) and holds while no contact opens or closes.
        """
        response = self.response(name)
        field = response.dx_dtheta
        if field.ndim == 3:
            delta = np.asarray(delta, dtype=np.float64)
            if delta.shape != (field.shape[0],):
                raise ValueError(
                    f"theta {response.name!r} has {field.shape[0]} components: delta must "
                    f"have shape ({field.shape[0]},), got {delta.shape}"
                )
            step = np.einsum("p,pnd->nd", delta, np.nan_to_num(field, nan=0.0))
        else:
            delta = float(delta)
            step = delta * np.nan_to_num(field, nan=0.0)
        moved = np.isfinite(field).all(axis=-1)
        if field.ndim == 3:
            moved = moved.all(axis=0)
        positions = self.positions + np.where(moved[:, None], step, 0.0)
        diameters, box = self.diameters, self.box
        if response.kind == "diameter":
            species = response.report.get("species")
            diameters = diameters + delta * (self.species == species)
        elif response.kind == "diameters":
            diameters = diameters + delta
        elif response.kind == "box" and box is not None:
            box = box * (response.theta + delta) / response.theta
        elif response.kind == "strain" and box is not None and "component" in response.report:
            a, b = ("xyz".index(c) for c in str(response.report["component"]))
            unit = np.zeros((self.system.dim, self.system.dim))
            unit[a, b] = unit[b, a] = 1.0
            box = (np.eye(self.system.dim) + delta * unit) @ cell_matrix(box)
        if self.system.periodic:
            positions = wrap_positions(positions, box)
        return self.system.replace(positions=positions, diameters=diameters, box=box)

    def predicted_positions(self, name: str | None, delta: Any) -> np.ndarray:
        """``[N][d]`` positions of :meth:`predicted_system`."""
        return self.predicted_system(name, delta).positions


def response_magnitudes(dx_dtheta: np.ndarray, component: int | None = None) -> np.ndarray:
    """|∂x*_i/∂θ| per particle: ``[N][d]`` -> ``[N]``; ``[P][N][d]`` -> ``[N]``, the norm
    over θ's components and the axes (or one component's, with ``component``).

    Rattler rows (NaN) stay NaN.
    """
    field = np.asarray(dx_dtheta, dtype=np.float64)
    if field.ndim == 3 and component is not None:
        field = field[component]
    if field.ndim == 2:
        return np.linalg.norm(field, axis=-1)
    return np.sqrt(np.sum(field**2, axis=(0, 2)))


@dataclasses.dataclass(frozen=True, eq=False)
class Response:
    """One θ of a result: its Jacobian ``∂x*/∂θ`` and the linear solve's report.

    Attributes:
        name: θ's name (``/sensitivity/<name>``).
        dx_dtheta: ``[N][d]`` (scalar θ) or ``[P][N][d]`` (θ with P components), in
            :attr:`unit`; rattler rows NaN; backbone mean zero (the gauge).
        kind: ``diameter``, ``diameters``, ``epsilon`` or ``box``.
        theta: θ's value at x* (a float, or ``[P]``).
        unit: H5MD unit string of ``dx_dtheta`` (length per unit of θ; reduced units).
        theta_unit: θ's unit.
        converged: whether the linear solve converged (``None``: not recorded).
        report: the group's attributes (solver, iterations, residual, tol, time_s, ...).
        description: the dataset's attributes (axes, gauge, rattler rows, θ definition).
    """

    name: str
    dx_dtheta: np.ndarray
    kind: str | None
    theta: float | np.ndarray | None
    unit: str
    theta_unit: str
    converged: bool | None
    report: dict
    description: dict

    def __repr__(self) -> str:
        shape = "x".join(str(size) for size in self.dx_dtheta.shape)
        theta = (f"{self.theta:g}" if isinstance(self.theta, float) else "?"
                 if self.theta is None else f"[{np.size(self.theta)} values]")
        return (f"Response({self.name!r}, kind={self.kind!r}, theta={theta} {self.theta_unit}, "
                f"dx_dtheta {shape} [{self.unit}], converged={self.converged})")

    @property
    def vector(self) -> bool:
        """True for a θ with several components (``[P][N][d]``)."""
        return self.dx_dtheta.ndim == 3

    def magnitudes(self, component: int | None = None) -> np.ndarray:
        """``[N]`` |∂x*_i/∂θ| (:func:`response_magnitudes`); NaN for rattlers."""
        return response_magnitudes(self.dx_dtheta, component)


def _check_name(name: Any, where: str) -> str:
    name = str(name)
    if not name or "/" in name or name in (".", ".."):
        raise InputError(f"{where}: name {name!r} cannot be an HDF5 group/attribute name (no '/', not empty)")
    return name


def _write_tree(group: h5py.Group, mapping: Mapping, where: str) -> None:
    """Store a nested mapping: sub-mappings as groups, small values as attributes, large
    arrays as datasets. :func:`_read_tree` reads it back."""
    for key, value in mapping.items():
        key = _check_name(key, where)
        if isinstance(value, Mapping):
            _write_tree(group.create_group(key, track_order=True), value, f"{where}/{key}")
            continue
        encoded = _encode(value, f"{where} attribute {key}")
        if isinstance(encoded, np.ndarray) and encoded.size > _MAX_ATTRIBUTE_ELEMENTS:
            group.create_dataset(key, data=encoded)
        else:
            group.attrs[key] = encoded


def _read_tree(group: h5py.Group, skip: tuple[str, ...] = ()) -> dict:
    tree: dict = {key: _decode(value) for key, value in group.attrs.items() if key not in skip}
    for key, item in group.items():
        if key in skip:
            continue
        if isinstance(item, h5py.Group):
            tree[key] = _read_tree(item)
        else:
            tree[key] = _decode(item[()])
    return tree


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in the configuration JSON")


_GAUGE = (
    "backbone mean zero: the rigid translations are removed, so the mean of dx_dtheta over "
    "the non-rattler particles is 0 along every axis{rotation}; a Jacobian is defined up to "
    "this gauge"
)
_RATTLERS = (
    "rows of rattlers (/sensitivity/rattlers true: fewer than d+1 contacts) are NaN; a "
    "rattler carries no force at x*, so its response is undefined"
)


def _jacobian_unit(kind: Any, multiplier: bool = False) -> tuple[str, str]:
    """(H5MD unit string, the unit of θ) of ``dx*/dθ``: length per unit of θ (``multiplier``:
    θ is a dimensionless multiplier, as for ``epsilon`` over a non-uniform ε matrix)."""
    theta_unit = "1" if multiplier else THETA_UNITS.get(str(kind))
    if theta_unit is None:
        return "", "unknown"
    if theta_unit == LENGTH_UNIT:
        return "1", theta_unit  # length / length
    if theta_unit == "1":
        return LENGTH_UNIT, theta_unit
    return f"{LENGTH_UNIT} {theta_unit}-1", theta_unit


def _describe_jacobian(dataset: h5py.Dataset, name: str, attrs: Mapping, system: ParticleSystem,
                       potential: Mapping | None) -> None:
    """Attributes that make ``/sensitivity/<name>/dx_dtheta`` readable without this package:
    axes, unit, θ (name, kind, definition, value, unit), gauge, rattler rows, and the linear
    solve's report (copied from the group's attributes)."""
    kind = attrs.get("kind")
    # ε of no particular species over a non-uniform ε matrix: θ multiplies the matrix
    epsilon = None if potential is None else potential.get("epsilon")
    multiplier = (kind == "epsilon" and attrs.get("species") in (None, -1) and epsilon is not None
                  and np.unique(np.asarray(epsilon, dtype=np.float64)).size > 1)
    if dataset.ndim == 3:
        count = dataset.shape[0]
        dataset.attrs["axes"] = np.array(["theta_component", "particle", "dimension"],
                                         dtype=h5py.string_dtype())
        what = "diameter of particle p" if kind == "diameters" else "component p of theta"
        dataset.attrs["axes_text"] = (
            f"[P][N][d], P = {count}: entry [p, i, a] is dx*_(i,a)/dtheta_p, theta_p = {what}"
        )
    else:
        dataset.attrs["axes"] = np.array(["particle", "dimension"], dtype=h5py.string_dtype())
        dataset.attrs["axes_text"] = "[N][d]: entry [i, a] is dx*_(i,a)/dtheta"
    unit, theta_unit = _jacobian_unit(kind, multiplier)
    if unit:
        dataset.attrs["unit"] = _fixed_string(unit)
    dataset.attrs["unit_text"] = f"{LENGTH_UNIT} / {theta_unit} (length per unit of theta)"
    dataset.attrs["units"] = UNITS_NOTE
    dataset.attrs["theta_name"] = name
    dataset.attrs["theta_kind"] = "unknown" if kind is None else str(kind)
    dataset.attrs["theta_unit"] = theta_unit
    if attrs.get("theta_meaning") is not None:
        dataset.attrs["theta_definition"] = str(attrs["theta_meaning"])
    theta = attrs.get("theta")
    if theta is not None:
        value = np.asarray(theta, dtype=np.float64)
        if value.size <= _MAX_ATTRIBUTE_ELEMENTS:
            dataset.attrs["theta"] = value
        else:
            dataset.attrs["theta"] = h5py.Empty("f8")
            dataset.attrs["theta_text"] = f"{value.size} values: see /sensitivity/{name}/theta"
    rotation = "" if system.periodic else " and the rigid rotations about the centroid"
    dataset.attrs["gauge"] = _GAUGE.format(rotation=rotation)
    dataset.attrs["rattlers"] = _RATTLERS
    for key in ("converged", "residual", "solver_relative_residual", "iterations", "solver",
                "method", "tol"):
        if attrs.get(key) is not None:
            where = f"/sensitivity/{name}/dx_dtheta attribute {key}"
            dataset.attrs[key] = _encode(attrs[key], where)


def _write_observables(handle: h5py.File, relaxation: Mapping) -> None:
    """``/observables/potential_energy`` (H5MD, unit ε): the relaxed energy where MD tools
    look for it (MDAnalysis puts it in ``ts.data``); ``/relaxation`` keeps the full report."""
    energy = relaxation.get("energy")
    if isinstance(energy, (bool, np.bool_)) or not isinstance(energy, (int, float, np.number)):
        return
    value = _time_dependent(handle.require_group("observables"), "potential_energy",
                            np.asarray(float(energy)))
    value.attrs["unit"] = _fixed_string(ENERGY_UNIT)


def write_result(
    path: str | os.PathLike,
    *,
    system: ParticleSystem,
    relaxation: Mapping,
    responses: Mapping[str, Mapping],
    rattlers: np.ndarray,
    zero_modes: Mapping,
    parameters: Mapping,
    timings: Mapping,
    audit: Mapping | None = None,
    author: str | None = None,
    creator: Any = None,
    elasticity: Mapping | None = None,
    observable_derivatives: Mapping | None = None,
) -> Path:
    """Write a sensitivity result as a valid H5MD 1.1 file (float64; atomic).

    Layout (see the module docstring): ``/h5md``; ``/particles/all`` = the relaxed
    ``system``; ``/sensitivity/<name>/dx_dtheta`` with ``attrs`` on the ``<name>`` group;
    ``/sensitivity/rattlers``; ``timings`` and ``zero_modes`` as attributes of
    ``/sensitivity``; ``relaxation`` in ``/relaxation``; ``audit`` in ``/audit``;
    ``parameters`` under ``/parameters``: ``config`` (a mapping, stored as the JSON string
    attribute ``json``, or a string stored as ``text``), ``config_text`` (the configuration
    as the user wrote it, attribute ``text``), and every other mapping entry as a group
    (``provenance``, ``potential``...). Nested mappings become groups, values attributes,
    arrays of more than 256 elements datasets; ``None`` is an empty attribute.

    Args:
        responses: ``{name: {"dx_dtheta": [N][d] or [P][N][d] array, "attrs": {...}}}``;
            other entries are kept in ``/sensitivity/<name>/extra``.
        rattlers: ``[N]`` bool.

    Returns:
        The path written. :func:`read_result` reads everything back.
    """
    n, dim = system.n, system.dim
    rattlers = np.asarray(rattlers)
    if rattlers.shape != (n,):
        raise ValueError(f"rattlers must have shape ({n},), got {rattlers.shape}")
    overlap = set(timings) & set(zero_modes)
    if overlap:
        raise ValueError(f"timings and zero_modes share keys {sorted(overlap)}")
    from .jacobian_file import is_stream, jacobian_layout, write_streamed

    streamed = sum(r["dx_dtheta"].nbytes for r in responses.values()
                   if is_stream(r.get("dx_dtheta")))
    on_disk = streamed + (64 << 20) if streamed else 0  # + room for the rest of the file
    with _atomic_h5(path, on_disk) as handle:
        _write_h5md_header(handle, author, creator)
        _write_particles(handle, system, "all", time_dependent=True)

        sensitivity = handle.create_group("sensitivity", track_order=True)
        sensitivity.attrs["format"] = RESULT_FORMAT
        sensitivity.attrs["format_version"] = np.int32(RESULT_FORMAT_VERSION)
        for key in ("timings", "zero_modes"):
            figures = timings if key == "timings" else zero_modes
            sensitivity.attrs[f"{key}_keys"] = np.array(
                [_check_name(k, f"/sensitivity {key}") for k in figures], dtype=h5py.string_dtype()
            )
            for name, value in figures.items():
                if isinstance(value, Mapping):
                    raise TypeError(f"/sensitivity attribute {name}: {key} values must not be mappings")
                sensitivity.attrs[str(name)] = _encode(value, f"/sensitivity attribute {name}")
        sensitivity.create_dataset("rattlers", data=rattlers.astype(bool))
        for name, response in responses.items():
            name = _check_name(name, "/sensitivity")
            if name == "rattlers":
                raise InputError("/sensitivity: a parameter cannot be named 'rattlers' (reserved)")
            if "dx_dtheta" not in response:
                raise ValueError(f"responses[{name!r}] has no 'dx_dtheta'")
            dx_dtheta = response["dx_dtheta"]
            stream = is_stream(dx_dtheta)
            if not stream:
                dx_dtheta = np.asarray(dx_dtheta, dtype=np.float64)
            if tuple(dx_dtheta.shape[-2:]) != (n, dim) or len(dx_dtheta.shape) not in (2, 3):
                raise ValueError(
                    f"responses[{name!r}]['dx_dtheta'] has shape {dx_dtheta.shape}, expected "
                    f"({n}, {dim}) or (P, {n}, {dim})"
                )
            group = sensitivity.create_group(name, track_order=True)
            if stream:  # computed block by block as it is written; its report comes last
                write_streamed(group, dx_dtheta)
                response["attrs"] = {**(response.get("attrs") or {}), **dx_dtheta.attrs}
            else:  # chunked when large
                group.create_dataset("dx_dtheta", data=dx_dtheta,
                                     **jacobian_layout(dx_dtheta.shape))
            _describe_jacobian(group["dx_dtheta"], name, response.get("attrs") or {}, system,
                               parameters.get("potential"))
            attrs = dict(response.get("attrs") or {})
            for reserved in ("dx_dtheta", "extra"):
                if reserved in attrs:
                    raise ValueError(f"responses[{name!r}]['attrs'] uses the reserved key {reserved!r}")
            _write_tree(group, attrs, f"/sensitivity/{name}")
            if response.get("nonaffine") is not None:
                nonaffine = np.asarray(response["nonaffine"], dtype=np.float64)
                if nonaffine.shape != dx_dtheta.shape:
                    raise ValueError(f"responses[{name!r}]['nonaffine'] has shape "
                                     f"{nonaffine.shape}, expected {dx_dtheta.shape}")
                dataset = group.create_dataset("nonaffine", data=nonaffine)
                dataset.attrs["definition"] = (
                    "non-affine part of dx_dtheta: dx*/dtheta minus the affine motion "
                    "lambda E y* of the strain direction E, backbone mean zero, rattlers NaN")
            extra = {k: v for k, v in response.items()
                     if k not in ("dx_dtheta", "attrs", "nonaffine")}
            if extra:
                _write_tree(group.create_group("extra", track_order=True), extra, f"/sensitivity/{name}/extra")

        _write_tree(handle.create_group("relaxation", track_order=True), relaxation, "/relaxation")
        _write_observables(handle, relaxation)
        if audit is not None:
            _write_tree(handle.create_group("audit", track_order=True), audit, "/audit")
        if elasticity is not None:
            _write_elasticity(handle, elasticity, dim)
        if observable_derivatives:  # dO/dθ of a vector θ (reverse or forward mode)
            from .reverse import write_observable_derivatives

            write_observable_derivatives(handle, observable_derivatives)

        group = handle.create_group("parameters", track_order=True)
        rest = dict(parameters)
        config, config_text = rest.pop("config", None), rest.pop("config_text", None)
        if config is not None or config_text is not None:
            config_group = group.create_group("config", track_order=True)
            if isinstance(config, str):
                config_group.attrs["text"] = config
            elif config is not None:
                config_group.attrs["json"] = json.dumps(config, default=_json_default)
            if config_text is not None:
                config_group.attrs["text"] = str(config_text)
        _write_tree(group, rest, "/parameters")
    return Path(path)


ELASTICITY_DATASETS = {"stress": 2, "elastic_tensor": 4, "nonaffine": 3, "per_particle_stress": 3}


def _write_elasticity(handle: h5py.File, elasticity: Mapping, dim: int) -> None:
    """``/elasticity``: the datasets of :data:`ELASTICITY_DATASETS`, the rest attributes."""
    group = handle.create_group("elasticity", track_order=True)
    for key in ELASTICITY_DATASETS:
        if elasticity.get(key) is not None:
            group.create_dataset(key, data=np.asarray(elasticity[key], dtype=np.float64))
    rest = {k: v for k, v in elasticity.items() if k not in ELASTICITY_DATASETS}
    _write_tree(group, rest, "/elasticity")


def _read_elasticity(handle: h5py.File, label: str, dim: int) -> dict | None:
    group = handle.get("elasticity")
    if not isinstance(group, h5py.Group):
        return None
    out = _read_tree(group, skip=tuple(ELASTICITY_DATASETS))
    for key, ndim in ELASTICITY_DATASETS.items():
        item = group.get(key)
        if item is None:
            continue
        where = f"/elasticity/{key}"
        value = _checked_read(item, where, label).astype(np.float64, copy=False)
        ok = value.ndim == ndim and value.shape[-1] == dim
        if key in ("stress", "elastic_tensor"):
            ok = ok and value.shape == (dim,) * ndim
        elif key == "per_particle_stress":
            ok = ok and value.shape[1:] == (dim, dim)
        if not ok:
            expected = {"stress": "[d][d]", "elastic_tensor": "[d][d][d][d]",
                        "nonaffine": "[m][N][d]", "per_particle_stress": "[N][d][d]"}[key]
            raise InputError(f"{label}: {where} has shape {list(value.shape)}, expected "
                             f"{expected} with d = {dim}")
        out[key] = value
    return out


def _require(handle: h5py.File, label: str, name: str, kind: type, expected: str):
    item = handle.get(name)
    if item is None:
        raise InputError(f"{label}: {name} is missing, expected {expected}")
    if not isinstance(item, kind):
        raise InputError(f"{label}: {name} is not a {kind.__name__.lower()}, expected {expected}")
    return item


def read_result(path: str | os.PathLike) -> Result:
    """Read a result file written by :func:`write_result` (the output of ``sensitivity run``).

    Raises:
        InputError: the file is missing, not HDF5, not a sensitivity result (for example an
            input packing), or a required item is malformed.
    """
    with _open_for_reading(path) as (handle, label):
        sensitivity = handle.get("/sensitivity")
        if not isinstance(sensitivity, h5py.Group) or sensitivity.attrs.get("format") != RESULT_FORMAT:
            hint = " (this looks like an input packing)" if "particles" in handle else ""
            raise InputError(
                f"{label}: /sensitivity is missing or has no attribute format = '{RESULT_FORMAT}', "
                f"expected a result file written by `sensitivity run`{hint}"
            )
        version = _decode(sensitivity.attrs.get("format_version", 0))
        if not isinstance(version, int) or version > RESULT_FORMAT_VERSION:
            raise InputError(
                f"{label}: /sensitivity attribute format_version = {version!r}, expected at most "
                f"{RESULT_FORMAT_VERSION} (written by a newer sensitivity; upgrade to read it)"
            )
        system = _Reader(handle, label, "all").read_system(-1)
        rattlers_item = _require(handle, label, "/sensitivity/rattlers", h5py.Dataset, f"[{system.n}] bool")
        rattlers = _checked_read(rattlers_item, "/sensitivity/rattlers", label).astype(bool)
        if rattlers.shape != (system.n,):
            raise InputError(
                f"{label}: /sensitivity/rattlers has shape {rattlers.shape}, expected ({system.n},) "
                "to match /particles/all/position"
            )
        figures = {}
        for key in ("timings", "zero_modes"):
            names = _decode(sensitivity.attrs.get(f"{key}_keys", np.array([], dtype="S1")))
            figures[key] = {
                name: _decode(sensitivity.attrs[name]) for name in names if name in sensitivity.attrs
            }
        responses = {}
        for name, group in sensitivity.items():
            if not isinstance(group, h5py.Group):
                continue
            where = f"/sensitivity/{name}/dx_dtheta"
            dataset = _require(handle, label, where, h5py.Dataset, "[N][d] or [P][N][d] float")
            dx_dtheta = _checked_read(dataset, where, label).astype(np.float64, copy=False)
            if dx_dtheta.ndim not in (2, 3) or dx_dtheta.shape[-2:] != (system.n, system.dim):
                raise InputError(
                    f"{label}: {where} has shape {dx_dtheta.shape}, expected ({system.n}, "
                    f"{system.dim}) or (P, {system.n}, {system.dim})"
                )
            response = {"dx_dtheta": dx_dtheta,
                        "attrs": _read_tree(group, skip=("dx_dtheta", "extra", "nonaffine"))}
            if isinstance(group.get("nonaffine"), h5py.Dataset):
                response["nonaffine"] = _checked_read(group["nonaffine"],
                                                      f"/sensitivity/{name}/nonaffine", label)
            response["description"] = {k: _decode(v) for k, v in dataset.attrs.items()}
            if isinstance(group.get("extra"), h5py.Group):
                response.update(_read_tree(group["extra"]))
            responses[name] = response
        relaxation = _read_tree(handle["relaxation"]) if isinstance(handle.get("relaxation"), h5py.Group) else {}
        audit = _read_tree(handle["audit"]) if isinstance(handle.get("audit"), h5py.Group) else None
        elasticity = _read_elasticity(handle, label, system.dim)
        from .reverse import read_observable_derivatives

        observable_derivatives = read_observable_derivatives(handle)
        parameters: dict = {}
        if isinstance(handle.get("parameters"), h5py.Group):
            parameters_group = handle["parameters"]
            parameters = _read_tree(parameters_group, skip=("config",))
            config_group = parameters_group.get("config")
            if isinstance(config_group, h5py.Group):
                attrs = {key: _decode(value) for key, value in config_group.attrs.items()}
                if "json" in attrs:
                    try:
                        parameters["config"] = json.loads(attrs["json"])
                    except (TypeError, ValueError) as error:
                        raise InputError(
                            f"{label}: /parameters/config attribute json is not valid JSON ({error})"
                        ) from None
                    if "text" in attrs:
                        parameters["config_text"] = attrs["text"]
                elif "text" in attrs:
                    parameters["config"] = attrs["text"]
            # keep the written order: config first
            parameters = {
                **{k: parameters[k] for k in ("config", "config_text") if k in parameters},
                **{k: v for k, v in parameters.items() if k not in ("config", "config_text")},
            }
    return Result(
        observable_derivatives=observable_derivatives,
        system=system,
        relaxation=relaxation,
        responses=responses,
        rattlers=rattlers,
        zero_modes=figures["zero_modes"],
        parameters=parameters,
        timings=figures["timings"],
        audit=audit,
        path=Path(path),
        elasticity=elasticity,
    )


RESULT_GROUPS = ("particles", "sensitivity", "relaxation", "parameters", "audit", "elasticity")


def copy_result(path: str | os.PathLike, target: h5py.Group) -> None:
    """Copy the groups of result file ``path`` into ``target`` (a group of another file).

    Checked like :func:`read_result` (links, external storage); on failure nothing is left in
    ``target`` and InputError names the file.
    """
    copied = []
    try:
        with _open_for_reading(path) as (handle, _label):
            for item in RESULT_GROUPS:
                if item in handle:
                    handle.copy(handle[item], target, name=item)
                    copied.append(item)
    except BaseException:
        for item in copied:
            with contextlib.suppress(Exception):
                del target[item]
        raise
