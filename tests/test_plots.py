"""Plots: non-empty PNGs for scalar and vector θ, 2D and 3D, arrays or Result input."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from systems import InputError, random_packing, read_result, write_result
from systems.plots import plot_magnitudes, plot_response, plot_result

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


def test_importing_plots_does_not_import_matplotlib_or_jax_md():
    import subprocess

    code = (
        "import sys, systems, systems.plots, systems.io;"
        "assert 'matplotlib' not in sys.modules, 'matplotlib';"
        "assert 'jax_md' not in sys.modules, 'jax_md'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=__file__.rsplit("/", 2)[0])
