"""The commands that read results and write nothing but figures, exports and summaries:
``inspect``, ``plot``, ``export`` and ``collect``. None of them imports jax.
"""

from __future__ import annotations

from pathlib import Path

import click

from sensitivity.systems.settings import FIGURE_DPI, FIGURE_FORMATS, SUMMARY_TOP

from ._common import (FiniteFloat, NumericalFailure, _state, common_options, emit_json,
                      json_option)

@click.command(short_help="Summarize a result file.")
@click.argument("result", type=click.Path(dir_okay=False))
@click.option("--top", type=click.IntRange(min=0), default=SUMMARY_TOP, show_default=True,
              help="How many of the largest responses to list per theta.")
@json_option
@common_options
def inspect(result: str, top: int) -> None:
    """Summarize a result file: system, thetas (with their units, axes and gauge),
    convergence, residuals, zero modes and the largest responses."""
    from sensitivity.systems.summary import summarize

    from ._inspect import render_summary

    summary = summarize(result, top=top)
    if _state().json:
        emit_json(summary)
    else:
        click.echo(render_summary(summary))


@click.command(short_help="Redraw the figures of a result file.")
@click.argument("result", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Folder for the figures [default: plots/ beside RESULT].")
@click.option("--format", "fmt", type=click.Choice(FIGURE_FORMATS), default=FIGURE_FORMATS[0],
              show_default=True, help="Figure format.")
@click.option("--dpi", type=FiniteFloat(min=10, max=2400), default=FIGURE_DPI,
              show_default=True, help="Resolution of PNG figures.")
@click.option("--theta", "names", multiple=True, metavar="NAME",
              help="Draw only this theta (repeatable) [default: every theta].")
@click.option("--component", type=int, default=None,
              help="For a theta with several components (diameters), which one to draw "
              "[default: the largest response].")
@click.option("--color-by-magnitude", is_flag=True,
              help="Colour the particles by |dx*_i/dtheta| (colour bar) instead of by species.")
@click.option("--slice-z", type=FiniteFloat(), default=None,
              help="3D: the height of the slice drawn [default: the middle of the box].")
@click.option("--scale", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Arrow length drawn per unit of dx*/dtheta [default: the median arrow is half "
              "a mean diameter long].")
@common_options
def plot(result: str, output: str | None, fmt: str, dpi: float, names: tuple[str, ...],
         component: int | None, color_by_magnitude: bool, slice_z: float | None,
         scale: float | None) -> None:
    """Redraw the figures of a result file: the response field dx*/dtheta as arrows on the
    packing (species legend, a reference arrow, arrows wrapped across the periodic boundary;
    3D: a slice), and the histogram of |dx*/dtheta| per particle, for every theta."""
    state = _state()
    from sensitivity.systems.io import read_result
    from sensitivity.systems.plots import plot_result
    from sensitivity.systems.tasks import PLOTS_NAME

    loaded = read_result(result)
    directory = Path(output) if output else Path(result).resolve().parent / PLOTS_NAME
    paths = plot_result(loaded, directory, format=fmt, dpi=dpi, names=list(names) or None,
                        component=component, color_by_magnitude=color_by_magnitude,
                        slice_z=slice_z, scale=scale)
    if not state.quiet:
        for path in paths:
            click.echo(str(path))


@click.command(short_help="Write a result for ASE / OVITO (extended XYZ).")
@click.argument("result", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["extxyz"]), default="extxyz", show_default=True,
              help="extxyz: ASE and OVITO read it (each theta's response a per-atom vector).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="File to write [default: RESULT with the format's suffix].")
@common_options
def export(result: str, fmt: str, output: str | None) -> None:
    """Write RESULT in a format visualisation tools read: the relaxed packing, the box as
    the lattice, and each scalar theta's dx*/dtheta as a per-atom vector property."""
    state = _state()
    from sensitivity.systems.io import read_result

    from sensitivity.systems.export import export_extxyz

    loaded = read_result(result)
    path = Path(output) if output else Path(result).with_suffix(f".{fmt}")
    written, skipped = export_extxyz(loaded, path)
    for name in skipped:
        click.echo(f"note: theta {name!r} has several components ([P][N][d]); not exported "
                   "(read it from the result file)", err=True)
    if not state.quiet:
        click.echo(str(written))



@click.command(short_help="Gather a sweep's results into CSV + HDF5.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Summary path: writes SUMMARY.csv and SUMMARY.h5 (a .csv/.h5 suffix is "
              "replaced).")
@json_option
@common_options
def collect(directory: str, output: str) -> None:
    """Gather the results under DIRECTORY (a sweep's output folder) into one CSV table and one
    HDF5 file with every task's relaxed packing and dx*/dtheta."""
    state = _state()
    from sensitivity.systems.summary import collect_results

    reporter = state.reporter()
    csv_path, h5_path, table = collect_results(Path(directory), Path(output), reporter)
    missing = sum(1 for row in table if row["status"] == "missing")
    unreadable = sum(1 for row in table if row["status"] == "unreadable")
    text = (f"wrote {csv_path} and {h5_path}: {len(table)} task(s)"
            + (f", {missing} without a result" if missing else "")
            + (f", {unreadable} unreadable (rows marked; see the warnings)" if unreadable else ""))
    if state.json:
        emit_json({"csv": str(csv_path), "h5": str(h5_path), "count": len(table),
                   "missing": missing, "unreadable": unreadable, "table": table})
    elif not state.quiet and not unreadable:
        click.echo(text)
    if unreadable:
        raise NumericalFailure(text)
