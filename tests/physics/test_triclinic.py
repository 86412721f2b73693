"""Sheared (triclinic) periodic cells: the cell helpers against a brute-force image search, the
H5MD cell matrix, and the physics of a packing expressed in an equivalent sheared cell (the
same lattice, so the same energy, forces, minimum, responses and elastic tensor as in the
square/cubic box), plus a packing generated in a genuinely tilted cell against central
differences of re-relaxed packings."""

import itertools

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _physics import central_difference, relative_error, relaxed

from sensitivity.systems import elasticity as el
from sensitivity.systems._errors import InputError
from sensitivity.systems._system import (
    ParticleSystem, box_volume, minimum_image, pairs_within, perpendicular_widths,
    wrap_positions)
from sensitivity.systems.contacts import gauge_fix
from sensitivity.systems.generate import random_packing, tilt_matrix
from sensitivity.systems.io import read_packing, write_packing
from sensitivity.systems.potentials import PairModel, resolve_potential
from sensitivity.systems.relax import make_relaxer, resolve_minimizer
from sensitivity.systems.theta import ParameterSpec

SCALARS = [ParameterSpec("small_diameter", "diameter", 0),
           ParameterSpec("epsilon_small", "epsilon", 0),
           ParameterSpec("box", "box", None)]


def _equivalent_cell(box):
    """A sheared cell of the same lattice as the square/cubic ``box``: 2D [[L, L], [0, L]];
    3D columns (L,0,0), (0,L,0), (-L,L,L)."""
    cell = np.diag(box)
    cell[0, 1] = box[0]
    if len(box) == 3:
        cell[0, 1] = 0.0
        cell[1, 2], cell[0, 2] = box[1], -box[0]
    return cell


def test_cell_helpers_against_a_brute_force_image_search(monkeypatch):
    rng = np.random.default_rng(0)
    cell = np.array([[3.0, 1.2, -0.4], [0.0, 2.5, 0.7], [0.0, 0.0, 2.8]])
    assert box_volume(cell) == pytest.approx(3.0 * 2.5 * 2.8)
    widths = perpendicular_widths(cell)
    normals = np.linalg.inv(cell)  # row k is normal to the face of the other two vectors
    for k in range(3):
        assert widths[k] == pytest.approx(abs(cell[:, k] @ normals[k]) / np.linalg.norm(normals[k]))
    points = rng.uniform(-5, 5, size=(200, 3))
    wrapped = wrap_positions(points, cell)
    frac = wrapped @ np.linalg.inv(cell).T
    assert np.all((frac >= 0) & (frac < 1))
    shift = np.linalg.solve(cell, (points - wrapped).T).T  # whole cell vectors
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)
    # every displacement shorter than half the smallest width is its own minimum image
    delta = rng.uniform(-1, 1, size=(500, 3)) * 0.49 * widths.min() / np.sqrt(3)
    images = np.array(list(itertools.product(range(-2, 3), repeat=3))) @ cell.T
    for dr in delta[:50]:
        moved = dr + images[rng.integers(len(images))]
        found = minimum_image(moved[None], cell)[0]
        best = (moved - images)[np.argmin(np.linalg.norm(moved - images, axis=1))]
        np.testing.assert_allclose(found, best, atol=1e-12)
    # pairs_within in a sheared cell = the brute-force search over images
    y = wrap_positions(rng.uniform(0, 3, size=(40, 3)), cell)
    reach = 0.45 * widths.min()
    pairs = {tuple(p) for p in pairs_within(y, reach, cell)}
    expected = {(i, j) for i in range(40) for j in range(i + 1, 40)
                if np.min(np.linalg.norm(y[i] - y[j] - images, axis=1)) <= reach}
    assert pairs == expected and len(expected) > 20
    import sensitivity.systems._system as system_module
    monkeypatch.setattr(system_module, "BRUTE_FORCE_MAX", 0)  # the k-d tree over images
    np.testing.assert_array_equal(pairs_within(y, reach, cell), sorted(expected))


@pytest.mark.parametrize("dim", [2, 3])
def test_pairs_within_edge_lengths_and_open_space_against_an_image_search(dim, monkeypatch):
    """The axis-by-axis minimum image of the brute-force search, and the k-d tree, against
    every pair's nearest image found by trying them all (points wrapped, some on the faces)."""
    import sensitivity.systems._system as system_module

    rng = np.random.default_rng(dim)
    box = np.array([4.0, 3.0, 5.0][:dim])
    y = rng.uniform(0, 1, size=(120, dim)) * box
    y[:6, 0] = 0.0  # on a face: their images across it are at the other side
    y[6:9] = y[9:12] + 1e-7  # nearly coincident pairs
    images = np.array(list(itertools.product((-1, 0, 1), repeat=dim))) * box
    for reach in (1e-6, 0.7, 1.4):
        periodic = {(i, j) for i in range(120) for j in range(i + 1, 120)
                    if np.min(np.linalg.norm(y[i] - y[j] - images, axis=1)) <= reach}
        open_space = {(i, j) for i in range(120) for j in range(i + 1, 120)
                      if np.linalg.norm(y[i] - y[j]) <= reach}
        assert len(open_space) >= 3 and (reach < 0.1 or len(periodic) > len(open_space))
        for brute in (True, False):
            monkeypatch.setattr(system_module, "BRUTE_FORCE_MAX", 1024 if brute else 0)
            np.testing.assert_array_equal(pairs_within(y, reach, box),
                                          np.array(sorted(periodic)).reshape(-1, 2))
            np.testing.assert_array_equal(pairs_within(y, reach),
                                          np.array(sorted(open_space)).reshape(-1, 2))


def test_cell_matrix_round_trip_and_h5md_rows(tmp_path):
    system = random_packing(16, dim=3, phi=0.5, seed=3, tilt={"xy": 0.2, "yz": -0.3})
    cell = system.box
    assert cell.shape == (3, 3) and cell[0, 1] == pytest.approx(0.2 * cell[0, 0])
    assert system.packing_fraction == pytest.approx(0.5)
    path = tmp_path / "sheared.h5"
    write_packing(path, system)
    loaded, _ = read_packing(path)
    assert loaded == system
    with h5py.File(path) as f:  # H5MD: the rows of edges are the cell vectors
        np.testing.assert_array_equal(f["particles/all/box/edges/value"][0], cell.T)
    # a diagonal cell matrix is an orthorhombic box: the edge-length form, today's path
    square = random_packing(8, dim=2, phi=0.5, seed=0)
    assert square.replace(box=np.diag(square.box)).box.shape == (2,)
    with pytest.raises(ValueError, match="tilt 'xz'"):
        tilt_matrix({"xz": 0.1}, 2)


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def equivalent(request):
    """A relaxed packing (32 disks / 64 spheres, one rattler) and the same packing in an
    equivalent sheared cell, with both responses and elastic tensors."""
    dim = request.param
    n, phi = (32, 0.9) if dim == 2 else (64, 0.7)
    square = relaxed(n, dim, phi, 1, shrink=0.3)
    system, result = square[0], square[4]
    cell = _equivalent_cell(system.box)
    sheared_system = system.replace(box=cell, positions=wrap_positions(result.positions, cell))
    sheared = relaxed(0, dim, 0, 0, system=sheared_system)
    out = []
    for s in (square, sheared):
        solver = s[-1]
        out.append((s, solver.scalar_derivatives(SCALARS), el.elastic_response(solver)))
    return out


@pytest.mark.slow
def test_equivalent_cell_same_energy_forces_minimum_and_response(equivalent):
    (square, d_square, e_square), (sheared, d_sheared, e_sheared) = equivalent
    system, model, params = square[0], square[1], square[2]
    cell = sheared[1].box
    x, x2 = square[4].positions, sheared[4].positions
    # the same minimum, each particle moved by whole cell vectors at most
    np.testing.assert_allclose(minimum_image(x2 - x, cell), 0.0, atol=1e-12)
    assert sheared[4].energy == pytest.approx(square[4].energy, rel=1e-12)
    # energy and forces of one unrelaxed configuration, wrapped into either cell
    y = system.positions
    pairs = model.interacting_pairs(y, params)
    pairs2 = sheared[1].interacting_pairs(wrap_positions(y, cell), params)
    assert len(pairs2.i) == len(pairs.i)
    # jitted: eagerly, each operation of the energy and its gradient compiles on its own
    e1, f1 = jax.jit(lambda y: (model.energy(y, params, pairs), model.forces(y, params, pairs))
                     )(jnp.asarray(y))
    e2, f2 = jax.jit(lambda y: (sheared[1].energy(y, params, pairs2),
                                sheared[1].forces(y, params, pairs2)))(
        jnp.asarray(wrap_positions(y, cell)))
    assert float(e2) == pytest.approx(float(e1), rel=1e-12)
    f1, f2 = np.asarray(f1), np.asarray(f2)
    np.testing.assert_allclose(f2, f1, atol=1e-12 * np.abs(f1).max())
    assert (sheared[-1].rattlers == square[-1].rattlers).all()
    backbone = ~square[-1].rattlers
    for name in ("small_diameter", "epsilon_small"):
        a, b = d_square[name][0], d_sheared[name][0]
        assert relative_error(b, a, backbone) < 1e-10, name
    # kind box: x = λ y, so dx/dλ = y* + dy/dλ; y* depends on the image: compare dy/dλ
    rattlers = square[-1].rattlers
    a = gauge_fix(d_square["box"][0] - np.asarray(square[-1].y), rattlers)
    b = gauge_fix(d_sheared["box"][0] - np.asarray(sheared[-1].y), rattlers)
    assert relative_error(b, a, backbone) < 1e-10
    # stress and elastic tensor: the same lattice, the same tensor
    scale = np.abs(e_square["elastic_tensor"]).max()
    np.testing.assert_allclose(e_sheared["elastic_tensor"], e_square["elastic_tensor"],
                               atol=1e-9 * scale)
    np.testing.assert_allclose(e_sheared["stress"], e_square["stress"],
                               atol=1e-12 * np.abs(e_square["stress"]).max())


@pytest.fixture(scope="module")
def tilted():
    """32 disks generated and relaxed in a cell tilted by xy = 0.3."""
    system = random_packing(32, dim=2, phi=0.9, seed=4, tilt={"xy": 0.3})
    return relaxed(0, 2, 0, 0, system=system)


@pytest.mark.slow
def test_tilted_cell_response_matches_central_differences(tilted):
    system, model, params, relaxer, result, solver = tilted
    assert model.box.shape == (2, 2) and result.converged
    backbone = ~solver.rattlers
    derivatives = solver.scalar_derivatives(SCALARS)
    for pspec in SCALARS:
        fd = central_difference(system, model, params, relaxer, solver, pspec)
        assert relative_error(derivatives[pspec.name][0], fd, backbone) < 1e-6, pspec.name


@pytest.mark.slow
@pytest.mark.filterwarnings("error::FutureWarning")
@pytest.mark.parametrize("tilt", [{"xy": 0.3}, {"xy": -0.4}], ids=["upper", "general"])
def test_tilted_cell_neighbor_list_equals_every_pair(tilt):
    """The sheared cell's neighbor list (jax-md's cell list in fractional coordinates for
    an upper-triangular cell; every pair as candidates, pruned, for a general one)
    relaxes along the same path to the same minimum as the dense pair loop, without jax's
    warning about jax-md's int64-to-int32 index scatter."""
    system = random_packing(64, dim=2, phi=0.9, seed=6, tilt={"xy": abs(tilt["xy"])})
    if tilt["xy"] < 0:  # the lattice turned by 90 degrees: a cell matrix, not triangular
        rotation = np.array([[0.0, -1.0], [1.0, 0.0]])
        system = system.replace(box=rotation @ system.box,
                                positions=system.positions @ rotation.T)
    results = []
    for choice in (False, True):
        spec = resolve_potential({"neighbor_list": choice}, system.n_species)
        model = PairModel.build(system, spec)
        params = model.default_params(system.diameters)
        relaxer = make_relaxer(model, resolve_minimizer({"ftol": 1e-13}), [params])
        assert relaxer.use_nl == choice
        results.append(relaxer.run(system.positions, params))
        assert results[-1].converged
    if tilt["xy"] > 0:
        assert model.fractional_lists
        assert relaxer._lists.cell_list_fn is not None  # the cell list is in use
    else:
        assert not model.fractional_lists
    dense, listed = results
    assert abs(listed.steps - dense.steps) <= 2
    np.testing.assert_allclose(minimum_image(listed.positions - dense.positions, model.box),
                               0.0, atol=1e-8)
    assert listed.energy == pytest.approx(dense.energy, rel=1e-10)


def test_thin_and_bad_cells_are_refused():
    system = random_packing(8, dim=2, phi=0.5, seed=0)
    cell = np.diag(system.box)
    cell[0, 1] = 3.0 * system.box[0]  # a long, thin cell: widths L/sqrt(10)
    thin = system.replace(box=cell, positions=wrap_positions(system.positions, cell))
    model = PairModel.build(thin, resolve_potential({}, thin.n_species))
    params = model.default_params(thin.diameters)
    with pytest.raises(InputError, match="too thin for the interaction range"):
        make_relaxer(model, resolve_minimizer({}), [params], where="p.h5: box/edges")
    with pytest.raises(ValueError, match="box must have shape"):
        ParticleSystem(positions=np.zeros((2, 2)), diameters=np.ones(2), species=np.zeros(2),
                       box=np.ones((2, 3)), periodic=True)


def test_a_square_box_thinner_than_twice_the_range_is_refused_and_why():
    """Two disks 0.75 apart in a square box of edge 1.5, range 1: each meets both periodic
    images of the other (at 0.75 on either side), which the minimum image counts once."""
    import jax.numpy as jnp

    from sensitivity.systems._system import ParticleSystem
    from sensitivity.systems.potentials import Pairs

    box = np.array([1.5, 4.0])
    system = ParticleSystem(positions=np.array([[0.2, 2.0], [0.95, 2.0]]), diameters=np.ones(2),
                            species=np.zeros(2, int), box=box, periodic=True)
    model = PairModel.build(system, resolve_potential({}, 1))
    params = model.default_params(system.diameters)
    # harmonic, sigma 1: each image pair at distance 0.75 holds (1 - 0.75)^2 / 2
    every_image = 2 * 0.5 * (1 - 0.75) ** 2
    counted = float(model.energy(jnp.asarray(system.positions), params, Pairs.all_pairs(2)))
    assert counted == pytest.approx(every_image / 2, rel=1e-12)  # what the minimum image gives
    with pytest.raises(InputError, match=r"too thin for the interaction range 1: its "
                                         r"perpendicular widths \[1.5, 4.0\]"):
        make_relaxer(model, resolve_minimizer({}), [params])
    wide = system.replace(box=np.array([2.0, 4.0]))
    make_relaxer(PairModel.build(wide, resolve_potential({}, 1)), resolve_minimizer({}),
                 [params])


def _sheared_result(tmp_path, dim):
    import sys
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from test_io import make_result_inputs
    from sensitivity.systems import write_result

    inputs = make_result_inputs(n=11, dim=dim)
    system = inputs["system"]
    tilt = {"xy": 0.25} if dim == 2 else {"xy": 0.25, "xz": -0.1, "yz": 0.3}
    cell = system.box[0] * tilt_matrix(tilt, dim)
    inputs["system"] = system.replace(box=cell, positions=wrap_positions(system.positions, cell))
    return inputs["system"], write_result(tmp_path / "sensitivity.h5", **inputs)


@pytest.mark.parametrize("dim", [2, 3])
def test_ase_reads_the_sheared_cell_of_the_extxyz_export(tmp_path, dim):
    import ase.io
    from click.testing import CliRunner

    from sensitivity.cli.main import main

    system, path = _sheared_result(tmp_path, dim)
    done = CliRunner().invoke(main, ["export", str(path), "--format", "extxyz"])
    assert done.exit_code == 0, done.output
    atoms = ase.io.read(tmp_path / "sensitivity.extxyz", format="extxyz")
    # ASE's cell rows are the cell vectors: our cell matrix's columns
    np.testing.assert_array_equal(atoms.cell.array[:dim, :dim], system.box.T)
    np.testing.assert_array_equal(atoms.positions[:, :dim], system.positions)
    frac = atoms.get_scaled_positions(wrap=False)[:, :dim]
    assert np.all((frac > -1e-12) & (frac < 1 + 1e-12))  # inside ASE's cell too


def test_mdanalysis_reads_the_sheared_cell_of_a_3d_result(tmp_path):
    import warnings

    import MDAnalysis as mda
    from MDAnalysis.lib.mdamath import triclinic_vectors

    system, path = _sheared_result(tmp_path, 3)
    universe = mda.Universe.empty(system.n, trajectory=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        universe.load_new(str(path), format="H5MD", convert_units=False)
    np.testing.assert_allclose(universe.atoms.positions, system.positions, rtol=2e-7, atol=1e-6)
    # MDAnalysis stores lengths and angles; its vectors (rows) are our columns, in its
    # canonical orientation (first vector along x, second in the x-y plane): ours is
    # upper-triangular, so transposed it is lower-triangular, the same orientation
    np.testing.assert_allclose(triclinic_vectors(universe.dimensions), system.box.T,
                               rtol=2e-6, atol=1e-6)


def test_plot_draws_the_parallelogram_and_wraps_arrows_by_cell_vectors():
    from matplotlib.patches import Polygon

    from sensitivity.systems.plots import response_figure

    cell = np.array([[10.0, 4.0], [0.0, 8.0]])
    # fractional coordinates: near the left (sheared) edge, the bottom edge, and inside
    frac = np.array([[0.03, 0.5], [0.5, 0.02], [0.5, 0.5]])
    positions = frac @ cell.T
    field = np.array([[-1.0, 0.0], [0.0, -0.5], [0.3, 0.3]])
    arrays = {"positions": positions, "diameters": np.full(3, 0.5), "box": cell,
              "dx_dtheta": field, "species": np.zeros(3, int)}
    figure = response_figure(arrays, "theta", scale=1.0)
    axes = figure.axes[0]
    (outline,) = [p for p in axes.patches if isinstance(p, Polygon)]
    corners = np.array([[0, 0], [10, 0], [14, 8], [4, 8]])
    np.testing.assert_allclose(outline.get_xy()[:4], corners)
    (quiver,) = [c for c in axes.collections if hasattr(c, "U")]
    drawn = np.column_stack([quiver.X, quiver.Y])
    # arrow 0 leaves through the left edge: its image starts one cell vector (10, 0) away;
    # arrow 1 leaves through the bottom: its image starts one cell vector (4, 8) away
    assert quiver.N == 5
    assert any(np.allclose(xy, positions[0] + cell[:, 0]) for xy in drawn)
    assert any(np.allclose(xy, positions[1] + cell[:, 1]) for xy in drawn)
    assert "2 wrapped" in axes.get_title()


@pytest.mark.slow
def test_tilted_cell_strain_theta_matches_re_relaxed_strained_packings(tilted):
    from sensitivity.systems.pipeline import central_difference as central_difference_at
    from sensitivity.systems.theta import theta_apply

    system, model, params, relaxer, result, solver = tilted
    specs = [ParameterSpec(c, "strain", None, c, 2) for c in ("xy", "yy")]
    backbone = ~solver.rattlers
    derivatives = solver.scalar_derivatives(specs)
    for spec in specs:
        theta0, apply = theta_apply(spec, params, system.species)
        fd, runs = central_difference_at(relaxer, model, params, apply, theta0, solver.y, 1e-6,
                                         solver.rattlers, ftol=1e-14)
        assert all(r.converged for r, _, _ in runs)
        assert relative_error(derivatives[spec.name][0], fd, backbone) < 1e-5, spec.name


@pytest.mark.slow  # importing jax-md's energy and compiling its tensor
def test_tilted_cell_elastic_tensor_matches_jax_md_athermal_moduli(tilted):
    from jax_md import elasticity, energy, space

    system, model, params, relaxer, result, solver = tilted
    cell = jnp.asarray(model.box)  # upper triangular: jax-md's form of a general box
    displacement, _ = space.periodic_general(cell, fractional_coordinates=True)
    energy_fn = energy.soft_sphere_pair(displacement, sigma=jnp.asarray(system.diameters),
                                        epsilon=jnp.asarray(1.0), alpha=jnp.asarray(2.0))
    fractional = jnp.asarray(np.asarray(solver.y) @ np.linalg.inv(model.box).T)
    # jitted: one program instead of jax-md's eager operations, each compiled on its own
    theirs, converged = jax.jit(elasticity.athermal_moduli(
        energy_fn, tether_strength=1e-12, cg_tol=1e-13, check_convergence=True))(fractional, cell)
    assert bool(converged)
    ours = el.elastic_response(solver)
    assert ours["converged"]
    c = ours["elastic_tensor"]
    assert np.abs(c - np.asarray(theirs)).max() <= 1e-6 * np.abs(c).max()
    assert ours["volume"] == pytest.approx(float(np.linalg.det(model.box)), rel=1e-14)


@pytest.mark.slow
@pytest.mark.parametrize("preconditioner", ["schwarz", "two_level"])
def test_tilted_cell_preconditioners_agree(tilted, preconditioner):
    """The preconditioners that cut the box into parts (along the cell vectors, in
    fractional coordinates, for a sheared cell) give the same derivative."""
    from sensitivity.systems.response import ResponseSolver, resolve_sensitivity

    system, model, params, relaxer, result, solver = tilted
    reference = solver.scalar_derivatives(SCALARS[:1])["small_diameter"][0]
    other = ResponseSolver(model, result.positions, params, max_force=result.max_force,
                           settings=resolve_sensitivity({"preconditioner": preconditioner}))
    dx, report = other.scalar_derivatives(SCALARS[:1])["small_diameter"]
    assert report.converged
    assert relative_error(dx, reference, ~solver.rattlers) < 1e-8


def test_partition_of_a_sheared_cell_follows_its_cell_vectors():
    from sensitivity.systems.preconditioners import partition

    cell = np.array([[4.0, 4.0], [0.0, 4.0]])
    frac = np.random.default_rng(0).uniform(0, 1, size=(64, 2))
    part = partition(frac @ cell.T + cell[:, 1], cell, 2)  # any image: wrapped first
    assert np.bincount(part).tolist() == [16] * 4
    for p in range(4):  # cut along the longer cell vector, then the other: quadrants
        members = frac[part == p]
        assert np.ptp(members[:, 0]) < 0.7 and np.ptp(members[:, 1]) < 0.7


def test_3d_sheared_cell_slice_is_the_shifted_parallelogram():
    from matplotlib.patches import Polygon

    from sensitivity.systems.plots import response_figure

    system = random_packing(40, dim=3, phi=0.5, seed=2,
                            tilt={"xy": 0.2, "xz": 0.3, "yz": -0.2})
    cell = system.box
    field = np.random.default_rng(0).normal(size=(40, 3))
    figure = response_figure({"system": system, "dx_dtheta": field}, "theta",
                             slice_z=0.25 * cell[2, 2])
    axes = figure.axes[0]
    (outline,) = [p for p in axes.patches if isinstance(p, Polygon)]
    origin = 0.25 * cell[:2, 2]  # the plane z = H_zz / 4 cuts the cell a quarter up a3
    corners = origin + np.array([[0, 0], [1, 0], [1, 1], [0, 1]]) @ cell[:2, :2].T
    np.testing.assert_allclose(outline.get_xy()[:4], corners)
    (disks,) = [c for c in axes.collections if not hasattr(c, "U")]
    centres = disks.get_offsets()
    frac = (centres - origin) @ np.linalg.inv(cell[:2, :2]).T
    dz = system.positions[:, 2] - 0.25 * cell[2, 2]
    dz -= cell[2, 2] * np.round(dz / cell[2, 2])  # lattice planes of constant z: H_zz apart
    cut = int(np.sum(np.abs(dz) < system.diameters / 2))
    # each cut sphere once inside the parallelogram (its images, whole cell vectors away,
    # outside it)
    inside = np.all((frac > 0) & (frac < 1), axis=1)
    assert cut >= 3 and inside.sum() == cut
    assert f"{cut} of 40 spheres cut" in axes.get_title()
