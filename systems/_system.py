"""The particle system: positions, diameters, species and a box.

A :class:`ParticleSystem` is a plain, immutable container of NumPy arrays -- the exchange
format between file IO (:mod:`systems.io`), the generator (:mod:`systems.generate`) and the
physics modules. It does no physics itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

__all__ = ["ParticleSystem", "wrap_positions", "cell_matrix", "box_volume", "is_triclinic",
           "minimum_image", "perpendicular_widths"]


def is_triclinic(box) -> bool:
    """Whether ``box`` is a cell matrix ``(d, d)`` (a general parallelepiped) rather than the
    edge lengths ``(d,)`` of an orthorhombic box."""
    return box is not None and np.ndim(box) == 2


def cell_matrix(box) -> np.ndarray:
    """The ``(d, d)`` cell matrix ``H`` of ``box``: its columns are the cell vectors (H5MD's
    ``box/edges`` convention); ``diag(L)`` for edge lengths ``L``."""
    box = np.asarray(box, dtype=np.float64)
    return box if box.ndim == 2 else np.diag(box)


def box_volume(box) -> float:
    """Volume (area in 2D) of the periodic cell, ``det H`` (``prod L`` for edge lengths)."""
    box = np.asarray(box, dtype=np.float64)
    return float(np.linalg.det(box)) if box.ndim == 2 else float(np.prod(box))


def perpendicular_widths(box) -> np.ndarray:
    """``(d,)`` distances between opposite faces of the cell, ``1 / |row k of H⁻¹|`` (the
    edge lengths for an orthorhombic box). A pair closer than half the smallest width has
    exactly one periodic image that close, the one fractional rounding finds."""
    box = np.asarray(box, dtype=np.float64)
    if box.ndim == 1:
        return box.copy()
    return 1.0 / np.linalg.norm(np.linalg.inv(box), axis=1)


def box_problem(box, dim: int) -> str | None:
    """What is wrong with ``box`` as the periodic cell of a ``dim``-dimensional system (a
    phrase naming what was expected), or ``None`` when it is a valid cell: finite edge
    lengths ``> 0`` ``(d,)``, or a ``(d, d)`` cell matrix (columns = cell vectors) with
    ``det H > 0`` (not degenerate, right-handed)."""
    box = np.asarray(box, dtype=np.float64)
    if box.shape not in ((dim,), (dim, dim)):
        return f"has shape {box.shape}, expected ({dim},) or ({dim}, {dim})"
    if not np.all(np.isfinite(box)):
        return f"= {box.tolist()}, expected finite values"
    if box.ndim == 1:
        if np.any(box <= 0):
            return f"= {box.tolist()}, expected finite edge lengths > 0"
        return None
    det = float(np.linalg.det(box))
    scale = float(np.prod(np.linalg.norm(box, axis=0)))
    if not det > 1e-12 * scale:
        kind = "left-handed" if det < -1e-12 * scale else "degenerate"
        return (f"= {box.tolist()} is a {kind} cell (det = {det:.6g}), expected cell vectors "
                "(the columns) with det > 0")
    return None


def thin_cell_problem(box, cutoff: float) -> str | None:
    """A phrase when the cell is too thin for pairs interacting up to ``cutoff`` (a face
    distance below ``2 × cutoff``: a particle would meet two images of a neighbour, or
    fractional rounding would miss the nearest image), else ``None``."""
    widths = perpendicular_widths(box)
    if np.min(widths) >= 2.0 * cutoff:
        return None
    return (f"is too thin for the interaction range {cutoff:.6g}: its perpendicular widths "
            f"{np.round(widths, 6).tolist()} must all be at least 2 x {cutoff:.6g}; use a "
            "larger box or a less tilted cell")


def minimum_image(delta: np.ndarray, box) -> np.ndarray:
    """Displacements ``delta`` ``(..., d)`` moved by whole cell vectors to their fractional
    coordinates' nearest integer (the minimum image for distances below half the smallest
    perpendicular width, :func:`perpendicular_widths`)."""
    delta = np.asarray(delta, dtype=np.float64)
    box = np.asarray(box, dtype=np.float64)
    if box.ndim == 1:
        return delta - box * np.round(delta / box)
    frac = delta @ np.linalg.inv(box).T
    return delta - np.round(frac) @ box.T


def wrap_positions(positions: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Wrap ``positions`` ``(n, d)`` into the periodic cell: ``[0, L)`` along every axis of
    edge lengths ``box`` ``(d,)``, or fractional coordinates in ``[0, 1)`` for a cell matrix
    ``box`` ``(d, d)`` (columns = cell vectors).

    ``np.mod`` can round a tiny negative coordinate up to exactly ``L`` (or 1); such values
    are mapped to 0 (the same point modulo ``L``) so the result is always strictly below.
    """
    box = np.asarray(box, dtype=np.float64)
    if box.ndim == 2:
        positions = np.asarray(positions, dtype=np.float64)
        frac = positions @ np.linalg.inv(box).T
        inside = np.all((frac >= 0.0) & (frac < 1.0), axis=-1, keepdims=True)
        frac = np.mod(frac, 1.0)
        frac = np.where(frac >= 1.0, 0.0, frac)
        # points already in the cell stay bit for bit (a written packing reads back equal)
        return np.where(inside, positions, frac @ box.T)
    wrapped = np.mod(np.asarray(positions, dtype=np.float64), box)
    return np.where(wrapped >= box, 0.0, wrapped)


@dataclasses.dataclass(frozen=True, eq=False)
class ParticleSystem:
    """A configuration of ``n`` spherical particles in ``d`` = 2 or 3 dimensions.

    Attributes:
        positions: ``(n, d)`` float64 particle centres. For a periodic box they lie in
            ``[0, L)`` along each axis (wrap them with :func:`wrap_positions`).
        diameters: ``(n,)`` float64, positive.
        species: ``(n,)`` int32 species *codes*, values ``0 .. n_species - 1`` (a species may
            be absent).
        species_labels: ``(n_species,)`` the label of each code as the input file wrote it
            (``None``: the labels are the codes). Files may label species by any integers
            (LAMMPS types start at 1, a file may use 7 and 100000): the reader maps the
            sorted distinct labels to codes 0..S-1, so per-species matrices are S×S whatever
            the labels, and writers write the labels back.
        box: ``(d,)`` float64 edge lengths of a cuboid box, or a ``(d, d)`` cell matrix
            whose columns are the cell vectors (a triclinic, sheared box; a diagonal matrix
            is stored as its diagonal, so orthorhombic boxes take one code path), or
            ``None`` for free (non-periodic) boundaries.
        periodic: ``True`` for a periodic box.

    The constructor converts the arrays to these dtypes and checks their shapes
    (``ValueError`` on a mismatch: a programming error, not a user input error -- files are
    validated by :func:`systems.io.read_packing`, which raises ``InputError``).
    """

    positions: np.ndarray
    diameters: np.ndarray
    species: np.ndarray
    box: np.ndarray | None
    periodic: bool
    species_labels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        positions = np.array(self.positions, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] not in (2, 3):
            raise ValueError(f"positions must have shape (n, 2) or (n, 3), got {positions.shape}")
        n, dim = positions.shape
        diameters = np.array(self.diameters, dtype=np.float64)
        if diameters.shape != (n,):
            raise ValueError(f"diameters must have shape ({n},), got {diameters.shape}")
        species = np.array(self.species)
        if species.shape != (n,):
            raise ValueError(f"species must have shape ({n},), got {species.shape}")
        if species.size and (
            not np.all(np.equal(np.mod(species, 1), 0)) or np.min(species) < 0
        ):
            raise ValueError("species must be non-negative integers")
        species = species.astype(np.int32)
        box = self.box
        if box is not None:
            box = np.array(box, dtype=np.float64)
            if box.shape == (dim, dim) and np.array_equal(box, np.diag(np.diag(box))):
                box = np.diag(box).copy()  # orthorhombic: the edge-length form
            if box.shape not in ((dim,), (dim, dim)):
                raise ValueError(f"box must have shape ({dim},) or ({dim}, {dim}), "
                                 f"got {box.shape}")
        periodic = bool(self.periodic)
        if periodic and box is None:
            raise ValueError("a periodic system needs box edge lengths")
        for array in (positions, diameters, species, box):
            if array is not None:
                array.setflags(write=False)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "diameters", diameters)
        object.__setattr__(self, "species", species)
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "periodic", periodic)
        labels = self.species_labels
        if labels is not None:
            labels = tuple(int(label) for label in labels)
            if labels == tuple(range(len(labels))):
                labels = None  # the identity: nothing to remember
            elif species.size and int(species.max()) >= len(labels):
                raise ValueError(f"species codes go up to {int(species.max())} but only "
                                 f"{len(labels)} labels were given")
        object.__setattr__(self, "species_labels", labels)

    @property
    def n(self) -> int:
        """Number of particles."""
        return int(self.positions.shape[0])

    @property
    def dim(self) -> int:
        """Spatial dimension (2 or 3)."""
        return int(self.positions.shape[1])

    @property
    def n_species(self) -> int:
        """Number of species, ``max(species) + 1`` (0 for an empty system)."""
        return int(self.species.max()) + 1 if self.n else 0

    def species_code(self, label: int) -> int | None:
        """The code of species ``label`` (as the input file named it), None if absent."""
        if self.species_labels is None:
            return int(label) if 0 <= int(label) < self.n_species else None
        try:
            return self.species_labels.index(int(label))
        except ValueError:
            return None

    def species_label(self, code: int) -> int:
        """The file's label of species ``code``."""
        return int(code) if self.species_labels is None else self.species_labels[int(code)]

    @property
    def labelled_species(self) -> np.ndarray:
        """``(n,)`` the species as the input file labelled them."""
        if self.species_labels is None:
            return self.species
        return np.asarray(self.species_labels, dtype=np.int64)[self.species]

    @property
    def particle_volume(self) -> float:
        """Total volume of the particles: disks (2D, π d²/4) or spheres (3D, π d³/6)."""
        return particle_volume(self.diameters, self.dim)

    @property
    def packing_fraction(self) -> float | None:
        """Particle volume over box volume φ (``None`` without a box)."""
        if self.box is None:
            return None
        return self.particle_volume / box_volume(self.box)

    def replace(self, **changes) -> "ParticleSystem":
        """A copy with some fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParticleSystem):
            return NotImplemented
        same_box = (self.box is None and other.box is None) or (
            self.box is not None and other.box is not None and np.array_equal(self.box, other.box)
        )
        return (
            self.periodic == other.periodic
            and same_box
            and np.array_equal(self.positions, other.positions)
            and np.array_equal(self.diameters, other.diameters)
            and np.array_equal(self.species, other.species)
            and self.species_labels == other.species_labels
        )

    __hash__ = None  # arrays are not hashable

    def __repr__(self) -> str:
        box = None if self.box is None else self.box.tolist()
        return (
            f"ParticleSystem(n={self.n}, dim={self.dim}, n_species={self.n_species}, "
            f"box={box}, periodic={self.periodic})"
        )


def particle_volume(diameters: np.ndarray, dim: int) -> float:
    """Total volume of disks (``dim`` = 2) or spheres (``dim`` = 3) with these diameters."""
    diameters = np.asarray(diameters, dtype=np.float64)
    if dim == 2:
        return float(math.pi / 4.0 * np.sum(diameters**2))
    if dim == 3:
        return float(math.pi / 6.0 * np.sum(diameters**3))
    raise ValueError(f"dim must be 2 or 3, got {dim}")


#: Two particles closer than this fraction of their mean diameter are *coincident*: the pair
#: force has no direction at r = 0 and, just above it, is dominated by the round-off of the
#: positions; such an input is refused (:func:`coincident_pairs`). Uniformly random positions
#: of a million particles come this close with probability ~1e-6.
COINCIDENT_FRACTION = 1e-6


#: Up to this many particles, :func:`pairs_within` compares every pair with NumPy (exact, and
#: no ``scipy.spatial`` import, 0.2 s, for the small packings most runs and tests use).
BRUTE_FORCE_MAX = 1024


def _squared_distances(a: np.ndarray, b: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """``(len(a), len(b))`` squared (minimum-image) distances between points wrapped into
    the cell. With edge lengths, axis by axis: for wrapped coordinates ``|Δ| < L``, so the
    minimum image's ``|Δ - L round(Δ/L)|`` is ``min(|Δ|, L - |Δ|)``, the same float (0.55
    against 5.4 ms for N = 256: rounding the ``(n, n, d)`` displacements is the slow part)."""
    if box is not None and box.ndim == 2:
        d = minimum_image(a[:, None, :] - b[None, :, :], box)
        return np.einsum("ijk,ijk->ij", d, d)
    total = None
    for k in range(a.shape[1]):
        dk = np.abs(a[:, None, k] - b[None, :, k])
        if box is not None:
            np.minimum(dk, box[k] - dk, out=dk)
        dk *= dk
        total = dk if total is None else np.add(total, dk, out=total)
    return total


def pairs_within(positions: np.ndarray, reach: float, box: np.ndarray | None = None
                 ) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, at (minimum-image) distance ``<= reach``, as an
    ``[P, 2]`` int64 array sorted by ``(i, j)``.

    Periodic when ``box`` is given (edge lengths or a sheared cell's matrix). Every pair is
    compared directly for small systems, or when ``reach`` is half a box edge (half the
    smallest perpendicular width) or more; otherwise a ``scipy.spatial.cKDTree`` finds them
    (with ``boxsize`` for edge lengths; over the particles' images in the neighbouring cells
    for a sheared cell).
    """
    y = np.asarray(positions, dtype=np.float64)
    n = y.shape[0]
    if box is not None:
        box = np.asarray(box, dtype=np.float64)
        y = wrap_positions(y, box)
    if box is not None and box.ndim == 2:  # a sheared cell: half its smallest width
        too_far = not reach < 0.5 * float(np.min(perpendicular_widths(box)))
    else:
        too_far = box is not None and not np.all(reach < 0.5 * box)
    brute = n <= BRUTE_FORCE_MAX or too_far
    if brute:
        ij = []
        for start in range(0, n, 512):  # bounded memory: 512 rows of the distance matrix
            i = np.arange(start, min(start + 512, n))
            d = y[i, None, :] - y[None, :, :]
            if box is not None:
                d = minimum_image(d, box)
            rows, cols = np.nonzero((np.einsum("ijk,ijk->ij", d, d) <= reach * reach)
                                    & (i[:, None] < np.arange(n)[None, :]))
            ij.append(np.stack([i[rows], cols], axis=-1))
        ij = np.concatenate(ij).astype(np.int64) if ij else np.zeros((0, 2), np.int64)
    elif box is not None and box.ndim == 2:
        # no periodic k-d tree for a sheared cell: the particles and their images in the
        # 3^d neighbouring cells, searched from the particles (a pair within reach, below
        # half the smallest width, has exactly one such image)
        from scipy.spatial import cKDTree

        shifts = np.array(list(itertools.product((-1.0, 0.0, 1.0), repeat=y.shape[1])))
        images = (y[None, :, :] + (shifts @ box.T)[:, None, :]).reshape(-1, y.shape[1])
        found = cKDTree(y).sparse_distance_matrix(cKDTree(images), reach,
                                                  output_type="ndarray")
        i = found["i"].astype(np.int64)
        j = found["j"].astype(np.int64) % n
        keep = i < j
        ij = np.stack([i[keep], j[keep]], axis=-1).astype(np.int64)
    else:
        from scipy.spatial import cKDTree

        tree = cKDTree(y, boxsize=box) if box is not None else cKDTree(y)
        ij = tree.query_pairs(reach, output_type="ndarray").astype(np.int64)
    # sorted by (i, j): one integer sort (numpy's lexsort of two keys is 4x slower)
    key = np.sort(np.minimum(ij[:, 0], ij[:, 1]) * n + np.maximum(ij[:, 0], ij[:, 1]))
    return np.stack([key // n, key % n], axis=-1)


def coincident_pairs(system: "ParticleSystem", fraction: float = COINCIDENT_FRACTION,
                     limit: int = 5) -> tuple[list[tuple[int, int, float]], int]:
    """Pairs of particles closer than ``fraction`` of their mean diameter (minimum image).

    Returns:
        ``(pairs, count)``: up to ``limit`` ``(i, j, distance)`` triples, closest first, and
        the number of such pairs (``([], 0)`` when none).
    """
    positions = np.asarray(system.positions, dtype=np.float64)
    reach = fraction * float(np.max(system.diameters))
    box = np.asarray(system.box, dtype=np.float64) if system.periodic else None
    pairs = pairs_within(positions, reach, box)
    if not len(pairs):
        return [], 0
    i, j = pairs[:, 0], pairs[:, 1]
    delta = positions[i] - positions[j]
    if box is not None:
        delta = minimum_image(delta, box)
    distance = np.linalg.norm(delta, axis=1)
    mean = 0.5 * (system.diameters[i] + system.diameters[j])
    close = np.flatnonzero(distance < fraction * mean)
    order = close[np.argsort(distance[close], kind="stable")][:limit]
    return [(int(i[k]), int(j[k]), float(distance[k])) for k in order], int(close.size)
