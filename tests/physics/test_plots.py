"""Plots: what the figures show (legend, quiverkey, axis labels, every arrow and its wrapped
images), for scalar and vector θ, 2D and 3D, arrays or Result input, in PNG, PDF and SVG."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from sensitivity.systems import InputError, random_packing, read_result, write_result
from sensitivity.systems.plots import (MEDIAN_ARROW, magnitudes_figure, plot_magnitudes,
                                       plot_response, plot_result, response_figure)

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_io import make_result_inputs  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000


@pytest.mark.parametrize("dim", [2, 3])
def test_plot_result_writes_all_pngs(tmp_path, dim):
    path = tmp_path / "sensitivity.h5"
    write_result(path, **make_result_inputs(n=16, dim=dim))
    result = read_result(path)
    paths = plot_result(result, tmp_path / "plots")
    assert [p.name for p in paths] == [
        "response_small_diameter.png",
        "magnitudes_small_diameter.png",
        "response_diameters.png",
        "magnitudes_diameters.png",
    ]
    for png in paths:
        assert_png(png)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)


def test_plot_from_arrays_free_boundary_and_log_bins(tmp_path):
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 5, size=(12, 2))
    dx_dtheta = rng.normal(size=(12, 2)) * np.geomspace(1e-4, 1, 12)[:, None]
    dx_dtheta[3] = np.nan  # a rattler, found from its NaN row
    arrays = {"positions": positions, "diameters": np.ones(12), "dx_dtheta": dx_dtheta}
    assert_png(plot_response(arrays, "epsilon", tmp_path / "r.png"))
    assert_png(plot_magnitudes(arrays, "epsilon", tmp_path / "m.png"))


def test_plot_from_system_and_component(tmp_path):
    system = random_packing(10, seed=1)
    jacobian = np.zeros((10, 10, 2))
    arrays = {"system": system, "dx_dtheta": jacobian, "rattlers": np.zeros(10, bool)}
    assert_png(plot_response(arrays, "diameters", tmp_path / "zero.png"))  # all-zero field
    jacobian[4, 2] = [1.0, 0.0]
    assert_png(plot_response(arrays, "diameters", tmp_path / "c.png", component=-6))
    with pytest.raises(InputError):
        plot_response(arrays, "diameters", tmp_path / "bad.png", component=10)


def test_unknown_name_is_an_input_error(tmp_path):
    path = tmp_path / "sensitivity.h5"
    write_result(path, **make_result_inputs(n=8, vector=False))
    with pytest.raises(InputError, match="small_diameter"):
        plot_response(read_result(path), "sigma", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_importing_plots_does_not_import_matplotlib_or_jax_md_until_preloaded():
    """Importing the module costs nothing; :func:`preload` loads matplotlib in a thread and
    the first figure waits for it."""
    import subprocess

    code = (
        "import sys, threading; from sensitivity.systems import plots, io, _figure;"
        "assert 'matplotlib' not in sys.modules, 'matplotlib';"
        "assert 'jax_md' not in sys.modules, 'jax_md';"
        "_figure.preload(); _figure.preload();"
        "assert [t.name for t in threading.enumerate()].count('plots-preload') <= 1;"
        "f = _figure.new_figure((2, 2), 50);"
        "assert 'matplotlib.backends.backend_agg' in sys.modules;"
        "assert not any(t.is_alive() for t in _figure._preloading), 'figure did not wait';"
        "assert 'jax_md' not in sys.modules, 'jax_md'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=__file__.rsplit("/", 3)[0])


# --- what the figure shows ----------------------------------------------------------------------


def _quivers(figure):
    from matplotlib.quiver import Quiver

    return [c for c in figure.axes[0].collections if isinstance(c, Quiver)]


def _quiverkeys(figure):
    from matplotlib.quiver import QuiverKey

    return [a for a in figure.axes[0].artists if isinstance(a, QuiverKey)]


def _legend_texts(figure):
    return [t.get_text() for legend in figure.legends for t in legend.get_texts()]


def _crossings_by_sampling(tails, vectors, box):
    """Independent count of wrapped images: shifted copies of each arrow with a sampled point
    strictly inside the box."""
    t = np.linspace(0, 1, 20001)[:, None]
    count = 0
    for tail, vector in zip(tails, vectors):
        for shift in [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)]:
            points = tail + np.array(shift) * box + t * vector
            count += bool(np.any(np.all((points > 0) & (points < box), axis=1)))
    return count


def test_arrows_are_wrapped_across_the_periodic_boundary():
    box = np.array([10.0, 8.0])
    positions = np.array([[0.5, 4.0], [9.7, 7.6], [5.0, 4.0], [3.0, 0.2], [6.0, 6.0]])
    field = np.array([[-1.3, 0.1], [0.9, 0.7], [0.5, 0.5], [0.2, -0.6], [np.nan, np.nan]])
    arrays = {"positions": positions, "diameters": np.full(5, 0.5), "box": box,
              "dx_dtheta": field, "species": np.array([0, 1, 0, 1, 0])}
    figure = response_figure(arrays, "theta", scale=1.0)
    (quiver,) = _quivers(figure)
    backbone = ~np.isnan(field).any(axis=1)
    images = _crossings_by_sampling(positions[backbone], field[backbone], box)
    assert images == 4  # particle 0: left edge; 1: right edge and the corner; 3: bottom
    assert quiver.N == backbone.sum() + images
    # the images are the arrows shifted by whole box vectors
    drawn = np.column_stack([quiver.X, quiver.Y])
    assert any(np.allclose(xy, [10.5, 4.0]) for xy in drawn)
    assert any(np.allclose(xy, [3.0, 8.2]) for xy in drawn)
    np.testing.assert_allclose(np.column_stack([quiver.U, quiver.V])[:4], field[:4])
    assert f"{images} wrapped" in figure.axes[0].get_title()


def test_response_figure_content_for_a_result(tmp_path):
    path = tmp_path / "sensitivity.h5"
    write_result(path, **make_result_inputs(n=16, dim=2))
    result = read_result(path)
    figure = response_figure(result, "small_diameter")
    axes = figure.axes[0]
    assert axes.get_xlabel() == r"$x$ ($\sigma$)" and axes.get_ylabel() == r"$y$ ($\sigma$)"
    title = axes.get_title()
    assert r"$\partial x^*/\partial\theta$" in title and "small_diameter = 1 $\\sigma$" in title
    legend = _legend_texts(figure)
    sizes = {s: result.diameters[result.species == s][0] for s in (0, 1)}
    assert legend == [f"species 0 (d = {sizes[0]:.4g})", f"species 1 (d = {sizes[1]:.4g})",
                      "rattler (1, no arrow)"]
    (quiver,) = _quivers(figure)
    field = result.dx_dtheta("small_diameter")
    backbone = ~result.rattlers
    factor = quiver.U[0] / field[backbone][0, 0]
    tails = result.positions[backbone]
    images = _crossings_by_sampling(tails, field[backbone] * factor, result.box)
    assert quiver.N == backbone.sum() + images
    # the scale rule: the median arrow is MEDIAN_ARROW mean diameters long, or the longest
    # a quarter of the smaller edge
    lengths = np.linalg.norm(field[backbone], axis=1)
    expected = min(MEDIAN_ARROW * result.diameters.mean() / np.median(lengths),
                   0.25 * result.box.min() / lengths.max())
    np.testing.assert_allclose(factor, expected, rtol=1e-12)
    (key,) = _quiverkeys(figure)
    text = key.text.get_text()
    assert text.startswith(r"$|\partial x_i^*/\partial\theta|$ = ")
    value = float(text.split("= ")[1].split()[0])
    np.testing.assert_allclose(key.U, value * factor)  # the key arrow is drawn to scale
    assert value / np.median(lengths) < 3 and np.median(lengths) / value < 3


def test_vector_theta_rings_the_perturbed_particle_and_colour_by_magnitude(tmp_path):
    path = tmp_path / "sensitivity.h5"
    write_result(path, **make_result_inputs(n=16, dim=2))
    result = read_result(path)
    figure = response_figure(result, "diameters", component=5)
    assert "perturbed particle 5" in _legend_texts(figure)
    assert r"$\theta_{5}$" in figure.axes[0].get_title()
    coloured = response_figure(result, "small_diameter", color_by_magnitude=True)
    assert len(coloured.axes) == 2  # the colour bar
    assert coloured.axes[1].get_ylabel().startswith(r"$|\partial x_i^*/\partial\theta|$")
    assert _legend_texts(coloured) == ["rattler (1, no arrow)"]


def test_3d_is_a_slice(tmp_path):
    path = tmp_path / "sensitivity.h5"
    write_result(path, **make_result_inputs(n=30, dim=3))
    result = read_result(path)
    z0 = float(result.box[2] / 2)
    figure = response_figure(result, "small_diameter", scale=0.1)
    dz = result.positions[:, 2] - z0
    dz -= result.box[2] * np.round(dz / result.box[2])
    cut = np.abs(dz) < result.diameters / 2
    assert f"slice z = {z0:.4g} ({cut.sum()} of 30" in figure.axes[0].get_title()
    (quiver,) = _quivers(figure)
    field = result.dx_dtheta("small_diameter")[:, :2]
    with_arrow = cut & ~result.rattlers
    images = _crossings_by_sampling(result.positions[with_arrow, :2], 0.1 * field[with_arrow],
                                    result.box[:2])
    assert quiver.N == with_arrow.sum() + images


@pytest.mark.parametrize("fmt, signature", [("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_pdf_and_svg(tmp_path, fmt, signature):
    path = tmp_path / "sensitivity.h5"
    write_result(path, **make_result_inputs(n=8, vector=False))
    paths = plot_result(read_result(path), tmp_path / "plots", format=fmt, dpi=72)
    assert [p.suffix for p in paths] == [f".{fmt}"] * 2
    for written in paths:
        assert written.read_bytes().startswith(signature)
    with pytest.raises(InputError, match="tiff"):
        plot_response(read_result(path), None, tmp_path / "x.tiff")


def test_dpi_sets_the_png_size(tmp_path):
    path = tmp_path / "sensitivity.h5"
    write_result(path, **make_result_inputs(n=8, vector=False))
    result = read_result(path)
    import struct

    widths = []
    for dpi in (50, 100):
        png = plot_magnitudes(result, None, tmp_path / f"m{dpi}.png", dpi=dpi).read_bytes()
        widths.append(struct.unpack(">I", png[16:20])[0])
    assert widths == [300, 600]  # 6 inches wide
    figure = magnitudes_figure(result)
    assert figure.axes[0].get_xlabel().startswith(r"$|\partial x_i^*/\partial\theta|$")
