"""Sheared boxes at the command line: `generate --tilt`, its bad input (exit 2), a cell too
thin for the potential refused by `run` (exit 2), `inspect` naming the cell vectors, and a
sheared packing run end to end (stress and elastic tensor beside the responses)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from sensitivity.cli.main import main


@pytest.fixture(autouse=True)
def _compilation_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "jax-cache"
    monkeypatch.setenv("SENSITIVITY_CACHE_DIR", str(cache))
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_generate_tilt_writes_the_cell_rows(tmp_path: Path):
    from sensitivity.systems import read_packing

    path = tmp_path / "p.h5"
    done = invoke(["generate", "--n", 16, "--dim", 3, "--phi", 0.5, "--tilt", "xy=0.2",
                   "--tilt", "yz=-0.1", "-o", path])
    assert done.exit_code == 0, done.output
    assert "cell vectors" in done.output
    system, _ = read_packing(path)
    edge = system.box[0, 0]
    expected = edge * np.array([[1, 0.2, 0], [0, 1, -0.1], [0, 0, 1]])
    np.testing.assert_allclose(system.box, expected, rtol=1e-15)
    with h5py.File(path) as f:  # H5MD: one cell vector per row
        np.testing.assert_allclose(f["particles/all/box/edges/value"][0], expected.T)
    assert system.packing_fraction == pytest.approx(0.5)


@pytest.mark.parametrize("tilt, expected", [
    ("xz=0.1", "--tilt 'xz': expected one of ['xy'] for a 2D box"),
    ("xy=much", "--tilt 'xy=much': expected NAME=T with a number T"),
    ("xy=4", "--tilt: the sheared box is too thin for the interaction range 1.4"),
])
def test_generate_bad_tilt_exits_2(tmp_path: Path, tilt, expected):
    done = invoke(["generate", "--n", 16, "--tilt", tilt, "-o", tmp_path / "p.h5"])
    assert done.exit_code == 2 and expected in done.output, done.output
    assert len(done.output.strip().splitlines()) == 1
    assert not (tmp_path / "p.h5").exists()


def test_run_refuses_a_cell_too_thin_for_the_cutoff(tmp_path: Path):
    from sensitivity.systems import random_packing, write_packing
    from sensitivity.systems._system import wrap_positions

    system = random_packing(16, phi=0.5, seed=0)
    cell = np.diag(system.box)
    cell[0, 1] = 2.5 * system.box[0]
    write_packing(tmp_path / "p.h5", system.replace(
        box=cell, positions=wrap_positions(system.positions, cell)))
    (tmp_path / "c.yaml").write_text(
        "system: {path: p.h5}\nparameters: [{name: d, kind: diameter, species: 0}]\n"
        "output: {directory: out, plots: false}\n")
    done = invoke(["run", tmp_path / "c.yaml"])
    assert done.exit_code == 2, done.output
    assert "p.h5: /particles/all/box/edges is too thin for the interaction range" in done.output


@pytest.mark.slow
def test_run_inspect_and_plot_a_sheared_packing(tmp_path: Path):
    assert invoke(["generate", "--n", 24, "--tilt", "xy=0.3", "--seed", 4,
                   "-o", tmp_path / "p.h5"]).exit_code == 0
    (tmp_path / "c.yaml").write_text(
        "system: {path: p.h5}\n"
        "parameters: [{name: shear, kind: strain, component: xy}]\n"
        "sensitivity: {elasticity: true}\n"
        "output: {directory: out, plots: true}\n")
    done = invoke(["run", tmp_path / "c.yaml"])
    assert done.exit_code == 0, done.output
    shown = invoke(["inspect", tmp_path / "out" / "sensitivity.h5"])
    assert shown.exit_code == 0, shown.output
    assert "periodic sheared cell, vectors" in shown.output
    assert (tmp_path / "out" / "plots" / "response_shear.png").is_file()
    with h5py.File(tmp_path / "out" / "sensitivity.h5") as f:
        assert f["elasticity/elastic_tensor"].shape == (2, 2, 2, 2)
        assert f["particles/all/box/edges/value"].shape == (1, 2, 2)

    # the packing predicted at ε_xy = Δ: its cell (I + Δ E) H, positions x* + Δ dx*/dε;
    # re-relaxed in that cell it moves by O(Δ²) only
    from sensitivity.systems import read_result
    from sensitivity.systems.potentials import PairModel, resolve_potential
    from sensitivity.systems.relax import make_relaxer, resolve_minimizer
    from sensitivity.systems._system import minimum_image

    result = read_result(tmp_path / "out" / "sensitivity.h5")
    delta = 1e-4
    predicted = result.predicted_system("shear", delta)
    np.testing.assert_allclose(
        predicted.box, (np.eye(2) + delta * np.array([[0, 1], [1, 0]])) @ result.box,
        rtol=1e-15)
    model = PairModel.build(predicted, resolve_potential({}, predicted.n_species))
    params = model.default_params(predicted.diameters)
    relaxed = make_relaxer(model, resolve_minimizer({"ftol": 1e-13}), [params]).run(
        predicted.positions, params)
    assert relaxed.converged
    moved = np.abs(minimum_image(relaxed.positions - predicted.positions, predicted.box))
    step = delta * np.nanmax(np.abs(result.dx_dtheta("shear")))
    assert moved.max() < 1e-2 * step
