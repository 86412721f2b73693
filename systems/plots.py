"""Figures of a sensitivity result: the packing with its response arrows, and magnitudes.

* :func:`response_figure` / :func:`plot_response` -- the paper's figure: particles drawn as
  disks to scale (with their periodic images where they cross the box edges), coloured by
  species (a legend names them) or by ``|∂x*_i/∂θ|`` (a colour bar), rattlers in grey
  without an arrow, and an arrow ``∂x*_i/∂θ`` on every other particle. Arrows that cross a
  periodic edge are drawn again from the opposite side (wrapped, not cut). One scale for
  all arrows: the *median* arrow is drawn half a mean diameter long (unless the longest
  would then exceed a quarter of the smaller box edge, which then sets the scale); a
  reference arrow (quiverkey) states the length it stands for. For a per-particle θ
  (``diameters``) the perturbed particle is ringed. A 3D packing is shown as the slice
  through the middle of the box (``slice_z``): the cross-sections of the spheres the plane
  cuts, with the x-y components of their arrows.
* :func:`magnitudes_figure` / :func:`plot_magnitudes` -- the histogram of the per-particle
  magnitudes ``|∂x*_i/∂θ|`` (rattlers excluded).
* :func:`plot_result` -- both figures for every parameter of a result.

Output formats: PNG, PDF or SVG (``format``, else the file's suffix), at ``dpi`` for PNG.
Matplotlib is imported inside the functions and used through its object-oriented API with
the Agg canvas, so importing this module is instant and no global backend is changed. A run
that will plot calls :func:`systems._figure.preload` first.
Files are written atomically (temporary name in the same folder, then renamed).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_path
from ._figure import new_figure as _new_figure
from ._plot_geometry import arrow_images, disk_images
from ._errors import InputError
from ._h5 import LENGTH_UNIT
from ._result_read import Result, response_magnitudes
from ._system import ParticleSystem, perpendicular_widths
from .settings import FIGURE_DPI, FIGURE_FORMATS

__all__ = [
    "FORMATS",
    "magnitudes_figure",
    "plot_magnitudes",
    "plot_response",
    "plot_result",
    "response_figure",
]

FORMATS = FIGURE_FORMATS

_SPECIES_COLORS = ("#9ecae1", "#fdae6b", "#a1d99b", "#bcbddc", "#fa9fb5", "#c7e9c0")
_RATTLER_COLOR = "#bdbdbd"
_ARROW_COLOR = "#08306b"
_PERTURBED_COLOR = "#cb181d"

#: The scale rule: the median arrow is drawn this many mean diameters long ...
MEDIAN_ARROW = 0.5
#: ... unless the longest arrow would then be longer than this fraction of the smaller edge.
LONGEST_ARROW = 0.25

_DERIVATIVE = r"$\partial x^*/\partial\theta$"
_MAGNITUDE = r"$|\partial x_i^*/\partial\theta|$"
_UNIT_TEX = {"sigma": r"$\sigma$", "epsilon": r"$\epsilon$", "1": ""}


# --------------------------------------------------------------------------------------
# inputs


class _Source:
    """What a figure needs, from a Result or a mapping of arrays."""

    def __init__(self, source: Any, name: str | None):
        self.kind = None
        self.theta = None
        self.unit = ""
        self.theta_unit = ""
        self.species_of_theta = None
        if isinstance(source, Result):
            response = source.response(name)
            self.system = source.system
            self.dx_dtheta = np.asarray(response.dx_dtheta)
            self.rattlers = np.asarray(source.rattlers, dtype=bool)
            self.name = response.name
            self.kind = response.kind
            self.theta = response.theta
            self.unit = response.unit if response.unit != "unknown" else ""
            self.theta_unit = response.theta_unit if response.theta_unit != "unknown" else ""
            self.species_of_theta = response.report.species
            return
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
        self.system = system
        self.dx_dtheta = np.asarray(source["dx_dtheta"], dtype=np.float64)
        rattlers = source.get("rattlers")
        if rattlers is None:
            rows = self.dx_dtheta if self.dx_dtheta.ndim == 2 else self.dx_dtheta[0]
            rattlers = np.isnan(rows).any(axis=-1)
        self.rattlers = np.asarray(rattlers, dtype=bool)
        self.name = name or "θ"
        self.kind = source.get("kind")
        self.theta = source.get("theta")


def _select_component(
    dx_dtheta: np.ndarray, rattlers: np.ndarray, component: int | None
) -> tuple[np.ndarray, str, int | None]:
    """The ``[N][d]`` field to draw, how to describe it, and its component index."""
    if dx_dtheta.ndim == 2:
        return dx_dtheta, "", None
    count = dx_dtheta.shape[0]
    if component is not None:
        if not -count <= component < count:
            raise InputError(f"component {component} out of range for {count} components of θ")
        index = component % count
        return dx_dtheta[index], f"component {index} of {count}", index
    backbone = np.nan_to_num(dx_dtheta[:, ~rattlers], nan=0.0)
    norms = np.sqrt(np.sum(backbone**2, axis=(1, 2)))
    if norms.size and np.max(norms) > 0:
        best = int(np.argmax(norms))
        return dx_dtheta[best], f"component {best} of {count} (largest norm)", best
    return dx_dtheta[0], f"component 0 of {count} (first; all zero)", 0



def _nice(value: float) -> float:
    """``value`` rounded to 1, 2 or 5 times a power of ten (the quiverkey's length)."""
    if not value > 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    mantissa = value / 10**exponent
    step = 1.0 if mantissa < 1.5 else 2.0 if mantissa < 3.5 else 5.0 if mantissa < 7.5 else 10.0
    return step * 10**exponent


def _arrow_factor(lengths: np.ndarray, mean_diameter: float, box: np.ndarray | None,
                  extent: np.ndarray, arrow_length: float | None, scale: float | None) -> float:
    """Drawn length per unit of ∂x*/∂θ (see the module docstring for the rule)."""
    if scale is not None:
        return float(scale)
    positive = lengths[lengths > 0]
    if not positive.size:
        return 1.0
    if arrow_length is not None:
        return float(arrow_length) / float(positive.max())
    factor = MEDIAN_ARROW * mean_diameter / float(np.median(positive))
    room = LONGEST_ARROW * float(np.min(box if box is not None else extent))
    return min(factor, room / float(positive.max()))


def _unit_tex(unit: str) -> str:
    if unit in _UNIT_TEX:
        return _UNIT_TEX[unit]
    parts = []
    for factor in unit.split():
        match = re.fullmatch(r"([A-Za-z]+)([+-]?\d+)?", factor)
        if not match:
            return unit
        symbol = {"sigma": r"\sigma", "epsilon": r"\epsilon"}.get(match.group(1), match.group(1))
        power = match.group(2)
        parts.append(symbol + (f"^{{{int(power)}}}" if power and int(power) != 1 else ""))
    return "$" + r"\,".join(parts) + "$"


def _format_number(value: float) -> str:
    return f"{value:.4g}"


# --------------------------------------------------------------------------------------
# output

def _output_format(path: Path, fmt: str | None) -> str:
    fmt = (fmt or path.suffix.lstrip(".") or FORMATS[0]).lower()
    if fmt not in FORMATS:
        raise InputError(f"{path}: figure format {fmt!r} is not supported, expected one of "
                         f"{', '.join(FORMATS)}")
    return fmt


def _save(draw, path: str | os.PathLike, fmt: str | None = None,
          dpi: float | None = None) -> Path:
    """Draw a figure (``draw()``, after a bad format was refused) and save it (PNG, PDF or
    SVG) atomically."""
    path = Path(path)
    fmt = _output_format(path, fmt)
    figure = draw()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=fmt, dpi=dpi or figure.dpi)
    return path


# --------------------------------------------------------------------------------------
# the response figure


def _theta_text(data: _Source, component: int | None) -> str:
    """``θ = name = value unit`` for the title."""
    text = rf"$\theta$ = {data.name}"
    value = data.theta
    unit = _unit_tex(data.theta_unit) if data.theta_unit else ""
    if value is not None and np.ndim(value) == 0:
        text += f" = {_format_number(float(value))}" + (f" {unit}" if unit else "")
    elif value is not None and component is not None:
        value = float(np.asarray(value)[component])
        text += rf", $\theta_{{{component}}}$ = {_format_number(value)}"
        text += f" {unit}" if unit else ""
    return text


def response_figure(
    source: Result | Mapping,
    name: str | None = None,
    *,
    component: int | None = None,
    arrow_length: float | None = None,
    scale: float | None = None,
    color_by_magnitude: bool = False,
    slice_z: float | None = None,
    dpi: float = FIGURE_DPI,
):
    """The packing as disks with an arrow ``∂x*_i/∂θ`` on each particle (a matplotlib
    ``Figure``; :func:`plot_response` saves it).

    Args:
        source: a :class:`~systems.io.Result`, or a mapping with ``dx_dtheta`` (``[N][d]`` or
            ``[P][N][d]``), ``system`` or ``positions``/``diameters``/``box``, and optionally
            ``rattlers`` (``[N]`` bool; default: NaN rows), ``kind`` and ``theta``.
        name: the parameter (for a Result: which response; default the first).
        component: for a θ with P components, which one to draw; default the one whose
            response has the largest norm (named in the title).
        arrow_length: drawn length of the longest arrow (length units), instead of the rule.
        scale: drawn length per unit of ``∂x*/∂θ``, instead of the rule.
        color_by_magnitude: colour the particles by ``|∂x*_i/∂θ|`` (viridis, colour bar)
            instead of by species.
        slice_z: 3D only: the height of the slice drawn (default: the middle of the box).
        dpi: the figure's resolution (PNG).

    The arrow rule (without ``arrow_length`` / ``scale``): the median arrow is drawn
    :data:`MEDIAN_ARROW` mean diameters long, unless the longest arrow would then exceed
    :data:`LONGEST_ARROW` of the smaller box edge. The quiverkey above the axes states the
    length of a reference arrow in the units of ``∂x*/∂θ``.
    """
    from matplotlib.collections import EllipseCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Polygon, Rectangle

    data = _Source(source, name)
    system = data.system
    field, which, component = _select_component(data.dx_dtheta, data.rattlers, component)
    rattlers = data.rattlers
    box = None if system.box is None else system.box[:2]
    # A sheared cell is drawn as the parallelogram of its first two cell vectors (``cell``,
    # columns) from ``origin``; ``box`` then holds its perpendicular widths (the arrow rule).
    cell = origin = None
    positions = system.positions[:, :2]
    if system.box is not None and system.box.ndim == 2:
        full = system.box
        if system.dim == 3 and np.any(full[2, :2] != 0):
            raise InputError("a 3D sheared cell is drawn only when its first two cell vectors "
                             "lie in the x-y plane (an upper-triangular cell matrix)")
        cell, origin = full[:2, :2], np.zeros(2)
        box = perpendicular_widths(cell)
    diameters = system.diameters.copy()
    shown = np.ones(system.n, dtype=bool)
    z_text = ""
    if system.dim == 3:
        z = system.positions[:, 2]
        height = None if system.box is None else (
            float(system.box[2, 2]) if cell is not None else float(system.box[2]))
        if slice_z is None:
            slice_z = height / 2 if height is not None else float(np.median(z))
        dz = z - slice_z
        if system.periodic and height is not None:
            layers = np.round(dz / height)
            dz -= height * layers
            if cell is not None:  # the slice's cell is moved along the third vector
                positions = positions - layers[:, None] * system.box[:2, 2]
                origin = (slice_z / height) * system.box[:2, 2]
        shown = np.abs(dz) < diameters / 2
        diameters = np.where(shown, 2 * np.sqrt(np.maximum((diameters / 2) ** 2 - dz**2, 0.0)), 0.0)
        z_text = (f"3D: slice z = {_format_number(slice_z)} ({int(shown.sum())} of {system.n} "
                  "spheres cut, as cross-sections); arrows: x-y components")
    if cell is not None:  # every centre inside the drawn parallelogram
        frac = np.mod((positions - origin) @ np.linalg.inv(cell).T, 1.0)
        positions = origin + frac @ cell.T
    index = np.flatnonzero(shown)

    magnitude = response_magnitudes(field)
    if color_by_magnitude:
        from matplotlib import colormaps
        from matplotlib.colors import LogNorm, Normalize

        finite = magnitude[np.isfinite(magnitude) & ~rattlers]
        positive = finite[finite > 0]
        if positive.size > 1 and positive.max() / positive.min() > 100:
            norm = LogNorm(positive.min(), positive.max())
        else:
            norm = Normalize(0.0, float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
        cmap = colormaps["viridis"]
        values = np.nan_to_num(magnitude, nan=0.0)
        if isinstance(norm, LogNorm):
            values = np.maximum(values, positive.min())
        colors = np.empty(system.n, dtype=object)
        colors[:] = [tuple(rgba) for rgba in cmap(norm(values))]
    else:
        colors = np.array([_SPECIES_COLORS[s % len(_SPECIES_COLORS)] for s in system.species],
                          dtype=object)
    colors[rattlers] = _RATTLER_COLOR

    centres, particle = positions[index], index
    if system.periodic and box is not None:  # a box, or a cell (then box: its widths)
        image_centres, image_particle = disk_images(positions[index], diameters[index] / 2,
                                                    box, cell, origin)
        centres = np.concatenate([centres, image_centres])
        particle = np.concatenate([particle, index[image_particle]])

    if cell is not None:
        corners = origin + np.array([[0, 0], [1, 0], [0, 1], [1, 1]]) @ cell.T
        low, high = corners.min(axis=0), corners.max(axis=0)
        extent = high - low
    else:
        extent = (box if box is not None
                  else np.ptp(positions, axis=0) + 2 * system.diameters.max())
    aspect = float(extent[1] / extent[0]) if extent[0] > 0 else 1.0
    figure = _new_figure((6.0, max(2.5, min(10.0, 4.9 * aspect)) + 1.5), dpi)
    axes = figure.add_subplot()
    axes.add_collection(
        EllipseCollection(
            diameters[particle], diameters[particle], np.zeros(len(particle)), units="xy",
            offsets=centres, offset_transform=axes.transData,
            facecolors=list(colors[particle]), edgecolors="#525252", linewidths=0.4,
        )
    )

    backbone = shown & ~rattlers & np.all(np.isfinite(field), axis=1)
    vectors = field[backbone, :2]
    lengths = np.linalg.norm(vectors, axis=1)
    factor = _arrow_factor(lengths, float(np.mean(system.diameters)), box, extent,
                           arrow_length, scale)
    tails, drawn = positions[backbone], vectors * factor
    images = 0
    if system.periodic and box is not None and len(tails):
        tails, drawn, images = arrow_images(tails, drawn, box, cell, origin)
    unit = _unit_tex(data.unit) if data.unit else ""
    if len(tails):
        quiver = axes.quiver(
            tails[:, 0], tails[:, 1], drawn[:, 0], drawn[:, 1], angles="xy", scale_units="xy",
            scale=1.0, color=_ARROW_COLOR, width=0.0035, headwidth=3.5, headlength=4.0,
            headaxislength=3.5, pivot="tail", zorder=3,
        )
        positive = lengths[lengths > 0]
        key = _nice(float(np.median(positive))) if positive.size else 1.0
        axes.quiverkey(
            quiver, 0.72, 1.015, key * factor,
            f"{_MAGNITUDE} = {key:g}" + (f" {unit}" if unit else ""),
            labelpos="E", coordinates="axes", fontproperties={"size": 8},
        )

    handles = []
    if color_by_magnitude:
        from matplotlib.cm import ScalarMappable

        bar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.8)
        bar.set_label(_MAGNITUDE + (f" ({unit})" if unit else ""))
    else:
        for s in np.unique(system.species[index]):
            sizes = np.unique(system.diameters[system.species == s])
            label = f"species {system.species_label(s)}"  # as the input file names it
            if sizes.size == 1:
                label += f" (d = {_format_number(sizes[0])})"
            handles.append(Line2D([], [], linestyle="none", marker="o", markersize=8,
                                  markerfacecolor=_SPECIES_COLORS[s % len(_SPECIES_COLORS)],
                                  markeredgecolor="#525252", label=label))
    if rattlers[index].any():
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=8,
                              markerfacecolor=_RATTLER_COLOR, markeredgecolor="#525252",
                              label=f"rattler ({int(rattlers.sum())}, no arrow)"))
    if data.kind == "diameters" and component is not None and shown[component]:
        ring = [positions[component]]
        if system.periodic and box is not None:
            more, _ = disk_images(positions[component:component + 1],
                                  diameters[component:component + 1] / 2, box, cell, origin)
            ring += list(more)
        ring = np.asarray(ring)
        size = np.full(len(ring), diameters[component] * 1.15)
        axes.add_collection(EllipseCollection(
            size, size, np.zeros(len(ring)), units="xy", offsets=ring,
            offset_transform=axes.transData, facecolors="none", edgecolors=_PERTURBED_COLOR,
            linewidths=1.8, zorder=4))
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=9,
                              markerfacecolor="none", markeredgecolor=_PERTURBED_COLOR,
                              markeredgewidth=1.8, label=f"perturbed particle {component}"))
    if handles:
        figure.legend(handles=handles, loc="outside lower center",
                      ncols=len(handles) if len(handles) <= 3 else 2,
                      fontsize=8, frameon=False)

    if cell is not None:  # the parallelogram; disks beyond it (images) are clipped to it
        outline = Polygon(origin + np.array([[0, 0], [1, 0], [1, 1], [0, 1]]) @ cell.T,
                          closed=True, fill=False, edgecolor="black", linewidth=1.0)
        axes.add_patch(outline)
        for artist in list(axes.collections):
            artist.set_clip_path(outline)
        axes.set_xlim(low[0], high[0])
        axes.set_ylim(low[1], high[1])
    elif box is not None:
        axes.add_patch(Rectangle((0, 0), box[0], box[1], fill=False, edgecolor="black",
                                 linewidth=1.0))
        axes.set_xlim(0, box[0])
        axes.set_ylim(0, box[1])
    else:
        low = positions.min(axis=0) - system.diameters.max()
        high = positions.max(axis=0) + system.diameters.max()
        axes.set_xlim(low[0], high[0])
        axes.set_ylim(low[1], high[1])
    axes.set_aspect("equal")
    length = _unit_tex(LENGTH_UNIT)
    axes.set_xlabel(f"$x$ ({length})")
    axes.set_ylabel(f"$y$ ({length})")
    title = f"{_DERIVATIVE} for {_theta_text(data, component)}"
    if which:
        title += f", {which}"
    details = f"N = {system.n}, {int(rattlers.sum())} rattler(s) in grey; "
    if scale is None and arrow_length is None:
        details += f"median arrow {MEDIAN_ARROW:g} mean diameter"
    else:
        details += f"arrows × {factor:.3g}"
    if images:
        details += f"; {images} wrapped"
    lines = [title] + ([z_text] if z_text else []) + [details]
    axes.set_title("\n".join(lines), fontsize=8, pad=16)
    return figure


def plot_response(
    source: Result | Mapping,
    name: str | None = None,
    path: str | os.PathLike = "response.png",
    *,
    format: str | None = None,
    dpi: float = FIGURE_DPI,
    **options: Any,
) -> Path:
    """Save :func:`response_figure` (``options``: its keywords) as PNG, PDF or SVG
    (``format``, else the suffix of ``path``). Returns the path written."""
    return _save(lambda: response_figure(source, name, dpi=dpi, **options), path, format, dpi)


# --------------------------------------------------------------------------------------
# magnitudes


def magnitudes_figure(
    source: Result | Mapping,
    name: str | None = None,
    *,
    component: int | None = None,
    bins: int = 40,
    dpi: float = FIGURE_DPI,
):
    """Histogram of the per-particle response magnitudes ``|∂x*_i/∂θ|`` (rattlers excluded).

    The bins are logarithmic when the magnitudes span more than two decades. Arguments as
    in :func:`response_figure`. Returns the matplotlib ``Figure``.
    """
    data = _Source(source, name)
    system, rattlers = data.system, data.rattlers
    field, which, component = _select_component(data.dx_dtheta, rattlers, component)
    magnitudes = response_magnitudes(field)[~rattlers]
    magnitudes = magnitudes[np.isfinite(magnitudes)]

    figure = _new_figure((6.0, 4.2), dpi)
    axes = figure.add_subplot()
    positive = magnitudes[magnitudes > 0]
    log_bins = positive.size > 1 and positive.max() / positive.min() > 100
    if magnitudes.size == 0:
        axes.text(0.5, 0.5, "no particles with a response", ha="center", va="center",
                  transform=axes.transAxes)
    elif log_bins:
        edges = np.geomspace(positive.min(), positive.max(), bins + 1)
        axes.hist(positive, bins=edges, color=_SPECIES_COLORS[0], edgecolor="#08519c")
        axes.set_xscale("log")
    else:
        axes.hist(magnitudes, bins=bins, color=_SPECIES_COLORS[0], edgecolor="#08519c")
    unit = _unit_tex(data.unit) if data.unit else ""
    axes.set_xlabel(_MAGNITUDE + (f" ({unit})" if unit else "")
                    + (" (log scale)" if log_bins else ""))
    axes.set_ylabel("particles")
    title = f"{_MAGNITUDE} for {_theta_text(data, component)}"
    if which:
        title += f", {which}"
    if magnitudes.size:
        stats = (
            f"N = {system.n} ({int(rattlers.sum())} rattler(s) excluded); "
            f"median {np.median(magnitudes):.3g}, mean {np.mean(magnitudes):.3g}, "
            f"max {np.max(magnitudes):.3g}"
        )
    else:
        stats = f"N = {system.n}"
    axes.set_title(title + "\n" + stats, fontsize=9)
    return figure


def plot_magnitudes(
    source: Result | Mapping,
    name: str | None = None,
    path: str | os.PathLike = "magnitudes.png",
    *,
    format: str | None = None,
    dpi: float = FIGURE_DPI,
    **options: Any,
) -> Path:
    """Save :func:`magnitudes_figure` as PNG, PDF or SVG. Returns the path written."""
    return _save(lambda: magnitudes_figure(source, name, dpi=dpi, **options), path, format,
                 dpi)


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "theta"


def plot_result(
    result: Result,
    directory: str | os.PathLike,
    *,
    format: str = FORMATS[0],
    dpi: float = FIGURE_DPI,
    names: list[str] | None = None,
    **options: Any,
) -> list[Path]:
    """Write every figure of a result into ``directory``.

    For each parameter ``<name>`` (or those in ``names``): ``response_<name>.<format>``
    (:func:`plot_response`, ``options`` are its keywords) and ``magnitudes_<name>.<format>``
    (:func:`plot_magnitudes`). For a θ with several components the component with the
    largest response is drawn (named in the title).

    Returns:
        The paths written, in that order.
    """
    directory = Path(directory)
    format = _output_format(directory / f"x.{format}", format)
    paths: list[Path] = []
    used: set[str] = set()
    chosen = result.names if names is None else list(names)
    for name in chosen:
        result.response(name)  # an unknown name: one clear error before any file
    for name in chosen:
        stem = _file_stem(name)
        while stem in used:  # two names that sanitise alike
            stem += "_"
        used.add(stem)
        paths.append(plot_response(result, name, directory / f"response_{stem}.{format}",
                                   format=format, dpi=dpi, **options))
        magnitude_options = {k: v for k, v in options.items() if k == "component"}
        paths.append(plot_magnitudes(result, name, directory / f"magnitudes_{stem}.{format}",
                                     format=format, dpi=dpi, **magnitude_options))
    return paths

