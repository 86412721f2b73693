"""Packings in and out: read and validate a particles group of an H5MD 1.1 file
(:func:`read_packing`), write one (:func:`write_packing`). The layout is in :mod:`systems.io`.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._errors import InputError
from ._h5 import (
    H5MD_VERSION,
    LENGTH_UNIT,
    atomic_h5,
    checked_read,
    decode,
    encode,
    fixed_string,
    open_for_reading,
    time_dependent_element,
)
from ._system import ParticleSystem, box_problem, wrap_positions
from .settings import LAST_FRAME, PARTICLES_GROUP
from .versions import package_version


# --------------------------------------------------------------------------------------
# reading packings


class PackingReader:
    """Reads and validates one particles group of an open H5MD file."""

    def __init__(self, handle: h5py.File, label: str, group: str):
        self.handle = handle
        self.label = label
        self.group_path = f"/particles/{group}"
        if "particles" not in handle or not isinstance(handle["particles"], h5py.Group):
            raise InputError(f"{label}: /particles is missing, expected an H5MD particles group")
        particles = handle["particles"]
        if group not in particles or not isinstance(particles[group], h5py.Group):
            present = ", ".join(sorted(name for name in particles
                                       if isinstance(particles[name], h5py.Group)))
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
            offset = decode(step.attrs.get("offset", 0)) or 0
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
            return checked_read(item, path, self.label), path, {"time_dependent": False}
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
                offset = decode(item["time"].attrs.get("offset", 0.0)) or 0.0
                info["time"] = float(offset + index * time)
            elif time.shape == (count,):
                info["time"] = float(time[index])
        if element_steps is not None:
            info["step"] = int(element_steps[index])
        return checked_read(value, value_path, self.label, index), value_path, info

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
            raise self.error(f"{position_path} has shape {shape}, expected {expected} with "
                             "d = 2 or 3")
        if positions.dtype.kind not in "fiu":
            raise self.error(f"{position_path} has dtype {positions.dtype}, expected floating "
                             "point")
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
        if species.dtype.kind == "f" and np.all(np.isfinite(species)) \
                and np.all(species == np.round(species)):
            species = species.astype(np.int64)
        if species.dtype.kind not in "iu":
            raise self.error(f"{group_path}/species has dtype {species.dtype}, expected integers")
        if np.any(species < 0):
            raise self.error(f"{group_path}/species has negative values, expected integers >= 0")
        labels, codes = np.unique(species, return_inverse=True)  # any labels: S×S matrices
        if len(labels) > 1 and "diameter" not in self.group:  # 1 each would be silent garbage
            shown = ", ".join(str(int(x)) for x in labels[:4]) + (", ..." if len(labels) > 4 else "")
            raise self.error(
                f"{group_path}/diameter is missing, expected [{n}] diameters for the "
                f"{len(labels)} species ({shown}): which species is larger is not in the file "
                "(H5MD leaves diameters to the program; LAMMPS and MDAnalysis write none). "
                f"Add them, e.g. h5py.File(path, 'a')['{group_path}/diameter'] = d")

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
        dimension = decode(box_group.attrs["dimension"])
        if isinstance(dimension, np.ndarray) and dimension.size == 1:
            dimension = dimension.item()
        if not isinstance(dimension, (int, np.integer)) or int(dimension) != dim:
            raise self.error(
                f"{box_path} attribute dimension = {dimension!r}, expected {dim} to match "
                f"{self.group_path}/position"
            )
        if "boundary" not in box_group.attrs:
            raise self.error(
                f"{box_path} has no attribute 'boundary', expected ['periodic']*{dim} or "
                f"['none']*{dim}"
            )
        boundary = decode(box_group.attrs["boundary"])
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
                f"expected ['periodic']*{dim} or ['none']*{dim} (mixed boundaries are not "
                "supported)"
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
    result = {key: decode(value) for key, value in potential.attrs.items()}
    if not isinstance(result["kind"], str):
        raise InputError(
            f"{label}: /parameters/potential attribute kind = {result['kind']!r}, expected a string"
        )
    # Put 'kind' first for readability.
    return {"kind": result.pop("kind"), **result}


def read_packing(
    path: str | os.PathLike, group: str = PARTICLES_GROUP, frame: int = LAST_FRAME
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
    with open_for_reading(path) as (handle, label):
        system = PackingReader(handle, label, group).read_system(frame)
        potential = _read_potential(handle, label)
    return system, potential


# --------------------------------------------------------------------------------------
# writing packings


def _default_author() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _creator_fields(creator: Any) -> tuple[str, str]:
    if creator is None:
        return "sensitivity", package_version("sensitivity")
    if isinstance(creator, str):
        return creator, package_version("sensitivity")
    if isinstance(creator, Mapping):
        return str(creator.get("name", "sensitivity")), str(creator.get("version", "unknown"))
    name, version = creator
    return str(name), str(version)


def write_h5md_header(handle: h5py.File, author: str | None, creator: Any) -> None:
    h5md = handle.create_group("h5md")
    h5md.attrs["version"] = np.array(H5MD_VERSION, dtype=np.int32)
    author_group = h5md.create_group("author")
    author_group.attrs["name"] = fixed_string(author if author is not None else _default_author())
    name, version = _creator_fields(creator)
    creator_group = h5md.create_group("creator")
    creator_group.attrs["name"] = fixed_string(name)
    creator_group.attrs["version"] = fixed_string(version)



def write_particles(
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
            dataset = time_dependent_element(box, "edges", edges)
        else:
            dataset = box.create_dataset("edges", data=edges)
        dataset.attrs["unit"] = fixed_string(LENGTH_UNIT)
    positions = np.asarray(system.positions, dtype=np.float64)
    if time_dependent:
        # No `unit` on position/value: MDAnalysis refuses any length unit it does not know
        # (reduced units included), even with convert_units=False. The element states it.
        time_dependent_element(particles, "position", positions)
        particles["position"].attrs["unit"] = fixed_string(LENGTH_UNIT)
    else:
        dataset = particles.create_dataset("position", data=positions)
        dataset.attrs["unit"] = fixed_string(LENGTH_UNIT)
    labels = np.asarray(system.labelled_species)
    particles.create_dataset(
        "species", data=labels.astype(np.int32 if labels.max(initial=0) < 2**31 else np.int64))
    diameter = particles.create_dataset("diameter",
                                        data=np.asarray(system.diameters, dtype=np.float64))
    diameter.attrs["unit"] = fixed_string(LENGTH_UNIT)


def _write_potential(handle: h5py.File, potential: Mapping | None) -> None:
    if potential is None:
        return
    if "kind" not in potential:
        raise ValueError("potential needs a 'kind' entry, e.g. {'kind': 'soft_sphere', ...}")
    group = handle.require_group("parameters").create_group("potential")
    for key, value in potential.items():
        group.attrs[str(key)] = encode(value, f"/parameters/potential attribute {key}")


def write_packing(
    path: str | os.PathLike,
    system: ParticleSystem,
    *,
    potential: Mapping | None = None,
    author: str | None = None,
    creator: Any = None,
    group: str = PARTICLES_GROUP,
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
    with atomic_h5(path) as handle:
        write_h5md_header(handle, author, creator)
        write_particles(handle, system, group, time_dependent)
        _write_potential(handle, potential)
    return Path(path)
