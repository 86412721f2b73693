"""Pair potentials: pair laws against closed forms, periodic images, per-species parameters,
neighbor lists against every pair, the cutoff, and the sparse Hessian-vector product."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sensitivity import systems  # noqa: F401
from sensitivity.systems._errors import InputError
from sensitivity.systems._system import ParticleSystem
from sensitivity.systems.generate import random_packing
from sensitivity.systems.neighbor_lists import neighbor_list_fn
from sensitivity.systems.potentials import PairModel, Pairs, resolve_potential


def two_particles(distance, box=10.0, diameters=(1.0, 1.0), species=(0, 0)):
    positions = np.array([[1.0, 5.0], [1.0 + distance, 5.0]])
    return ParticleSystem(positions=np.mod(positions, box), diameters=np.array(diameters),
                          species=np.array(species), box=np.array([box, box]), periodic=True)


def energy(system, potential, scale=1.0):
    model = PairModel.build(system, resolve_potential(potential, system.n_species))
    params = model.default_params(system.diameters)._replace(scale=jnp.asarray(scale))
    return float(model.energy(jnp.asarray(system.positions), params, Pairs.all_pairs(system.n)))


@pytest.mark.parametrize("alpha", [2.0, 2.5])
@pytest.mark.slow
def test_soft_sphere_closed_form(alpha):
    r, sigma = 0.9, 1.2
    system = two_particles(r, diameters=(1.0, 1.4))
    expected = 1.0 / alpha * (1 - r / sigma) ** alpha
    assert energy(system, {"alpha": alpha}) == pytest.approx(expected, rel=1e-14)
    assert energy(two_particles(1.25, diameters=(1.0, 1.4)), {"alpha": alpha}) == 0.0


def test_periodic_image_and_box_scale():
    # 9.5 apart in a box of 10: the image is 0.5 away
    assert energy(two_particles(9.5), {}) == pytest.approx(0.5 * 0.5**2, rel=1e-14)
    # box scale λ at fixed fractional positions: distance 0.5 λ
    assert energy(two_particles(9.5), {}, scale=1.2) == pytest.approx(0.5 * 0.4**2, rel=1e-13)


def test_lennard_jones_and_morse_closed_forms():
    r = 1.1
    lj = 4 * ((1 / r) ** 12 - (1 / r) ** 6)
    assert energy(two_particles(r), {"kind": "lennard_jones"}) == pytest.approx(lj, rel=1e-13)
    morse = (1 - np.exp(-5.0 * (r - 1.0))) ** 2 - 1
    assert energy(two_particles(r), {"kind": "morse"}) == pytest.approx(morse, rel=1e-13)
    # smooth truncation: zero beyond r_cutoff σ
    assert energy(two_particles(2.6), {"kind": "lennard_jones"}) == 0.0
    # explicit sigma for Lennard-Jones
    assert energy(two_particles(r), {"kind": "lennard_jones", "sigma": 1.05}) == pytest.approx(
        4 * ((1.05 / r) ** 12 - (1.05 / r) ** 6), rel=1e-13)


def test_per_species_epsilon():
    system = two_particles(0.9, species=(0, 1))
    eps = [[1.0, 3.0], [3.0, 2.0]]
    assert energy(system, {"epsilon": eps}) == pytest.approx(3.0 * 0.5 * 0.1**2, rel=1e-13)


def test_resolve_potential_merges_and_rejects():
    spec = resolve_potential({"epsilon": None}, 2, {"kind": "morse", "epsilon": 2.0})
    assert spec.kind == "morse" and spec.epsilon[0, 1] == 2.0
    spec = resolve_potential({"epsilon": 3.0}, 2, {"kind": "morse", "epsilon": 2.0})
    assert spec.epsilon[1, 1] == 3.0
    for bad in ({"kind": "yukawa"}, {"epsilon": [[1, 2], [3, 4]]}, {"epsilon": [1, 2, 3]},
                {"sigma": 1.0}, {"alpha": 1.0}, {"neighbor_list": "sometimes"},
                {"kind": "lennard_jones", "r_onset": 3.0}):
        with pytest.raises(InputError):
            resolve_potential(bad, 2)


@pytest.mark.slow
def test_neighbor_list_matches_all_pairs_and_cutoff_covers_sigma():
    system = random_packing(600, dim=2, phi=0.9, seed=2)
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    params = model.default_params(system.diameters)
    y = jnp.asarray(system.positions)
    energy = jax.jit(model.energy)  # eagerly, each of its operations compiles on its own
    reference = energy(y, params, Pairs.all_pairs(system.n))
    grown = params._replace(diameters=params.diameters * 1.05)
    cutoff = model.reference_cutoff([params, grown])
    assert cutoff == pytest.approx(1.4 * 1.05)
    assert model.use_neighbor_list(cutoff)
    nbrs = neighbor_list_fn(model, cutoff, 0.2).allocate(y)
    pairs = Pairs.from_sparse_neighbor_list(nbrs)
    assert float(energy(y, params, pairs)) == pytest.approx(float(reference), rel=1e-12)
    # the list built for the larger σ still holds every pair at that σ
    assert float(energy(y, grown, pairs)) == pytest.approx(
        float(energy(y, grown, Pairs.all_pairs(system.n))), rel=1e-12)
    half = model.interacting_pairs(y, params)
    assert float(energy(y, params, half)) == pytest.approx(float(reference), rel=1e-12)


@pytest.mark.slow
def test_sparse_hessian_vector_product_is_exact():
    system = random_packing(24, dim=3, phi=0.7, seed=0)
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    params = model.default_params(system.diameters)
    y = jnp.asarray(system.positions)
    pairs = model.interacting_pairs(y, params)
    v = jax.random.normal(jax.random.PRNGKey(0), y.shape)

    def plain(y, p):
        return jax.grad(model.energy)(y, p, pairs)

    grad = model.gradient_fn(pairs)
    cached = model.gradient_fn(pairs, None, jax.jit(model.pair_stiffness)(y, params, pairs))
    tangent = params._replace(diameters=jnp.ones(24), epsilon=jnp.zeros((2, 2)),
                              scale=jnp.asarray(1.0))

    @jax.jit
    def products(y, v, params, tangent):
        out = [plain(y, params), jax.jvp(lambda y: plain(y, params), (y,), (v,))[1],
               jax.jvp(plain, (y, params), (v, tangent))[1]]
        for g in (grad, cached):
            out += [g(y, params), jax.jvp(lambda y: g(y, params), (y,), (v,))[1]]
        # tangents in the parameters too (diameters and box scale)
        out.append(jax.jvp(grad, (y, params), (v, tangent))[1])
        return out

    value, hvp, full, *rest = products(y, v, params, tangent)
    for g_value, g_hvp in (rest[0:2], rest[2:4]):
        assert np.allclose(g_value, value, rtol=0, atol=1e-14)
        assert np.allclose(g_hvp, hvp, rtol=1e-12, atol=1e-12)
    assert np.allclose(rest[4], full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("search", ["every-pair", "k-d tree"])
@pytest.mark.parametrize("case", ["periodic", "periodic-small-box", "free"])
def test_interacting_pairs_equals_brute_force(case, search, monkeypatch):
    """The half list, by NumPy over every pair (small systems) and by the k-d tree (large
    ones; forced here), against all pairs within margin × range by the minimum image, sorted
    by (i, j). A box under twice the cutoff always takes the every-pair path."""
    from sensitivity.systems import _system

    if search == "k-d tree":
        monkeypatch.setattr(_system, "BRUTE_FORCE_MAX", 0)
    n = 8 if case == "periodic-small-box" else 64
    system = random_packing(n, dim=2, phi=0.85, seed=3)
    if case == "free":
        system = dataclasses.replace(system, periodic=False)
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    params = model.default_params(system.diameters)
    margin = 1.3
    pairs = model.interacting_pairs(system.positions, params, margin=margin)
    y = np.asarray(system.positions)
    d = y[:, None, :] - y[None, :, :]
    if system.periodic:
        box = np.asarray(system.box)
        d = d - box * np.round(d / box)
    r = np.sqrt((d * d).sum(-1))
    i, j = np.nonzero(np.triu(r <= margin * model.interaction_range(params), 1))
    assert len(i) > n // 2
    np.testing.assert_array_equal(np.asarray(pairs.i), i)
    np.testing.assert_array_equal(np.asarray(pairs.j), j)


# --- our pair laws are jax-md's (importing jax_md.energy costs jax-md's neural networks) ---


@pytest.mark.parametrize("alpha", [2.0, 2.5, 3.0])
@pytest.mark.slow
def test_pair_laws_match_jax_md_energy(alpha):
    from jax_md import energy as jmd

    from sensitivity.systems import pair_laws as pot

    # Through r = σ exactly, the cutoff onset and the cutoff itself, on both sides.
    r = jnp.concatenate([jnp.linspace(0.5, 3.0, 401), jnp.array([1.0, 1.2, 2.5, 2.5 - 1e-12])])
    # float64 arrays: jax-md multiplies by float32 constants, which keep a Python float32.
    sigma, epsilon, morse_a, onset, cutoff = (jnp.asarray(v, jnp.float64)
                                              for v in (1.0, 1.3, 4.0, 1.2, 2.5))

    def ours_soft(r):
        return pot.soft_sphere(r, sigma, epsilon, alpha)

    def theirs_soft(r):
        return jmd.soft_sphere(r, sigma, epsilon, jnp.asarray(alpha))

    def ours_lj(r):
        return pot.smooth_cutoff(r, onset, cutoff) * pot.lennard_jones(r, sigma, epsilon)

    theirs_lj = jmd.multiplicative_isotropic_cutoff(jmd.lennard_jones, onset, cutoff)

    def ours_morse(r):
        return pot.smooth_cutoff(r, onset, cutoff) * pot.morse(r, sigma, epsilon, morse_a)

    theirs_morse = jmd.multiplicative_isotropic_cutoff(jmd.morse, onset, cutoff)
    pairs = [(ours_soft, theirs_soft, ()), (ours_lj, theirs_lj, (sigma, epsilon)),
             (ours_morse, theirs_morse, (sigma, epsilon, morse_a))]
    for ours, theirs, args in pairs:
        mine = jax.vmap(ours)(r)
        ref = jax.vmap(lambda x: theirs(x, *args))(r)
        np.testing.assert_allclose(mine, ref, rtol=1e-13, atol=1e-15)
        grad_mine = jax.vmap(jax.grad(ours))(r)
        grad_ref = jax.vmap(jax.grad(lambda x: theirs(x, *args)))(r)
        np.testing.assert_allclose(grad_mine, grad_ref, rtol=1e-12, atol=1e-14)
        hess_mine = jax.vmap(jax.grad(jax.grad(ours)))(r[r < 0.999])
        hess_ref = jax.vmap(jax.grad(jax.grad(lambda x: theirs(x, *args))))(r[r < 0.999])
        np.testing.assert_allclose(hess_mine, hess_ref, rtol=1e-11, atol=1e-12)


@pytest.mark.slow
def test_a_run_imports_only_the_jax_md_modules_it_uses(tmp_path):
    """A whole `sensitivity run` loads jax-md's space and partition, never rigid_body, nn or
    energy (5 s of import for modules the run does not use), and no LAPACK kernel: the first
    LAPACK lowering makes jaxlib load scipy.linalg (a quarter of a second). With the
    compilation cache off: with it on, the programs come from disk (``systems._exports``),
    and jax's lowering of an exported program initializes LAPACK whatever it holds."""
    import os
    import pathlib
    import shutil
    import subprocess
    import sys

    examples = pathlib.Path(__file__).resolve().parents[2] / "examples"
    shutil.copy(examples / "packing.h5", tmp_path / "packing.h5")
    config = (examples / "packing.yaml").read_text().replace("plots: true", "plots: false")
    (tmp_path / "run.yaml").write_text(config)
    code = (
        "import sys\n"
        "from sensitivity.cli.main import main\n"
        "try:\n"
        "    main.main(['run', 'run.yaml'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('jax_md.'))\n"
        "print('LOADED', loaded)\n"
        "print('SCIPY_LINALG', 'scipy.linalg' in sys.modules)\n"
    )
    env = dict(os.environ, SENSITIVITY_CACHE_DIR="off")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "sensitivity.h5").exists(), out.stdout + out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("LOADED"))
    assert "jax_md.space" in line, line  # 64 disks: every pair, no neighbor list
    for heavy in ("jax_md.rigid_body", "jax_md.nn", "jax_md.energy", "jax_md.simulate"):
        assert heavy not in line, line
    assert "SCIPY_LINALG False" in out.stdout, out.stdout
