"""Our files in other tools: MDAnalysis reads our H5MD, we read MDAnalysis' H5MD, ASE reads
the extended-XYZ export, each compared number by number with what we wrote."""

from __future__ import annotations

import sys
import warnings

import ase.io
import h5py
import MDAnalysis as mda
import numpy as np
import pytest
from click.testing import CliRunner

from sensitivity.cli.main import main
from sensitivity.systems import random_packing, read_packing, read_result, write_packing, write_result

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_io import make_result_inputs  # noqa: E402

# MDAnalysis keeps coordinates in float32
FLOAT32 = dict(rtol=2e-7, atol=0)


def mdanalysis_universe(path, n):
    """How a user opens one of our files: our units are reduced, so convert_units=False."""
    universe = mda.Universe.empty(n, trajectory=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        universe.load_new(str(path), format="H5MD", convert_units=False)
    return universe


def test_mdanalysis_reads_a_3d_result(tmp_path):
    inputs = make_result_inputs(n=12, dim=3)
    path = write_result(tmp_path / "sensitivity.h5", **inputs)
    system = inputs["system"]
    universe = mdanalysis_universe(path, system.n)
    assert universe.trajectory.n_frames == 1
    np.testing.assert_allclose(universe.atoms.positions, system.positions, **FLOAT32)
    np.testing.assert_allclose(universe.dimensions, [*system.box, 90, 90, 90], **FLOAT32)
    # /observables/potential_energy lands in ts.data, where MDAnalysis users look
    assert universe.trajectory.ts.data["potential_energy"] == inputs["relaxation"]["energy"]


def test_mdanalysis_reads_a_3d_input_packing(tmp_path):
    system = random_packing(20, dim=3, phi=0.6, seed=3)
    path = write_packing(tmp_path / "packing.h5", system)
    universe = mdanalysis_universe(path, system.n)
    np.testing.assert_allclose(universe.atoms.positions, system.positions, **FLOAT32)
    np.testing.assert_allclose(universe.dimensions[:3], system.box, **FLOAT32)


def test_a_unit_on_position_value_would_break_mdanalysis(tmp_path):
    """Why /particles/all/position/value carries no `unit`: MDAnalysis refuses unknown ones."""
    path = write_packing(tmp_path / "packing.h5", random_packing(4, dim=3, seed=0))
    with h5py.File(path, "r") as f:
        assert "unit" not in f["particles/all/position/value"].attrs
        assert f["particles/all/position"].attrs["unit"] == b"sigma"
    with h5py.File(path, "a") as f:
        f["particles/all/position/value"].attrs["unit"] = np.bytes_(b"sigma")
    with pytest.raises(RuntimeError, match="not recognized"):
        mdanalysis_universe(path, 4)


def test_mdanalysis_refuses_2d_boxes(tmp_path):
    """Said in the README: MDAnalysis reads only 3D H5MD boxes (the export covers 2D)."""
    path = write_packing(tmp_path / "packing.h5", random_packing(4, dim=2, seed=0))
    with pytest.raises(ValueError, match="3-dimensional"):
        mdanalysis_universe(path, 4)


@pytest.mark.parametrize("units", [False, True])
def test_a_file_mdanalysis_writes_loads_here(tmp_path, units):
    rng = np.random.default_rng(1)
    universe = mda.Universe.empty(7, trajectory=True)
    universe.atoms.positions = rng.uniform(0.0, 9.0, size=(7, 3))
    universe.dimensions = [9.0, 10.0, 11.0, 90.0, 90.0, 90.0]
    path = tmp_path / "from_mdanalysis.h5md"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lengthunit = "nm" if units else None
        with mda.Writer(str(path), n_atoms=7, convert_units=units, lengthunit=lengthunit) as writer:
            writer.write(universe)
    system, potential = read_packing(path, group="trajectory")
    assert potential is None and system.periodic
    expected = universe.atoms.positions.astype(np.float64)
    if units:  # written in nm from MDAnalysis' Angstrom: a factor 10, as MDAnalysis converts
        expected = expected / 10.0
    np.testing.assert_allclose(system.positions, expected, rtol=1e-6)
    np.testing.assert_allclose(system.box, np.array([9.0, 10.0, 11.0]) / (10.0 if units else 1.0),
                               rtol=1e-6)


@pytest.mark.parametrize("dim", [2, 3])
def test_ase_reads_the_extxyz_export_number_for_number(tmp_path, dim):
    inputs = make_result_inputs(n=11, dim=dim)
    path = write_result(tmp_path / "sensitivity.h5", **inputs)
    done = CliRunner().invoke(main, ["export", str(path), "--format", "extxyz"])
    assert done.exit_code == 0, done.output
    exported = tmp_path / "sensitivity.extxyz"
    assert str(exported) in done.output
    assert "'diameters' has several components" in done.output  # the [P][N][d] θ, said
    atoms = ase.io.read(exported, format="extxyz")
    result = read_result(path)
    system = result.system

    assert len(atoms) == system.n
    np.testing.assert_array_equal(atoms.positions[:, :dim], system.positions)  # exactly
    if dim == 2:
        np.testing.assert_array_equal(atoms.positions[:, 2], 0.0)
        assert list(atoms.pbc) == [True, True, False]
        assert atoms.cell[2, 2] == system.diameters.max()
    else:
        assert atoms.pbc.all()
    np.testing.assert_array_equal(np.diag(atoms.cell.array)[:dim], system.box)
    assert np.count_nonzero(atoms.cell.array - np.diag(np.diag(atoms.cell.array))) == 0
    np.testing.assert_array_equal(atoms.arrays["species_id"], system.species)
    np.testing.assert_array_equal(atoms.numbers, system.species + 1)
    np.testing.assert_array_equal(atoms.arrays["diameter"], system.diameters)
    np.testing.assert_array_equal(atoms.arrays["radius"], system.diameters / 2)
    np.testing.assert_array_equal(atoms.arrays["rattler"], result.rattlers)

    response = result.dx_dtheta("small_diameter")
    field = atoms.arrays["dx_dtheta_small_diameter"]
    backbone = ~result.rattlers
    np.testing.assert_array_equal(field[backbone, :dim], response[backbone])
    np.testing.assert_array_equal(field[~backbone], 0.0)  # rattlers: NaN in the file, 0 here
    np.testing.assert_array_equal(field[:, dim:], 0.0)
    np.testing.assert_array_equal(atoms.arrays["abs_dx_dtheta_small_diameter"][backbone],
                                  np.linalg.norm(response[backbone], axis=1))
    assert "dx_dtheta_diameters" not in atoms.arrays
    assert atoms.info["theta_small_diameter"] == 1.0
    assert atoms.get_potential_energy() == inputs["relaxation"]["energy"]
