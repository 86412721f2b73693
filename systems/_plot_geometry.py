"""Periodic images for the response figure (:mod:`systems.plots`): numpy only.

A disk that crosses an edge of the periodic box is drawn again on the opposite side, and an
arrow that crosses an edge is drawn again from there (wrapped, not cut). Both work in a box
of edges ``box`` or in a sheared 2D cell (columns ``cell``, corner ``origin``), the latter in
fractional coordinates, where the cell is the unit square (a linear map keeps segments
segments).
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["arrow_images", "disk_images"]

_SHIFTS = [s for s in itertools.product((-1.0, 0.0, 1.0), repeat=2) if s != (0.0, 0.0)]


def disk_images(positions: np.ndarray, radii: np.ndarray, box: np.ndarray,
                cell: np.ndarray | None = None,
                origin: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centres (and particle indices) of the periodic images of the disks that cross the
    edges, so that a particle cut by an edge shows its other part on the opposite side.

    In a sheared cell a disk reaches an edge when its fractional coordinate is within
    radius / width of it."""
    if cell is None:
        return _images(positions, radii[:, None], box)
    inverse = np.linalg.inv(cell)
    reach = radii[:, None] * np.linalg.norm(inverse, axis=1)[None, :]  # radius / width
    centres, indices = _images((positions - origin) @ inverse.T, reach, np.ones(2))
    return origin + centres @ cell.T, indices


def _images(positions: np.ndarray, reach: np.ndarray,
            box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centres, indices = [], []
    for shift in _SHIFTS:
        shifted = positions + np.asarray(shift) * box
        inside = np.all((shifted + reach > 0) & (shifted - reach < box), axis=1)
        centres.append(shifted[inside])
        indices.append(np.flatnonzero(inside))
    return np.concatenate(centres), np.concatenate(indices)


def arrow_images(tails: np.ndarray, vectors: np.ndarray, box: np.ndarray,
                 cell: np.ndarray | None = None,
                 origin: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """The arrows plus, for those that cross a periodic edge, their images shifted by whole
    box (cell) vectors that pass through the box. Returns (tails, vectors, number of
    images)."""
    if cell is None:
        return _wrapped_arrows(tails, vectors, box)
    inverse = np.linalg.inv(cell)
    frac_tails, frac_vectors, images = _wrapped_arrows(
        (tails - origin) @ inverse.T, vectors @ inverse.T, np.ones(2))
    return origin + frac_tails @ cell.T, frac_vectors @ cell.T, images


def _wrapped_arrows(tails: np.ndarray, vectors: np.ndarray,
                    box: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    all_tails, all_vectors = [tails], [vectors]
    for shift in _SHIFTS:
        shifted = tails + np.asarray(shift) * box
        hit = _segments_enter_box(shifted, shifted + vectors, box)
        all_tails.append(shifted[hit])
        all_vectors.append(vectors[hit])
    images = sum(len(t) for t in all_tails[1:])
    return np.concatenate(all_tails), np.concatenate(all_vectors), images


def _segments_enter_box(start: np.ndarray, end: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Whether each segment ``start -> end`` (``[M][2]``) passes through the open box
    ``(0, L)`` (Liang-Barsky clipping)."""
    low = np.zeros(len(start))
    high = np.ones(len(start))
    delta = end - start
    for axis in range(start.shape[1]):
        sides = ((-delta[:, axis], start[:, axis]), (delta[:, axis], box[axis] - start[:, axis]))
        for p, q in sides:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = q / p
            parallel = p == 0
            high = np.where(parallel & (q <= 0), -1.0, high)  # parallel and outside
            low = np.where(~parallel & (p < 0), np.maximum(low, ratio), low)
            high = np.where(~parallel & (p > 0), np.minimum(high, ratio), high)
    return low < high
