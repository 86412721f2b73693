"""``sensitivity export``: a result file in a format visualisation tools read.

``extxyz`` (extended XYZ) is read by ASE (``ase.io.read``) and OVITO (and, as plain XYZ, by
VMD and MDAnalysis). One frame: the relaxed packing, the box as ``Lattice`` (its cell vectors,
so a sheared cell reads back as the same cell in ASE), and per atom:

- ``species`` (a chemical symbol, ASE needs one: the s-th species, in increasing order of
  label, -> element of atomic number s + 1, H, He, Li, ...), ``pos`` (x*, float64 written
  to 17 significant digits, so every number reads back exactly), ``species_id`` (the
  species as the input file labels it), ``diameter`` and ``radius`` (OVITO draws particles
  with the ``radius`` property), ``rattler`` (logical);
- per scalar θ ``<name>``: ``dx_dtheta_<name>`` (the response ∂x*_i/∂θ, 3 components) and
  ``abs_dx_dtheta_<name>`` (its magnitude, for a colour map). Rattler rows, NaN in the
  result file (undefined response), are written as 0 with ``rattler`` = T.

A θ with P components (``[P][N][d]``) has P vectors per particle: it is left out (said on
stderr); read it from the result file. A 2D packing is padded with z = 0 and a third
lattice vector of one maximum diameter, not periodic (``pbc="T T F"``). The comment line
also carries ``energy``, each θ's value (``theta_<name>``) and the units.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

__all__ = ["FORMATS", "export_extxyz"]

FORMATS = ("extxyz",)

_SYMBOLS = ("H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn "
            "Ga Ge As Se Br Kr").split()


def _number(value: float) -> str:
    return repr(float(value)) if np.isfinite(value) else "0.0"


def _property_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name)


def _quoted(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def export_extxyz(result, path: str | os.PathLike) -> tuple[Path, list[str]]:
    """Write ``result`` (a :class:`systems.io.Result`) as extended XYZ (atomically).

    Returns:
        ``(path, skipped)``: the file written and the θ names left out (vector θs).
    """
    system = result.system
    n, dim = system.n, system.dim
    if int(system.species.max(initial=0)) >= len(_SYMBOLS):
        raise ValueError(f"extxyz export names at most {len(_SYMBOLS)} species")
    positions = np.zeros((n, 3))
    positions[:, :dim] = system.positions
    lattice = np.zeros((3, 3))
    if system.box is not None:  # extxyz's Lattice: the cell vectors, one after another
        box = np.asarray(system.box, np.float64)
        lattice[:dim, :dim] = box.T if box.ndim == 2 else np.diag(box)
    if dim == 2:
        lattice[2, 2] = float(system.diameters.max())
    pbc = ["T" if system.periodic else "F"] * dim + (["F"] if dim == 2 else [])

    columns = [("species", "S", 1), ("pos", "R", 3), ("species_id", "I", 1),
               ("diameter", "R", 1), ("radius", "R", 1), ("rattler", "L", 1)]
    fields: list[np.ndarray] = []
    skipped = []
    info = {}
    for name in result.names:
        response = result.response(name)
        if response.vector:
            skipped.append(name)
            continue
        key = _property_name(name)
        field = np.zeros((n, 3))
        field[:, :dim] = np.nan_to_num(response.dx_dtheta, nan=0.0)
        columns += [(f"dx_dtheta_{key}", "R", 3), (f"abs_dx_dtheta_{key}", "R", 1)]
        fields += [field, np.nan_to_num(response.magnitudes(), nan=0.0)[:, None]]
        if response.theta is not None:
            info[f"theta_{key}"] = _number(response.theta)
            info[f"theta_unit_{key}"] = _quoted(response.theta_unit)
            info[f"dx_dtheta_unit_{key}"] = _quoted(response.unit)
    energy = result.relaxation.energy
    header = [
        "Lattice=" + _quoted(" ".join(_number(v) for v in lattice.reshape(-1))),
        "Properties=" + ":".join(f"{name}:{kind}:{width}" for name, kind, width in columns),
        "pbc=" + _quoted(" ".join(pbc)),
    ]
    if isinstance(energy, (int, float)) and not isinstance(energy, bool):
        header.append(f"energy={_number(energy)}")
    header += [f"{key}={value}" for key, value in info.items()]
    header.append("units=" + _quoted("reduced: length sigma, energy epsilon"))

    rattlers = np.asarray(result.rattlers, dtype=bool)
    labels = np.asarray(system.labelled_species).tolist()
    lines = [str(n), " ".join(header)]
    for i in range(n):
        cells = [_SYMBOLS[int(system.species[i])]]
        cells += [_number(v) for v in positions[i]]
        cells += [str(labels[i]), _number(system.diameters[i]),
                  _number(system.diameters[i] / 2), "T" if rattlers[i] else "F"]
        for field in fields:
            cells += [_number(v) for v in field[i]]
        lines.append(" ".join(cells))
    from sensitivity.systems import atomic_write_text

    path = atomic_write_text(path, "\n".join(lines) + "\n")
    return path, skipped
