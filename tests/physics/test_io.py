"""H5MD input/output: round trips, hand-written layouts, and every bad-file case."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from sensitivity.systems import InputError, ParticleSystem, random_packing, read_packing, write_packing
from sensitivity.systems.io import file_sha256


# --------------------------------------------------------------------------------------
# helpers


def write_raw(
    path,
    positions,
    *,
    edges=None,
    boundary="periodic",
    diameters=None,
    species=None,
    time_dependent=False,
    group="all",
):
    """Write an H5MD file by hand (as another MD tool would)."""
    positions = np.asarray(positions, dtype=np.float64)
    dim = positions.shape[-1]
    with h5py.File(path, "w") as f:
        h5md = f.create_group("h5md")
        h5md.attrs["version"] = [1, 1]
        f.create_group("h5md/author").attrs["name"] = "test"
        creator = f.create_group("h5md/creator")
        creator.attrs["name"] = "test"
        creator.attrs["version"] = "0"
        particles = f.create_group(f"particles/{group}")
        box = particles.create_group("box")
        box.attrs["dimension"] = dim
        box.attrs["boundary"] = np.array([boundary] * dim, dtype="S8")
        if edges is not None:
            box.create_dataset("edges", data=edges)
        if time_dependent:
            frames = positions if positions.ndim == 3 else positions[None]
            element = particles.create_group("position")
            element.create_dataset("value", data=frames)
            element.create_dataset("step", data=np.arange(len(frames)) * 10)
            element.create_dataset("time", data=np.arange(len(frames)) * 0.5)
        else:
            particles.create_dataset("position", data=positions)
        if diameters is not None:
            particles.create_dataset("diameter", data=diameters)
        if species is not None:
            particles.create_dataset("species", data=species)


@pytest.fixture
def packing_file(tmp_path):
    """A valid 2D file of 6 particles written by write_packing."""
    system = random_packing(6, dim=2, phi=0.7, seed=2)
    path = tmp_path / "packing.h5"
    write_packing(path, system)
    return path, system


def assert_input_error(path, *fragments, **kwargs):
    with pytest.raises(InputError) as info:
        read_packing(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert os.fspath(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("time_dependent", [True, False])
def test_write_read_round_trip(tmp_path, dim, time_dependent):
    system = random_packing(17, dim=dim, phi=0.85, seed=dim)
    path = tmp_path / "p.h5"
    returned = write_packing(path, system, time_dependent=time_dependent)
    assert returned == path
    loaded, potential = read_packing(path)
    assert potential is None
    assert loaded == system
    assert loaded.positions.dtype == np.float64 and loaded.species.dtype == np.int32
    with h5py.File(path) as f:
        assert list(f["h5md"].attrs["version"]) == [1, 1]
        assert f["h5md/author"].attrs["name"]
        assert f["h5md/creator"].attrs["name"] == b"sensitivity"
        assert f["h5md/creator"].attrs["version"]
        position = f["particles/all/position"]
        if time_dependent:
            assert position["value"].shape == (1, 17, dim)
            assert position["value"].dtype == np.float64
            assert position["step"].shape == (1,) and position["time"].shape == (1,)
        else:
            assert position.shape == (17, dim) and position.dtype == np.float64
        box = f["particles/all/box"]
        assert box.attrs["dimension"] == dim
        assert [b.decode() for b in box.attrs["boundary"]] == ["periodic"] * dim
        edges = box["edges/value"] if time_dependent else box["edges"]
        assert edges.dtype == np.float64
        assert edges.shape == ((1, dim) if time_dependent else (dim,))  # MDAnalysis: edges/value
        assert edges.attrs["unit"] == b"sigma"
        assert f["particles/all/diameter"].attrs["unit"] == b"sigma"


def test_potential_round_trip_and_metadata(tmp_path):
    system = random_packing(4, seed=0)
    potential = {
        "kind": "soft_sphere",
        "epsilon": 2.5,
        "alpha": 2.0,
        "sigma": None,
        "neighbor_list": True,
        "label": "harmonic",
        "per_species": np.array([[1.0, 2.0], [2.0, 3.0]]),
        "steps": 3,
    }
    path = tmp_path / "sub" / "dir" / "p.h5"  # folders are created
    write_packing(path, system, potential=potential, author="Ada", creator=("tool", "9.9"))
    _, loaded = read_packing(path)
    assert list(loaded)[0] == "kind"
    assert loaded["kind"] == "soft_sphere" and loaded["label"] == "harmonic"
    assert loaded["epsilon"] == 2.5 and isinstance(loaded["epsilon"], float)
    assert loaded["steps"] == 3 and isinstance(loaded["steps"], int)
    assert loaded["neighbor_list"] is True
    assert loaded["sigma"] is None
    np.testing.assert_array_equal(loaded["per_species"], potential["per_species"])
    with h5py.File(path) as f:
        assert f["h5md/author"].attrs["name"] == b"Ada"
        assert f["h5md/creator"].attrs["version"] == b"9.9"


def test_free_boundary_round_trip(tmp_path):
    system = ParticleSystem(
        positions=np.array([[-3.0, 1.0], [20.0, 2.0]]),
        diameters=np.array([1.0, 1.4]),
        species=np.array([0, 1]),
        box=None,
        periodic=False,
    )
    path = tmp_path / "free.h5"
    write_packing(path, system)
    loaded, _ = read_packing(path)
    assert loaded == system and loaded.box is None and not loaded.periodic
    with h5py.File(path) as f:
        assert [b.decode() for b in f["particles/all/box"].attrs["boundary"]] == ["none", "none"]


def test_free_boundary_with_edges_is_unwrapped(tmp_path):
    path = tmp_path / "free.h5"
    write_raw(path, [[5.0, -1.0]], edges=[2.0, 2.0], boundary="none")
    system, _ = read_packing(path)
    assert system.box is None and not system.periodic
    np.testing.assert_array_equal(system.positions, [[5.0, -1.0]])


def test_write_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "p.h5"
    write_packing(path, random_packing(4, seed=0))
    write_packing(path, random_packing(8, seed=1))
    assert read_packing(path)[0].n == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5"]  # no temporary left


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "p.h5"
    with pytest.raises(TypeError):
        write_packing(path, random_packing(4), potential={"kind": "x", "bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_positions_are_wrapped_on_load(tmp_path):
    path = tmp_path / "p.h5"
    positions = np.array([[-0.5, 2.5], [4.0, 9.0], [-1e-17, 1.0]])
    write_raw(path, positions, edges=[4.0, 3.0])
    system, _ = read_packing(path)
    np.testing.assert_allclose(system.positions[:2], [[3.5, 2.5], [0.0, 0.0]])
    assert np.all(system.positions >= 0) and np.all(system.positions < system.box)


def test_defaults_for_species_and_diameter(tmp_path):
    path = tmp_path / "p.h5"
    write_raw(path, np.ones((5, 3)), edges=[4.0, 4.0, 4.0])
    system, _ = read_packing(path)
    np.testing.assert_array_equal(system.diameters, np.ones(5))
    np.testing.assert_array_equal(system.species, np.zeros(5))
    assert system.species.dtype == np.int32 and system.n_species == 1


def test_several_species_without_diameters_are_refused(tmp_path):
    """LAMMPS and MDAnalysis write no diameters: unit diameters for a bidisperse packing
    would relax the wrong system without a word."""
    path = tmp_path / "p.h5"
    write_raw(path, np.ones((5, 2)), edges=[4.0, 4.0], species=np.array([1, 2, 1, 2, 2]))
    assert_input_error(path, "/particles/all/diameter is missing", "expected [5] diameters",
                       "2 species (1, 2)")
    with h5py.File(path, "a") as f:
        f["particles/all/diameter"] = np.array([1.0, 1.4, 1.0, 1.4, 1.4])
    np.testing.assert_array_equal(read_packing(path)[0].diameters, [1.0, 1.4, 1.0, 1.4, 1.4])


def test_frames_of_time_dependent_position(tmp_path):
    path = tmp_path / "traj.h5"
    frames = np.stack([np.full((3, 2), float(t)) for t in range(4)])
    write_raw(path, frames, edges=[10.0, 10.0], time_dependent=True)
    for frame, value in [(-1, 3.0), (0, 0.0), (2, 2.0), (-4, 0.0)]:
        system, _ = read_packing(path, frame=frame)
        np.testing.assert_array_equal(system.positions, value)


def test_time_dependent_edges_diameters_and_diagonal_box(tmp_path):
    path = tmp_path / "traj.h5"
    frames = np.stack([np.full((2, 2), 1.0 + t) for t in range(3)])
    write_raw(path, frames, time_dependent=True, species=np.array([0, 1]))
    with h5py.File(path, "a") as f:
        particles = f["particles/all"]
        edges = particles.create_group("box/edges")
        edges.create_dataset("value", data=np.stack([np.diag([5.0 + t, 6.0 + t]) for t in range(3)]))
        edges.create_dataset("step", data=np.array([0, 10, 20]))
        diameter = particles.create_group("diameter")
        diameter.create_dataset("value", data=np.array([[1.0, 2.0]]))  # one frame: always used
        diameter.create_dataset("step", data=np.array([0]))
    system, _ = read_packing(path, frame=1)
    np.testing.assert_array_equal(system.box, [6.0, 7.0])
    np.testing.assert_array_equal(system.diameters, [1.0, 2.0])
    np.testing.assert_array_equal(system.positions, 2.0)


def test_edges_element_matched_by_step(tmp_path):
    path = tmp_path / "traj.h5"
    frames = np.stack([np.full((2, 2), 1.0) for _ in range(3)])  # steps 0, 10, 20
    write_raw(path, frames, time_dependent=True)
    with h5py.File(path, "a") as f:
        edges = f["particles/all"].create_group("box/edges")
        edges.create_dataset("value", data=np.array([[4.0, 4.0], [8.0, 8.0]]))
        edges.create_dataset("step", data=np.array([0, 20]))
    np.testing.assert_array_equal(read_packing(path, frame=2)[0].box, [8.0, 8.0])
    np.testing.assert_array_equal(read_packing(path, frame=0)[0].box, [4.0, 4.0])
    assert_input_error(path, "/particles/all/box/edges/step", "step 10", frame=1)


def test_scalar_step_and_time(tmp_path):
    path = tmp_path / "traj.h5"
    write_raw(path, np.zeros((2, 2)), edges=[3.0, 3.0])
    with h5py.File(path, "a") as f:
        particles = f["particles/all"]
        del particles["position"]
        element = particles.create_group("position")
        element.create_dataset("value", data=np.stack([np.zeros((2, 2)), np.ones((2, 2))]))
        element.create_dataset("step", data=5)
        element.create_dataset("time", data=0.25)
    system, _ = read_packing(path)
    np.testing.assert_array_equal(system.positions, 1.0)


def test_other_particles_group(tmp_path):
    path = tmp_path / "p.h5"
    write_raw(path, np.zeros((2, 2)), edges=[1.0, 1.0], group="fluid")
    assert read_packing(path, group="fluid")[0].n == 2
    assert_input_error(path, "/particles/all is missing", "fluid")


def test_integral_float_species_accepted(tmp_path):
    path = tmp_path / "p.h5"
    write_raw(path, np.zeros((2, 2)), edges=[1.0, 1.0], species=np.array([0.0, 2.0]),
              diameters=np.ones(2))
    system, _ = read_packing(path)
    np.testing.assert_array_equal(system.labelled_species, [0, 2])
    np.testing.assert_array_equal(system.species, [0, 1])  # codes: the matrices are S x S
    assert system.n_species == 2 and system.species_labels == (0, 2)


def test_bundled_example_loads():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "packing.h5")
    system, potential = read_packing(path)
    assert system.n == 64 and system.dim == 2 and system.periodic
    assert system.packing_fraction == pytest.approx(0.9)
    assert potential["kind"] == "soft_sphere"
    assert system == random_packing(64, dim=2, phi=0.9, seed=0)
    assert os.path.getsize(path) < 100_000


def test_file_sha256(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# --------------------------------------------------------------------------------------
# bad files: each is an InputError naming the file, the dataset path and what was expected


def test_missing_file(tmp_path):
    assert_input_error(tmp_path / "nope.h5", "not found")


def test_not_hdf5(tmp_path):
    path = tmp_path / "packing.h5"
    path.write_text("x y z\n1 2 3\n")
    assert_input_error(path, "not an HDF5 file")


def test_directory(tmp_path):
    assert_input_error(tmp_path, "directory")


def test_missing_particles(tmp_path):
    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as f:
        f.create_group("h5md")
    assert_input_error(path, "/particles is missing")


def _mutate(path, action):
    with h5py.File(path, "a") as f:
        action(f)


BAD_CASES = {
    # name: (mutation of a valid 6-particle 2D file, fragments expected in the message)
    "position missing": (
        lambda f: f.__delitem__("particles/all/position"),
        ["/particles/all/position is missing", "[N][d]"],
    ),
    "position value missing": (
        lambda f: f.__delitem__("particles/all/position/value"),
        ["/particles/all/position/value is missing"],
    ),
    "position wrong rank": (
        lambda f: _replace(f, "particles/all/position", np.zeros(6)),
        ["/particles/all/position", "shape (6,)", "expected (N, d)"],
    ),
    "position wrong dimension": (
        lambda f: _replace(f, "particles/all/position/value", np.zeros((1, 6, 4))),
        ["/particles/all/position/value", "shape (1, 6, 4)", "expected (T, N, d)"],
    ),
    "position NaN": (
        lambda f: _set(f, "particles/all/position/value", (0, 3, 1), np.nan),
        ["/particles/all/position/value", "NaN", "particle 3"],
    ),
    "position inf": (
        lambda f: _set(f, "particles/all/position/value", (0, 0, 0), np.inf),
        ["/particles/all/position/value", "infinite"],
    ),
    "position not numeric": (
        lambda f: _replace(f, "particles/all/position", np.array([[b"a", b"b"]] * 6)),
        ["/particles/all/position", "floating point"],
    ),
    "step shape mismatch": (
        lambda f: _replace(f, "particles/all/position/step", np.arange(3)),
        ["/particles/all/position/step", "shape (3,)", "expected (1,)"],
    ),
    "box missing": (
        lambda f: f.__delitem__("particles/all/box"),
        ["/particles/all/box is missing"],
    ),
    "dimension missing": (
        lambda f: f["particles/all/box"].attrs.__delitem__("dimension"),
        ["/particles/all/box", "dimension", "expected 2"],
    ),
    "dimension mismatch": (
        lambda f: f["particles/all/box"].attrs.__setitem__("dimension", 3),
        ["/particles/all/box", "dimension = 3", "expected 2"],
    ),
    "boundary missing": (
        lambda f: f["particles/all/box"].attrs.__delitem__("boundary"),
        ["/particles/all/box", "boundary", "periodic"],
    ),
    "boundary mixed": (
        lambda f: f["particles/all/box"].attrs.__setitem__(
            "boundary", np.array([b"periodic", b"none"])
        ),
        ["/particles/all/box", "mixes periodic and free", "not supported"],
    ),
    "boundary unknown": (
        lambda f: f["particles/all/box"].attrs.__setitem__(
            "boundary", np.array([b"periodic", b"wall"])
        ),
        ["/particles/all/box", "'periodic' or 'none'"],
    ),
    "boundary wrong length": (
        lambda f: f["particles/all/box"].attrs.__setitem__("boundary", np.array([b"periodic"])),
        ["/particles/all/box", "expected 2 entries"],
    ),
    "edges missing": (
        lambda f: f.__delitem__("particles/all/box/edges"),
        ["/particles/all/box/edges is missing", "periodic"],
    ),
    "edges wrong shape": (
        lambda f: _replace(f, "particles/all/box/edges", np.ones(3)),
        ["/particles/all/box/edges", "shape (3,)", "expected (2,)"],
    ),
    "edges negative": (
        lambda f: _replace(f, "particles/all/box/edges", np.array([3.0, -1.0])),
        ["/particles/all/box/edges", "> 0"],
    ),
    "edges zero": (
        lambda f: _replace(f, "particles/all/box/edges", np.array([0.0, 1.0])),
        ["/particles/all/box/edges", "> 0"],
    ),
    "edges left-handed cell": (  # rows are the cell vectors: (0, 3) then (3, 1)
        lambda f: _replace(f, "particles/all/box/edges", np.array([[0.0, 3.0], [3.0, 1.0]])),
        ["/particles/all/box/edges", "left-handed cell", "det > 0"],
    ),
    "edges degenerate cell": (
        lambda f: _replace(f, "particles/all/box/edges", np.array([[3.0, 1.0], [6.0, 2.0]])),
        ["/particles/all/box/edges", "degenerate cell", "det > 0"],
    ),
    "edges non-finite cell": (
        lambda f: _replace(f, "particles/all/box/edges", np.array([[3.0, np.nan], [0, 2.0]])),
        ["/particles/all/box/edges", "finite"],
    ),
    "diameter N mismatch": (
        lambda f: _replace(f, "particles/all/diameter", np.ones(5)),
        ["/particles/all/diameter has shape (5,), expected (6,) to match /particles/all/position"],
    ),
    "diameter non-positive": (
        lambda f: _set(f, "particles/all/diameter", 2, 0.0),
        ["/particles/all/diameter", "> 0"],
    ),
    "diameter NaN": (
        lambda f: _set(f, "particles/all/diameter", 0, np.nan),
        ["/particles/all/diameter", "> 0"],
    ),
    "diameter element frames": (
        lambda f: _element(f, "particles/all/diameter", np.ones((3, 6))),
        ["/particles/all/diameter/value", "3 frames", "expected 1"],
    ),
    "species N mismatch": (
        lambda f: _replace(f, "particles/all/species", np.zeros((6, 2), dtype=int)),
        ["/particles/all/species has shape (6, 2), expected (6,)"],
    ),
    "species negative": (
        lambda f: _set(f, "particles/all/species", 1, -1),
        ["/particles/all/species", "negative"],
    ),
    "species not integer": (
        lambda f: _replace(f, "particles/all/species", np.full(6, 0.5)),
        ["/particles/all/species", "expected integers"],
    ),
    "potential without kind": (
        lambda f: f.create_group("parameters/potential").attrs.__setitem__("epsilon", 1.0),
        ["/parameters/potential", "'kind'"],
    ),
    "potential not a group": (
        lambda f: f.create_dataset("parameters/potential", data=1.0),
        ["/parameters/potential", "expected a group"],
    ),
}


def _replace(f, name, data):
    del f[name]
    f.create_dataset(name, data=data)


def _set(f, name, index, value):
    data = f[name][()]
    data[index] = value
    f[name][...] = data


def _element(f, name, value):
    del f[name]
    f.create_group(name).create_dataset("value", data=value)


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_file(packing_file, case):
    path, _ = packing_file
    mutation, fragments = BAD_CASES[case]
    _mutate(path, mutation)
    assert_input_error(path, *fragments)


@pytest.mark.parametrize("frame", [1, 5, -2])
def test_frame_out_of_range(packing_file, frame):
    path, _ = packing_file
    assert_input_error(path, "/particles/all/position/value", "out of range", frame=frame)


def test_frame_of_fixed_position(tmp_path):
    path = tmp_path / "fixed.h5"
    write_packing(path, random_packing(3), time_dependent=False)
    assert read_packing(path, frame=0)[0].n == 3
    assert_input_error(path, "/particles/all/position", "fixed dataset", frame=2)


def test_empty_position_element(packing_file):
    path, _ = packing_file
    _mutate(path, lambda f: _replace(f, "particles/all/position/value", np.zeros((0, 6, 2))))
    assert_input_error(path, "/particles/all/position/value", "no frames")


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)
    assert str(InputError("a\n  b")) == "a b"


# --------------------------------------------------------------------------------------
# result files

from sensitivity.systems import RelaxReport, Result, read_result, write_result  # noqa: E402


def make_result_inputs(n=9, dim=2, vector=True, audit=True):
    system = random_packing(n, dim=dim, phi=0.9, seed=5)
    rng = np.random.default_rng(0)
    rattlers = np.zeros(n, dtype=bool)
    rattlers[2] = True
    scalar = rng.normal(size=(n, dim))
    scalar[rattlers] = np.nan
    responses = {
        "small_diameter": {
            "dx_dtheta": scalar,
            "report": {
                "theta": 1.0,
                "kind": "diameter",
                "species": 0,
                "solver": "cg",
                "iterations": 42,
                "residual": 3.5e-11,
                "converged": True,
            },
        }
    }
    if vector:
        jacobian = rng.normal(size=(n, n, dim))
        jacobian[:, rattlers] = np.nan
        responses["diameters"] = {
            "dx_dtheta": jacobian,
            "report": {
                "theta": system.diameters,
                "kind": "diameters",
                "species": None,
                "solver": "cg",
                "iterations": np.arange(n),
                "residual": 1e-10,
                "converged": False,
            },
        }
    kwargs = dict(
        system=system,
        relaxation={
            "steps": 1234,
            "energy": 1.5e-3,
            "max_force": 8e-13,
            "stop_reason": "ftol",
            "converged": True,
        },
        responses=responses,
        rattlers=rattlers,
        zero_modes={
            "n_zero_modes": 4,
            "n_zero_modes_expected": 4,
            "n_rattlers": 1,
            "lambda_min": 2.1e-3,
            "lanczos_estimate": None,
            "smallest_gap": 0.01,
            "largest_overlap": 0.02,
        },
        parameters={
            "config": {
                "system": {"path": "packing.h5", "group": "all", "frame": -1},
                "potential": {"kind": "soft_sphere", "sigma": None, "alpha": 2.0},
                "parameters": [{"name": "small_diameter", "kind": "diameter", "species": 0}],
                "seed": np.int64(0),
            },
            "config_text": "system:\n  path: packing.h5\n",
            "provenance": {
                "versions": {"jax": "0.10.2", "numpy": np.__version__},
                "input_sha256": "ab" * 32,
                "device": "cpu",
                "x64": True,
                "seed": 0,
                "command_line": ["sensitivity", "run", "config.yaml"],
            },
            "potential": {"kind": "soft_sphere", "epsilon": 1.0, "alpha": 2.0, "sigma": None},
        },
        timings={"time_relax_s": 0.35, "time_sensitivity_s": 0.02, "time_compile_s": 0.9},
        audit=(
            {"small_diameter": {"relative_difference": 3e-8, "fd_step": 1e-5, "passed": True}}
            if audit
            else None
        ),
    )
    return kwargs


def assert_tree_equal(actual, expected):
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(str(k) for k in expected), (actual, expected)
        for key in expected:
            assert_tree_equal(actual[str(key)], expected[key])
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(actual, expected)
    elif isinstance(expected, (list, tuple)) and expected and all(isinstance(e, str) for e in expected):
        assert list(actual) == list(expected)
    else:
        assert actual == expected and type(actual) is type(expected.item() if isinstance(expected, np.generic) else expected), (
            actual,
            expected,
        )


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("vector", [True, False])
def test_result_round_trip(tmp_path, dim, vector):
    inputs = make_result_inputs(dim=dim, vector=vector, audit=vector)
    path = tmp_path / "out" / "sensitivity.h5"
    assert write_result(path, **inputs) == path
    result = read_result(path)
    assert isinstance(result, Result) and result.path == path
    assert result.system == inputs["system"]
    np.testing.assert_array_equal(result.rattlers, inputs["rattlers"])
    assert result.rattlers.dtype == bool
    assert result.names == list(inputs["responses"])
    for name, response in inputs["responses"].items():
        np.testing.assert_array_equal(result.dx_dtheta(name), response["dx_dtheta"])  # NaN-aware
        assert result.dx_dtheta(name).dtype == np.float64
        # the report's attributes, an explicit None (not recorded) left out
        assert_tree_equal(result.responses[name]["report"].to_attrs(),
                          {k: v for k, v in response["report"].items() if v is not None})
    assert result.relaxation == RelaxReport.from_attrs(inputs["relaxation"])
    assert_tree_equal(result.relaxation.to_attrs(), inputs["relaxation"])
    assert_tree_equal(result.zero_modes, inputs["zero_modes"])
    assert_tree_equal(result.timings, inputs["timings"])
    config = dict(inputs["parameters"]["config"], seed=0)
    assert result.parameters["config"] == config
    assert result.parameters["config_text"] == inputs["parameters"]["config_text"]
    assert_tree_equal(result.parameters["provenance"], inputs["parameters"]["provenance"])
    assert_tree_equal(result.parameters["potential"], inputs["parameters"]["potential"])
    if vector:
        assert_tree_equal(result.audit, inputs["audit"])
        assert not result.converged  # the vector solve reports converged=False
    else:
        assert result.audit is None
        assert result.converged


def test_result_is_valid_h5md_and_a_packing(tmp_path):
    inputs = make_result_inputs()
    path = tmp_path / "sensitivity.h5"
    write_result(path, **inputs)
    with h5py.File(path) as f:
        assert list(f["h5md"].attrs["version"]) == [1, 1]
        assert "name" in f["h5md/author"].attrs and "version" in f["h5md/creator"].attrs
        assert f["particles/all/box"].attrs["dimension"] == 2
        assert f["particles/all/position/value"].dtype == np.float64
        assert f["sensitivity/small_diameter/dx_dtheta"].shape == (9, 2)
        assert f["sensitivity/diameters/dx_dtheta"].shape == (9, 9, 2)
        assert f["sensitivity/rattlers"].shape == (9,)
        assert f["sensitivity"].attrs["time_relax_s"] == 0.35
        assert f["relaxation"].attrs["stop_reason"] == "ftol"
        assert "json" in f["parameters/config"].attrs
    system, potential = read_packing(path)  # the relaxed state reads as a packing
    assert system == inputs["system"]
    assert potential == {"kind": "soft_sphere", "alpha": 2.0, "epsilon": 1.0, "sigma": None}


def test_result_large_vector_theta_goes_to_datasets(tmp_path):
    n = 300
    system = random_packing(n, seed=0)
    path = tmp_path / "big.h5"
    write_result(
        path,
        system=system,
        relaxation={},
        responses={"diameters": {"dx_dtheta": np.zeros((2, n, 2)), "report": {"theta": system.diameters}}},
        rattlers=np.zeros(n, bool),
        zero_modes={},
        parameters={},
        timings={},
    )
    result = read_result(path)
    np.testing.assert_array_equal(result.responses["diameters"]["report"].theta, system.diameters)
    assert result.zero_modes == {} and result.timings == {} and result.parameters == {}


def test_result_extra_response_entries_and_text_config(tmp_path):
    inputs = make_result_inputs(vector=False)
    inputs["responses"]["small_diameter"]["mask"] = ~inputs["rattlers"]
    inputs["parameters"] = {"config": "seed: 0\n"}
    path = tmp_path / "r.h5"
    write_result(path, **inputs)
    result = read_result(path)
    np.testing.assert_array_equal(result.responses["small_diameter"]["mask"], ~inputs["rattlers"])
    assert result.parameters == {"config": "seed: 0\n"}


def test_result_write_rejects_bad_shapes(tmp_path):
    inputs = make_result_inputs(vector=False)
    bad = dict(inputs, rattlers=np.zeros(3, bool))
    with pytest.raises(ValueError):
        write_result(tmp_path / "r.h5", **bad)
    bad = dict(inputs, responses={"x": {"dx_dtheta": np.zeros((9, 3))}})
    with pytest.raises(ValueError):
        write_result(tmp_path / "r.h5", **bad)
    with pytest.raises(InputError):
        write_result(tmp_path / "r.h5", **dict(inputs, responses={"a/b": {"dx_dtheta": np.zeros((9, 2))}}))
    assert list(tmp_path.iterdir()) == []


def test_read_result_of_a_packing_is_an_input_error(packing_file):
    path, _ = packing_file
    with pytest.raises(InputError) as info:
        read_result(path)
    message = str(info.value)
    assert os.fspath(path) in message and "/sensitivity" in message and "input packing" in message


@pytest.mark.parametrize(
    "mutation, fragments",
    [
        (lambda f: f.__delitem__("sensitivity/rattlers"), ["/sensitivity/rattlers is missing"]),
        (
            lambda f: _replace(f, "sensitivity/rattlers", np.zeros(4, bool)),
            ["/sensitivity/rattlers has shape (4,), expected (9,)"],
        ),
        (
            lambda f: _replace(f, "sensitivity/small_diameter/dx_dtheta", np.zeros((9, 3))),
            ["/sensitivity/small_diameter/dx_dtheta has shape (9, 3)"],
        ),
        (
            lambda f: f.__delitem__("sensitivity/small_diameter/dx_dtheta"),
            ["/sensitivity/small_diameter/dx_dtheta is missing"],
        ),
        (
            lambda f: f["sensitivity"].attrs.__setitem__("format_version", 99),
            ["format_version = 99", "newer"],
        ),
        (lambda f: f.__delitem__("particles/all/position"), ["/particles/all/position is missing"]),
        (
            lambda f: f["parameters/config"].attrs.__setitem__("json", "{bad"),
            ["/parameters/config", "JSON"],
        ),
    ],
)
def test_bad_result_files(tmp_path, mutation, fragments):
    path = tmp_path / "sensitivity.h5"
    write_result(path, **make_result_inputs())
    _mutate(path, mutation)
    with pytest.raises(InputError) as info:
        read_result(path)
    message = str(info.value)
    assert "\n" not in message and os.fspath(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_read_result_missing_and_not_hdf5(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_result(tmp_path / "missing.h5")
    (tmp_path / "x.h5").write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match="not an HDF5 file"):
        read_result(tmp_path / "x.h5")


@pytest.mark.parametrize("visit", ["visititems_links", "visititems"])
def test_a_file_whose_contents_cannot_be_listed_is_one_line(tmp_path, monkeypatch, visit):
    """HDF5 failing while the reader walks the file (links, then datasets) is an InputError
    that names the file and says it is damaged, not a traceback."""
    path = write_packing(tmp_path / "p.h5", random_packing(6, dim=2, phi=0.5, seed=0))

    def broken(self, visitor):
        raise RuntimeError("bad  symbol\ntable")

    monkeypatch.setattr(h5py.Group, visit, broken)
    with pytest.raises(InputError) as caught:
        read_packing(path)
    assert str(caught.value) == (f"{path}: cannot list its contents (bad symbol table); the "
                                 "file is damaged")
