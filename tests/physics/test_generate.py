"""random_packing: packing fraction, composition, determinism, 2D and 3D."""

import math

import numpy as np
import pytest

from sensitivity.systems import ParticleSystem, random_packing


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("phi", [0.5, 0.84, 0.9])
def test_packing_fraction_matches_request(dim, phi):
    system = random_packing(64, dim=dim, phi=phi, seed=1)
    if dim == 2:
        volume = math.pi / 4 * np.sum(system.diameters**2)
    else:
        volume = math.pi / 6 * np.sum(system.diameters**3)
    assert volume / np.prod(system.box) == pytest.approx(phi, rel=1e-12)
    assert system.packing_fraction == pytest.approx(phi, rel=1e-12)


@pytest.mark.parametrize("dim", [2, 3])
def test_bidisperse_composition_and_box(dim):
    system = random_packing(33, dim=dim, phi=0.9, seed=0)
    assert isinstance(system, ParticleSystem)
    assert system.positions.shape == (33, dim) and system.positions.dtype == np.float64
    assert system.dim == dim and system.n == 33 and system.n_species == 2
    assert system.periodic
    assert np.all(system.box == system.box[0])  # square / cubic
    assert np.sum(system.species == 0) == 16 and np.sum(system.species == 1) == 17
    np.testing.assert_array_equal(system.diameters[system.species == 0], 1.0)
    np.testing.assert_array_equal(system.diameters[system.species == 1], 1.4)
    assert np.all(system.positions >= 0) and np.all(system.positions < system.box)


def test_size_ratio_and_small_diameter():
    system = random_packing(10, phi=0.8, size_ratio=1.2, small_diameter=2.0)
    assert set(system.diameters.tolist()) == {2.0, 2.4}
    assert system.packing_fraction == pytest.approx(0.8, rel=1e-12)


def test_deterministic_under_seed():
    a = random_packing(50, dim=3, phi=0.6, seed=7)
    b = random_packing(50, dim=3, phi=0.6, seed=7)
    c = random_packing(50, dim=3, phi=0.6, seed=8)
    assert a == b
    np.testing.assert_array_equal(a.positions, b.positions)
    assert not np.array_equal(a.positions, c.positions)


def test_positions_roughly_uniform():
    system = random_packing(4000, dim=2, phi=0.9, seed=3)
    fractional = system.positions / system.box
    assert abs(fractional.mean() - 0.5) < 0.02
    counts, _ = np.histogram(fractional[:, 0], bins=4, range=(0, 1))
    assert counts.min() > 850


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=0), "positive integer"), (dict(n=4, dim=1), "dim"), (dict(n=4, phi=0.0), "phi"),
    (dict(n=4, phi=float("nan")), "phi"), (dict(n=4, size_ratio=float("nan")), "size_ratio"),
    (dict(n=4, size_ratio=float("inf")), "size_ratio"),
    (dict(n=4, small_diameter=-1.0), "small_diameter"),
    (dict(n=4, size_ratio=1e308), "box edge"),  # finite diameters, an infinite box
    (dict(n=10**11), "more than this machine reads"),  # refused before allocating 1.5 TB
])
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        random_packing(**kwargs)
