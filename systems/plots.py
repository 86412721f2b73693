"""Figures of a sensitivity result: the packing with its response arrows, and magnitudes.

* :func:`plot_response` -- the paper's figure: particles drawn as disks (with their periodic
  images where they cross the box edges), an arrow ``dx*_i/dθ`` on every particle, rattlers
  in grey without an arrow.
* :func:`plot_magnitudes` -- the histogram of the per-particle magnitudes ``|dx*_i/dθ|``
  (rattlers excluded).
* :func:`plot_result` -- both figures for every parameter of a result, as PNG files.

Matplotlib is imported inside the functions and used through its object-oriented API with
the Agg canvas, so importing this module is instant and no global backend is changed.
Files are written atomically (temporary name in the same folder, then renamed).
"""

from __future__ import annotations

import itertools
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import InputError
from ._system import ParticleSystem
from .io import Result

__all__ = ["plot_magnitudes", "plot_response", "plot_result"]

_SPECIES_COLORS = ("#9ecae1", "#fdae6b", "#a1d99b", "#bcbddc", "#fa9fb5", "#c7e9c0")
_RATTLER_COLOR = "#bdbdbd"
_ARROW_COLOR = "#08306b"


# --------------------------------------------------------------------------------------
# inputs


def _unpack(source: Any, name: str | None) -> tuple[ParticleSystem, np.ndarray, np.ndarray, str]:
    """(system, dx_dtheta, rattlers, name) from a Result or a mapping of arrays.

    A mapping holds ``dx_dtheta`` and either ``system`` (a ParticleSystem) or ``positions``,
    ``diameters`` and optionally ``box`` (periodic when given) and ``species``; ``rattlers``
    is optional (default: the rows of ``dx_dtheta`` that are NaN).
    """
    if isinstance(source, Result):
        if name is None:
            if not source.names:
                raise InputError(f"{source.path or 'result'}: /sensitivity holds no responses to plot")
            name = source.names[0]
        if name not in source.responses:
            available = ", ".join(source.names) or "none"
            raise InputError(
                f"{source.path or 'result'}: /sensitivity/{name} is missing, expected one of: {available}"
            )
        return source.system, np.asarray(source.dx_dtheta(name)), np.asarray(source.rattlers), name
    if not isinstance(source, Mapping):
        raise TypeError("plot source must be a Result or a mapping of arrays")
    if "system" in source:
        system = source["system"]
    else:
        box = source.get("box")
        positions = np.asarray(source["positions"], dtype=np.float64)
        system = ParticleSystem(
            positions=positions,
            diameters=source.get("diameters", np.ones(len(positions))),
            species=source.get("species", np.zeros(len(positions), dtype=np.int32)),
            box=box,
            periodic=box is not None,
        )
    dx_dtheta = np.asarray(source["dx_dtheta"], dtype=np.float64)
    rattlers = source.get("rattlers")
    if rattlers is None:
        rows = dx_dtheta if dx_dtheta.ndim == 2 else dx_dtheta.reshape(-1, *dx_dtheta.shape[-2:])[0]
        rattlers = np.isnan(rows).any(axis=-1)
    return system, dx_dtheta, np.asarray(rattlers, dtype=bool), name or "θ"


def _select_component(
    dx_dtheta: np.ndarray, rattlers: np.ndarray, component: int | None
) -> tuple[np.ndarray, str]:
    """The ``[N][d]`` field to draw and how to describe it in a title."""
    if dx_dtheta.ndim == 2:
        return dx_dtheta, ""
    count = dx_dtheta.shape[0]
    if component is not None:
        if not -count <= component < count:
            raise InputError(f"component {component} out of range for {count} components of θ")
        return dx_dtheta[component], f"component {component % count} of {count}"
    backbone = np.nan_to_num(dx_dtheta[:, ~rattlers], nan=0.0)
    norms = np.sqrt(np.sum(backbone**2, axis=(1, 2)))
    if norms.size and np.max(norms) > 0:
        best = int(np.argmax(norms))
        return dx_dtheta[best], f"component {best} of {count} (largest norm)"
    return dx_dtheta[0], f"component 0 of {count} (first; all zero)"


def _magnitudes(field: np.ndarray, rattlers: np.ndarray) -> np.ndarray:
    return np.linalg.norm(field[~rattlers], axis=-1)


# --------------------------------------------------------------------------------------
# output


def _new_figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike) -> Path:
    """Save a figure as PNG atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        figure.savefig(tmp_name, format="png")
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp_name, 0o666 & ~mask)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    return path


def _periodic_images(
    positions: np.ndarray, radii: np.ndarray, box: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Centres (and particle indices) of the periodic images of the disks that cross the box
    edges, so that a particle cut by an edge shows its other part on the opposite side."""
    centres, indices = [], []
    for shift in itertools.product((-1.0, 0.0, 1.0), repeat=2):
        if shift == (0.0, 0.0):
            continue
        shifted = positions + np.asarray(shift) * box
        inside = np.all((shifted + radii[:, None] > 0) & (shifted - radii[:, None] < box), axis=1)
        centres.append(shifted[inside])
        indices.append(np.flatnonzero(inside))
    return np.concatenate(centres), np.concatenate(indices)


def plot_response(
    source: Result | Mapping,
    name: str | None = None,
    path: str | os.PathLike = "response.png",
    *,
    component: int | None = None,
    arrow_length: float | None = None,
) -> Path:
    """Draw the packing as disks with an arrow ``dx*_i/dθ`` on each particle (PNG).

    Args:
        source: a :class:`~systems.io.Result`, or a mapping with ``dx_dtheta`` (``[N][d]`` or
            ``[P][N][d]``), ``system`` or ``positions``/``diameters``/``box``, and optionally
            ``rattlers`` (``[N]`` bool; default: NaN rows).
        name: the parameter (for a Result: which response; default the first).
        path: the PNG to write.
        component: for a θ with P components, which one to draw; default the one whose
            response has the largest norm (named in the title).
        arrow_length: drawn length of the longest arrow in length units (default: the mean
            diameter). Arrows are all scaled by the same factor, given in the title.

    Particles are coloured by species; rattlers are grey and carry no arrow. In a periodic
    box the disks crossing an edge are drawn again on the opposite side. For 3D packings the
    figure is the projection onto the x-y plane (said in the title).

    Returns:
        The path written.
    """
    from matplotlib.collections import EllipseCollection
    from matplotlib.patches import Rectangle

    system, dx_dtheta, rattlers, name = _unpack(source, name)
    field, which = _select_component(dx_dtheta, rattlers, component)
    positions = system.positions[:, :2]
    diameters = system.diameters
    box = None if system.box is None else system.box[:2]
    order = np.argsort(system.positions[:, 2]) if system.dim == 3 else np.arange(system.n)

    colors = np.array([_SPECIES_COLORS[s % len(_SPECIES_COLORS)] for s in system.species], dtype=object)
    colors[rattlers] = _RATTLER_COLOR
    centres, particle = positions[order], order
    if system.periodic and box is not None:
        image_centres, image_particle = _periodic_images(positions, diameters / 2, box)
        centres = np.concatenate([centres, image_centres])
        particle = np.concatenate([particle, image_particle])

    extent = box if box is not None else np.ptp(positions, axis=0) + 2 * diameters.max()
    aspect = float(extent[1] / extent[0]) if extent[0] > 0 else 1.0
    figure = _new_figure((6.0, max(2.5, min(12.0, 6.0 * aspect)) + 0.6))
    axes = figure.add_subplot()
    axes.add_collection(
        EllipseCollection(
            diameters[particle],
            diameters[particle],
            np.zeros(len(particle)),
            units="xy",
            offsets=centres,
            offset_transform=axes.transData,
            facecolors=list(colors[particle]),
            edgecolors="#525252",
            linewidths=0.4,
            alpha=0.8 if system.dim == 3 else 1.0,
        )
    )

    backbone = ~rattlers & np.all(np.isfinite(field), axis=1)
    vectors = field[backbone, :2]
    lengths = np.linalg.norm(vectors, axis=1)
    longest = float(lengths.max()) if lengths.size else 0.0
    target = float(np.mean(diameters)) if arrow_length is None else float(arrow_length)
    factor = target / longest if longest > 0 else 1.0
    if vectors.size:
        axes.quiver(
            positions[backbone, 0],
            positions[backbone, 1],
            vectors[:, 0] * factor,
            vectors[:, 1] * factor,
            angles="xy",
            scale_units="xy",
            scale=1.0,
            color=_ARROW_COLOR,
            width=0.0035,
            headwidth=3.5,
            headlength=4.0,
            headaxislength=3.5,
            pivot="tail",
            zorder=3,
        )

    if box is not None:
        axes.add_patch(Rectangle((0, 0), box[0], box[1], fill=False, edgecolor="black", linewidth=1.0))
        axes.set_xlim(0, box[0])
        axes.set_ylim(0, box[1])
    else:
        low = positions.min(axis=0) - diameters.max()
        high = positions.max(axis=0) + diameters.max()
        axes.set_xlim(low[0], high[0])
        axes.set_ylim(low[1], high[1])
    axes.set_aspect("equal")
    axes.set_xlabel("x")
    axes.set_ylabel("y")
    title = f"dx*/dθ for θ = {name}"
    if which:
        title += f", {which}"
    details = [f"N = {system.n}", f"{int(rattlers.sum())} rattler(s) in grey"]
    details.append(f"arrows × {factor:.3g} (longest |dx*/dθ| = {longest:.3g})")
    lines = [title]
    if system.dim == 3:
        lines.append("3D packing: projection onto the x-y plane (arrows: x, y components)")
    lines.append("; ".join(details))
    axes.set_title("\n".join(lines), fontsize=9)
    return _save(figure, path)


def plot_magnitudes(
    source: Result | Mapping,
    name: str | None = None,
    path: str | os.PathLike = "magnitudes.png",
    *,
    component: int | None = None,
    bins: int = 40,
) -> Path:
    """Histogram of the per-particle response magnitudes ``|dx*_i/dθ|`` (rattlers excluded).

    The bins are logarithmic when the magnitudes span more than two decades. Arguments as
    in :func:`plot_response`. Returns the path written.
    """
    system, dx_dtheta, rattlers, name = _unpack(source, name)
    field, which = _select_component(dx_dtheta, rattlers, component)
    magnitudes = _magnitudes(field, rattlers)
    magnitudes = magnitudes[np.isfinite(magnitudes)]

    figure = _new_figure((6.0, 4.2))
    axes = figure.add_subplot()
    positive = magnitudes[magnitudes > 0]
    log_bins = positive.size > 1 and positive.max() / positive.min() > 100
    if magnitudes.size == 0:
        axes.text(0.5, 0.5, "no particles with a response", ha="center", va="center", transform=axes.transAxes)
    elif log_bins:
        edges = np.geomspace(positive.min(), positive.max(), bins + 1)
        axes.hist(positive, bins=edges, color=_SPECIES_COLORS[0], edgecolor="#08519c")
        axes.set_xscale("log")
    else:
        axes.hist(magnitudes, bins=bins, color=_SPECIES_COLORS[0], edgecolor="#08519c")
    axes.set_xlabel("|dx*_i/dθ|" + (" (log scale)" if log_bins else ""))
    axes.set_ylabel("particles")
    title = f"|dx*/dθ| for θ = {name}"
    if which:
        title += f", {which}"
    if magnitudes.size:
        stats = (
            f"N = {system.n} ({int(rattlers.sum())} rattler(s) excluded); "
            f"median {np.median(magnitudes):.3g}, mean {np.mean(magnitudes):.3g}, max {np.max(magnitudes):.3g}"
        )
    else:
        stats = f"N = {system.n}"
    axes.set_title(title + "\n" + stats, fontsize=9)
    return _save(figure, path)


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "theta"


def plot_result(result: Result, directory: str | os.PathLike) -> list[Path]:
    """Write every figure of a result into ``directory``.

    For each parameter ``<name>``: ``response_<name>.png`` (:func:`plot_response`) and
    ``magnitudes_<name>.png`` (:func:`plot_magnitudes`). For a θ with several components the
    component with the largest response is drawn (named in the title).

    Returns:
        The paths written, in that order.
    """
    directory = Path(directory)
    paths: list[Path] = []
    used: set[str] = set()
    for name in result.names:
        stem = _file_stem(name)
        while stem in used:  # two names that sanitise alike
            stem += "_"
        used.add(stem)
        paths.append(plot_response(result, name, directory / f"response_{stem}.png"))
        paths.append(plot_magnitudes(result, name, directory / f"magnitudes_{stem}.png"))
    return paths
