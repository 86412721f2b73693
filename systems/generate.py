"""Random bidisperse packings: the starting configurations of the paper's experiment.

The standard glass-forming mixture of soft-sphere jamming studies (O'Hern et al., Phys.
Rev. E 68, 011306, 2003): half the particles have diameter 1.0 (species 0), half 1.4
(species 1), placed uniformly at random in a periodic cuboid (or, with ``tilt``, sheared)
box sized for the requested packing fraction. The particles overlap; the relaxation (FIRE)
happens later.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ._system import ParticleSystem, particle_volume, thin_cell_problem
from .settings import PACKING

__all__ = ["random_packing", "tilt_matrix", "TILTS"]


def random_packing(
    n: int,
    dim: int = PACKING["dim"],
    phi: float = PACKING["phi"],
    seed: int = PACKING["seed"],
    size_ratio: float = PACKING["size_ratio"],
    small_diameter: float = 1.0,
    tilt: Mapping[str, float] | None = None,
) -> ParticleSystem:
    """A random bidisperse 50:50 packing in a periodic square (cubic) box.

    The box edge ``L`` gives the packing fraction ``phi`` exactly (up to rounding):
    ``phi = sum_i v(d_i) / L**dim`` with ``v(d) = π d²/4`` (disks, 2D) or ``π d³/6``
    (spheres, 3D). Particles ``0 .. n//2 - 1`` are small (species 0, diameter
    ``small_diameter``), the rest large (species 1, ``size_ratio * small_diameter``); for
    odd ``n`` there is one more large particle. Positions are uniform in ``[0, L)^dim``,
    drawn from ``numpy.random.default_rng(seed)``.

    Args:
        n: number of particles (>= 1).
        dim: 2 (disks) or 3 (spheres).
        phi: packing fraction, > 0.
        seed: random seed; the same arguments give the same packing.
        size_ratio: large over small diameter (> 0).
        small_diameter: the small diameter (> 0).
        tilt: a sheared (triclinic) cell: LAMMPS-style tilt factors ``{"xy": t, "xz": t,
            "yz": t}`` (2D: ``xy`` only) in units of the edge ``L``: the cell matrix is
            ``L (I + T)`` with ``T[a, b] = t_ab`` above the diagonal, e.g. ``xy`` moves the
            second cell vector by ``t L`` along x. Its volume is still ``L**dim``, so
            ``phi`` is unchanged; positions are uniform in fractional coordinates.

    Returns:
        A periodic :class:`~systems.ParticleSystem`.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    if not (math.isfinite(phi) and phi > 0):
        raise ValueError(f"phi must be a positive packing fraction, got {phi!r}")
    if not (math.isfinite(size_ratio) and size_ratio > 0):
        raise ValueError(f"size_ratio must be a finite number > 0, got {size_ratio!r}")
    if not (math.isfinite(small_diameter) and small_diameter > 0):
        raise ValueError(f"small_diameter must be a finite number > 0, got {small_diameter!r}")
    from ._h5 import max_read_bytes

    if n * dim * 8 > max_read_bytes():  # the positions alone: no reader of ours would load them
        raise ValueError(f"n = {n} particles: their positions alone take "
                         f"{n * dim * 8 / 2**30:.1f} GiB, more than this machine reads "
                         f"(limit {max_read_bytes() / 2**30:.1f} GiB, a quarter of its memory)")
    n = int(n)
    n_small = n // 2
    species = np.zeros(n, dtype=np.int32)
    species[n_small:] = 1
    diameters = np.where(species == 0, small_diameter, small_diameter * size_ratio).astype(np.float64)
    with np.errstate(over="ignore"):  # an overflow is refused just below, in one line
        edge = (particle_volume(diameters, dim) / phi) ** (1.0 / dim)
    if not (math.isfinite(edge) and edge > 0):
        raise ValueError(f"the box edge for diameters {small_diameter!r} and "
                         f"{small_diameter * size_ratio!r} at phi {phi!r} is {edge!r}, not a "
                         "finite length > 0; use diameters nearer 1")
    box = np.full(dim, edge, dtype=np.float64)
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0.0, 1.0, size=(n, dim)) * box
    positions = np.where(positions >= box, 0.0, positions)
    if tilt:
        box = edge * tilt_matrix(tilt, dim)
        positions = positions / edge @ box.T  # the same fractional coordinates
    return ParticleSystem(
        positions=positions, diameters=diameters, species=species, box=box, periodic=True
    )


#: The tilt factors of a sheared cell, and the matrix entry (row, column) each one sets.
TILTS = {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2)}


def tilt_matrix(tilt: Mapping[str, float], dim: int) -> np.ndarray:
    """``I + T``: the unit upper-triangular cell of tilt factors ``{"xy": t, ...}``
    (``ValueError`` naming the factor for an unknown or, in 2D, a z factor, or a
    non-finite value)."""
    cell = np.eye(dim)
    for name, value in tilt.items():
        if name not in TILTS or max(TILTS[name]) >= dim:
            known = [k for k, (a, b) in TILTS.items() if b < dim]
            raise ValueError(f"tilt {name!r}: expected one of {known} for a {dim}D box")
        if not math.isfinite(float(value)):
            raise ValueError(f"tilt {name!r} = {value!r}: expected a finite number")
        cell[TILTS[name]] = float(value)
    return cell


def sheared_cell_problem(system: ParticleSystem) -> str | None:
    """A phrase when ``system``'s sheared (triclinic) cell is too thin for its largest
    particle (see :func:`systems._system.thin_cell_problem`), else ``None``."""
    if system.box.ndim != 2:
        return None
    return thin_cell_problem(system.box, float(system.diameters.max()))
