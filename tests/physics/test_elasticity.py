"""Stress, pressure, strain θs and the elastic tensor (systems.elasticity) against finite
differences of the energy, re-relaxed strained packings, the virial sum, jax-md's
``athermal_moduli`` and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _physics import relative_error, relaxed

from sensitivity.systems import elasticity as el
from sensitivity.systems._errors import InputError
from sensitivity.systems.hessian import dense_hessian
from sensitivity.systems.pipeline import central_difference
from sensitivity.systems.potentials import resolve_potential
from sensitivity.systems.theta import ParameterSpec, resolve_parameters, theta_apply


@pytest.fixture(scope="module")
def packing_2d():
    """32 disks, φ = 0.9, particle 0 shrunk to a rattler; the elastic response."""
    system, model, params, relaxer, result, solver = relaxed(32, 2, 0.9, 1, shrink=0.3)
    assert solver.rattlers.sum() == 1
    return system, model, params, relaxer, solver, el.elastic_response(solver)


@pytest.fixture(scope="module")
def packing_3d():
    system, model, params, relaxer, result, solver = relaxed(32, 3, 0.72, 2, shrink=0.3)
    return system, model, params, relaxer, solver, el.elastic_response(solver)


def strain_specs(dim):
    return [ParameterSpec(c, "strain", None, c, dim) for c in el.STRAIN_COMPONENTS[dim]]


@pytest.mark.slow
def test_stress_is_the_strain_derivative_of_the_energy_and_the_virial(packing_2d):
    system, model, params, relaxer, solver, out = packing_2d
    pairs = model.interacting_pairs(solver.y, params)
    volume = el.box_volume(model, params)
    assert volume == pytest.approx(np.prod(system.box))
    stress = np.asarray(el.stress_tensor(model, solver.y, params, pairs, volume))
    virial = np.asarray(el.virial_stress(model, solver.y, params, pairs, volume))
    np.testing.assert_allclose(stress, virial, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out["stress"], stress, rtol=1e-12, atol=1e-15)
    per_particle = out["per_particle_stress"]
    assert per_particle.shape == (32, 2, 2)
    np.testing.assert_allclose(per_particle.sum(axis=0), stress, rtol=1e-10, atol=1e-15)
    assert np.all(per_particle[solver.rattlers] == 0)  # its contacts carry no force
    h = 1e-6
    for component in el.STRAIN_COMPONENTS[2]:
        e = el.strain_direction(component, 2)
        energies = [float(model.energy(solver.y, params._replace(strain=jnp.asarray(s * h * e)),
                                       pairs)) for s in (1.0, -1.0)]
        fd = (energies[0] - energies[1]) / (2 * h) / volume
        assert fd == pytest.approx(float(np.sum(stress * e)), rel=1e-7)
    # a jammed packing of repulsive disks is under compression: σ < 0, p > 0
    assert out["pressure"] == pytest.approx(-np.trace(stress) / 2, rel=1e-12)
    assert out["pressure"] > 0
    assert np.all(np.linalg.eigvalsh(stress) < 0)


@pytest.mark.parametrize("packing", ["packing_2d",
                                     pytest.param("packing_3d", marks=pytest.mark.slow)])
@pytest.mark.slow
def test_strain_theta_matches_re_relaxed_strained_packings(packing, request):
    system, model, params, relaxer, solver, out = request.getfixturevalue(packing)
    specs = strain_specs(system.dim)
    if system.dim == 3:
        specs = [specs[0], specs[3]]  # xx and yz: one normal, one shear
    results = solver.scalar_derivatives(specs)
    backbone = ~solver.rattlers
    h = 1e-6
    for spec in specs:
        dx, report = results[spec.name]
        assert report.converged
        theta0, apply = theta_apply(spec, params, system.species)
        assert theta0 == 0.0
        fd, runs = central_difference(relaxer, model, params, apply, theta0, solver.y, h,
                                      solver.rattlers, ftol=1e-14)
        assert all(r.converged for r, _, _ in runs)
        assert relative_error(dx, fd, backbone) < 1e-5, spec.name
        # the non-affine part: the central difference of λ y*(ε) (no affine map)
        nonaffine = el.nonaffine_part(dx, spec.component, np.asarray(solver.y),
                                      float(params.scale), solver.rattlers)
        y_ends = [float(p.scale) * y for _, p, y in runs]
        fd_y = (y_ends[0] - y_ends[1]) / (2 * h)
        fd_y = fd_y - fd_y[backbone].mean(axis=0)
        assert relative_error(nonaffine, fd_y, backbone) < 1e-5, spec.name
        assert np.all(np.isnan(nonaffine[solver.rattlers]))
        k = [s.name for s in strain_specs(system.dim)].index(spec.name)
        np.testing.assert_allclose(nonaffine[backbone], out["nonaffine"][k][backbone],
                                   rtol=1e-6, atol=1e-9 * np.abs(nonaffine[backbone]).max())


@pytest.mark.slow  # importing jax-md and compiling its tensor: ~30 s on 2 shared cores
@pytest.mark.parametrize("packing", ["packing_2d", "packing_3d"])
def test_elastic_tensor_matches_jax_md_athermal_moduli(packing, request):
    system, model, params, relaxer, solver, out = request.getfixturevalue(packing)
    from jax_md import elasticity, energy, space

    box = jnp.diag(jnp.asarray(model.box, jnp.float64))
    displacement, _ = space.periodic_general(box, fractional_coordinates=True)
    energy_fn = energy.soft_sphere_pair(displacement, sigma=jnp.asarray(system.diameters),
                                        epsilon=jnp.asarray(1.0), alpha=jnp.asarray(2.0))
    fractional = jnp.asarray(np.asarray(solver.y) / np.asarray(model.box))
    # jitted: one program instead of jax-md's eager operations, each compiled on its own
    theirs, converged = jax.jit(elasticity.athermal_moduli(
        energy_fn, tether_strength=1e-12, cg_tol=1e-13, check_convergence=True))(fractional, box)
    assert bool(converged)
    ours = out["elastic_tensor"]
    assert np.abs(ours - np.asarray(theirs)).max() <= 1e-6 * np.abs(ours).max()
    assert out["converged"]
    assert out["relaxation_asymmetry"] < 1e-8


@pytest.mark.parametrize("packing", ["packing_2d",
                                     pytest.param("packing_3d", marks=pytest.mark.slow)])
def test_elastic_tensor_symmetries(packing, request):
    out = request.getfixturevalue(packing)[-1]
    c = out["elastic_tensor"]
    np.testing.assert_allclose(c, c.transpose(1, 0, 2, 3), atol=0)
    np.testing.assert_allclose(c, c.transpose(0, 1, 3, 2), atol=0)
    np.testing.assert_allclose(c, c.transpose(2, 3, 0, 1), atol=1e-12 * np.abs(c).max())
    bulk, shear = el.moduli(c)
    assert out["bulk_modulus"] == bulk and out["shear_modulus"] == shear
    assert bulk > 0 and shear > 0


def test_moduli_closed_forms(packing_2d):
    # closed form: an isotropic tensor λ δδ + μ (δδ + δδ) has B = λ + 2μ/d, G = μ
    for d in (2, 3):
        eye = np.eye(d)
        lam, mu = 0.7, 0.3
        iso = (lam * np.einsum("ab,cd->abcd", eye, eye)
               + mu * (np.einsum("ac,bd->abcd", eye, eye) + np.einsum("ad,bc->abcd", eye, eye)))
        assert el.moduli(iso) == pytest.approx((lam + 2 * mu / d, mu))
    # 2D: G = (C11 + C22 - 2 C12 + 4 C66) / 8
    c = el.to_voigt(packing_2d[-1]["elastic_tensor"])
    assert packing_2d[-1]["shear_modulus"] == pytest.approx(
        (c[0, 0] + c[1, 1] - 2 * c[0, 1] + 4 * c[2, 2]) / 8, rel=1e-12)


@pytest.mark.slow
def test_elastic_tensor_matches_finite_differences_of_the_stress(packing_2d):
    """d(∂U/∂ε)/dε after re-relaxing at ε = ±h: the relaxed second derivative."""
    system, model, params, relaxer, solver, out = packing_2d
    comps = el.STRAIN_COMPONENTS[2]
    directions = [el.strain_direction(c, 2) for c in comps]
    mult = np.array([1.0 if c[0] == c[1] else 2.0 for c in comps])
    volume = el.box_volume(model, params)
    h = 1e-6
    m = np.zeros((3, 3))

    @jax.jit  # one program for the six evaluations (eagerly, each operation compiles alone)
    def strain_gradient(y, p, pairs):
        return jax.grad(lambda s: model.energy(y, p._replace(strain=s), pairs))(p.strain)

    for q, spec in enumerate(strain_specs(2)):
        theta0, apply = theta_apply(spec, params, system.species)
        _, runs = central_difference(relaxer, model, params, apply, theta0, solver.y, h,
                                     solver.rattlers, ftol=1e-14)
        grads = []
        for _, p, y in runs:
            pairs = model.interacting_pairs(y, p)
            grads.append(np.asarray(strain_gradient(y, p, pairs)))
        for k, e in enumerate(directions):
            m[k, q] = np.sum(e * (grads[0] - grads[1])) / (2 * h) / volume
    fd = m / np.outer(mult, mult)
    voigt = el.to_voigt(out["elastic_tensor"])
    assert np.abs(fd - voigt).max() <= 1e-5 * np.abs(voigt).max()


def test_strain_parameter_validation(packing_2d):
    system = packing_2d[0]
    spec = resolve_potential({}, system.n_species)
    ok = resolve_parameters([{"name": "s", "kind": "strain", "component": "yx"}], system, spec)
    assert ok[0].component == "xy" and ok[0].dim == 2
    with pytest.raises(InputError, match=r"parameters\[0\]\.component = 'zz'.*xx, yy, xy.*no z"):
        resolve_parameters([{"name": "s", "kind": "strain", "component": "zz"}], system, spec)
    with pytest.raises(InputError, match=r"parameters\[0\]\.component = 'shear'"):
        resolve_parameters([{"name": "s", "kind": "strain", "component": "shear"}], system, spec)
    with pytest.raises(InputError, match=r"parameters\[0\]\.component = None"):
        resolve_parameters([{"name": "s", "kind": "strain"}], system, spec)
    with pytest.raises(InputError, match=r"parameters\[0\]\.component is for kind 'strain'"):
        resolve_parameters([{"name": "s", "kind": "box", "component": "xx"}], system, spec)
    free = system.replace(periodic=False, box=None)
    with pytest.raises(InputError, match="periodic"):
        resolve_parameters([{"name": "s", "kind": "strain", "component": "xx"}], free, spec)


def _run_cli(tmp_path, parameters, elasticity=True, monkeypatch=None):
    from click.testing import CliRunner

    from sensitivity.cli.main import main
    from sensitivity.systems import random_packing, write_packing

    write_packing(tmp_path / "p.h5", random_packing(32, dim=2, phi=0.9, seed=1))
    (tmp_path / "c.yaml").write_text(
        "system: {path: p.h5}\n"
        f"parameters: {parameters}\n"
        f"sensitivity: {{elasticity: {str(elasticity).lower()}}}\n"
        "output: {directory: out, plots: false}\n")
    return CliRunner().invoke(main, ["run", str(tmp_path / "c.yaml"), "-q"])


@pytest.mark.slow
def test_cli_writes_and_inspects_the_elasticity(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sensitivity.cli.main import main
    from sensitivity.systems.io import read_result

    monkeypatch.setenv("SENSITIVITY_CACHE_DIR", str(tmp_path / "cache"))
    result = _run_cli(tmp_path, "[{name: shear, kind: strain, component: xy}]")
    assert result.exit_code == 0, result.output
    read = read_result(tmp_path / "out" / "sensitivity.h5")
    e = read.elasticity
    assert e["stress"].shape == (2, 2) and e["elastic_tensor"].shape == (2, 2, 2, 2)
    assert e["nonaffine"].shape == (3, 32, 2)
    assert e["per_particle_stress"].shape == (32, 2, 2)
    assert e["converged"] is True and read.converged
    assert e["pressure"] == pytest.approx(-np.trace(e["stress"]) / 2)
    assert (e["bulk_modulus"], e["shear_modulus"]) == pytest.approx(el.moduli(e["elastic_tensor"]))
    assert "isotropic average" in e["shear_modulus_definition"]
    shear = read.responses["shear"]
    assert shear["nonaffine"].shape == (32, 2)
    observables = shear["observables"]
    assert np.shape(observables["dsigma_dtheta"]) == (2, 2)
    assert observables["dp_dtheta"] == pytest.approx(-np.trace(observables["dsigma_dtheta"]) / 2)
    # along the shear θ, dU/dε_xy = V (σ_xy + σ_yx)
    volume = float(np.prod(read.system.box))
    assert observables["dU_dtheta"] == pytest.approx(2 * volume * e["stress"][0, 1], rel=1e-8)
    # the strain θ's non-affine field is the tensor's xy one
    backbone = ~read.rattlers
    np.testing.assert_allclose(shear["nonaffine"][backbone], e["nonaffine"][2][backbone],
                               rtol=1e-6, atol=1e-9)
    shown = CliRunner().invoke(main, ["inspect", str(tmp_path / "out" / "sensitivity.h5")])
    assert shown.exit_code == 0, shown.output
    assert "elastic tensor (Voigt)" in shown.output and "shear modulus G" in shown.output
    report = shear["report"]
    assert report.linear_range_plus > 0 > report.linear_range_minus
    assert report.linear_range_plus_event in ("opens", "closes")
    assert "linear range: dtheta+ = " in shown.output


@pytest.mark.parametrize("component, expected", [
    ("zz", "parameters[0].component = 'zz': must be one of xx, yy, xy for a 2D box"),
    ("qq", "parameters[0].component = 'qq': must be null or one of xx, yy, zz"),
])
def test_cli_bad_strain_component_exits_2(tmp_path, monkeypatch, component, expected):
    monkeypatch.setenv("SENSITIVITY_CACHE_DIR", str(tmp_path / "cache"))
    result = _run_cli(tmp_path, f"[{{name: s, kind: strain, component: {component}}}]",
                      elasticity=False)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


@pytest.mark.slow  # eight re-relaxations and a compile per θ group: ~14 s on 2 shared cores
def test_observable_derivatives_match_finite_differences(packing_2d):
    """dU/dθ, dσ/dθ, dp/dθ through x* against re-relaxed packings at θ ± h."""
    system, model, params, relaxer, solver, out = packing_2d
    specs = [ParameterSpec("small", "diameter", 0), ParameterSpec("box", "box"),
             ParameterSpec("xy", "strain", None, "xy", 2),
             ParameterSpec("diameters", "diameters")]
    scalars = solver.scalar_derivatives(specs[:3])
    responses = {name: {"dx_dtheta": dx} for name, (dx, _) in scalars.items()}
    responses["diameters"] = {"dx_dtheta": solver.vector_derivative(specs[3])[0]}
    derivatives = el.observable_derivatives(solver, specs, responses)
    h = 1e-6
    for spec in specs:
        component = 5 if spec.kind == "diameters" else None
        theta0, apply = theta_apply(spec, params, system.species)
        _, runs = central_difference(relaxer, model, params, apply, theta0, solver.y, h,
                                     solver.rattlers, component=component, ftol=1e-14)
        ends = []
        for _, p, y in runs:
            ends.append(el.observables(model, jnp.asarray(y), p, model.interacting_pairs(y, p)))
        fd = [(np.asarray(a) - np.asarray(b)) / (2 * h) for a, b in zip(*ends)]
        ours = derivatives[spec.name]
        if component is not None:
            ours = {key: value[component] for key, value in ours.items()}
        assert ours["dU_dtheta"] == pytest.approx(float(fd[0]), rel=1e-6), spec.name
        assert np.abs(ours["dsigma_dtheta"] - fd[1]).max() <= 1e-5 * np.abs(fd[1]).max()
        assert ours["dp_dtheta"] == pytest.approx(float(fd[2]), rel=1e-5), spec.name
        assert ours["dp_dtheta"] == pytest.approx(-np.trace(ours["dsigma_dtheta"]) / 2)


@pytest.mark.slow
def test_linear_range_predicts_the_first_contact_change(packing_2d):
    """Re-relaxing at half the predicted Δθ± keeps the contact network (rattlers' pairs
    aside); at twice it, the network has changed."""
    from sensitivity.systems.linear_range import linear_range
    from sensitivity.systems.pipeline import _contacts

    system, model, params, relaxer, solver, out = packing_2d
    specs = [ParameterSpec("small", "diameter", 0), ParameterSpec("xy", "strain", None, "xy", 2)]
    scalars = solver.scalar_derivatives(specs)
    ranges = linear_range(solver, specs, {k: {"dx_dtheta": dx} for k, (dx, _) in scalars.items()})
    rattlers = solver.rattlers

    def network(y, p):
        return {(a, b) for a, b in _contacts(model, y, p) if not rattlers[a] and not rattlers[b]}

    start = network(solver.y, params)
    for spec in specs:
        entry = ranges[spec.name]
        theta0, apply = theta_apply(spec, params, system.species)
        for side in ("plus", "minus"):
            delta = entry[f"linear_range_{side}"]
            assert (delta > 0) if side == "plus" else (delta < 0)
            i, j = entry[f"linear_range_{side}_pair"]
            assert entry[f"linear_range_{side}_event"] == ("opens" if (i, j) in start
                                                           else "closes")
            changed = []
            for factor in (0.5, 2.0):
                p = apply(params, theta0 + factor * delta)
                r = relaxer.run(np.asarray(solver.y) * float(params.scale), p, ftol=1e-13)
                assert r.converged
                changed.append(network(np.asarray(r.positions) / float(p.scale), p) ^ start)
            assert not changed[0], (spec.name, side)
            assert changed[1], (spec.name, side)


@pytest.mark.parametrize("settings", [{"preconditioner": "none"}, {"solver": "dense"}])
@pytest.mark.slow
def test_block_cg_tensor_equals_the_engine_solves(packing_2d, settings):
    """The default (one block CG for every strain component) against one engine solve
    per component (CG without scaling; a dense minimum-norm solve)."""
    from sensitivity.systems.response import ResponseSolver, resolve_sensitivity

    system, model, params, relaxer, solver, out = packing_2d
    other = ResponseSolver(model, np.asarray(solver.y) * float(params.scale), params,
                           max_force=solver.max_force, settings=resolve_sensitivity(settings))
    assert not el._block_solve(other._config())
    theirs = el.elastic_response(other)
    assert theirs["converged"]
    c = out["elastic_tensor"]
    assert np.abs(theirs["elastic_tensor"] - c).max() <= 1e-8 * np.abs(c).max()
    backbone = ~solver.rattlers
    np.testing.assert_allclose(theirs["nonaffine"][:, backbone], out["nonaffine"][:, backbone],
                               rtol=1e-6, atol=1e-8 * np.abs(out["nonaffine"][:, backbone]).max())


@pytest.mark.slow  # a whole run (compiles): ~14 s on 2 shared cores
def test_cli_marks_a_non_converged_tensor(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sensitivity.cli.main import main
    from sensitivity.systems import random_packing, write_packing
    from sensitivity.systems.io import read_result

    monkeypatch.setenv("SENSITIVITY_CACHE_DIR", str(tmp_path / "cache"))
    write_packing(tmp_path / "p.h5", random_packing(32, dim=2, phi=0.9, seed=1))
    (tmp_path / "c.yaml").write_text(
        "system: {path: p.h5}\nparameters: [{name: s, kind: strain, component: xx}]\n"
        "sensitivity: {elasticity: true, maxiter: 3}\noutput: {directory: out, plots: false}\n")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "c.yaml"), "-q"])
    assert result.exit_code == 1, result.output
    read = read_result(tmp_path / "out" / "sensitivity.h5")
    assert read.elasticity["converged"] is False and not read.converged
    assert read.elasticity["iterations"] == 3
    shown = CliRunner().invoke(main, ["inspect", str(tmp_path / "out" / "sensitivity.h5")])
    assert "Elasticity (NOT CONVERGED)" in shown.output


@pytest.mark.parametrize("d", [2, 3])
def test_hessian_matmat_of_every_strain_component_against_the_dense_hessian(d):
    """The m products of one gather (term by term in 2D, a batched product in 3D) against
    the dense matrix."""
    from sensitivity.systems.hessian import BlockHessian, hessian_matmat

    rng = np.random.default_rng(3)
    n, k, m = 40, 7, 3 * (d - 1)
    idx = np.concatenate([np.arange(n)[:, None], rng.integers(0, n, (n, k - 1))], axis=1)
    rows = rng.normal(size=(n, d, k * d))
    hessian = BlockHessian(jnp.asarray(idx, jnp.int32), jnp.asarray(rows))
    v = rng.normal(size=(m, n, d))
    out = np.asarray(hessian_matmat(hessian, jnp.asarray(v)))
    dense = dense_hessian(hessian)
    expected = (dense @ v.reshape(m, -1).T).T.reshape(m, n, d)
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13 * np.abs(expected).max())
