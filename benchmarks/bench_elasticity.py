"""The elastic tensor of a relaxed packing: all strain components against one scalar θ, and
against jax-md's ``elasticity.athermal_moduli``, in one process.

For each N (bidisperse 50:50, diameters 1 and 1.4, harmonic soft spheres, φ = 0.9 in 2D or
0.7 in 3D, relaxed by FIRE to max |F| ≤ 1e-12):

* ``one θ``: ∂x*/∂θ for one strain component (``ResponseSolver.scalar_derivatives``, CG at
  tol 1e-10, block-Jacobi scaling): seconds of the compiled call;
* ``tensor``: :func:`systems.elasticity.elastic_response` (every strain component: 3 in 2D,
  6 in 3D, in one block CG; the stress and the tensor), same settings, and its ratio to
  ``one θ``;
* ``jax-md``: ``athermal_moduli`` on the same packing (``space.periodic_general`` with
  fractional coordinates, a neighbor-list soft-sphere energy), at its defaults
  (tether 1e-10, cg_tol 1e-7) and tight (cg_tol 1e-10), jitted;
* ``--floor``: the Hessian product alone, one vector (``hessian_matvec``, as one θ's CG)
  and the m strain vectors (``hessian_matmat``, as the block CG), each in a loop of fixed
  length timed in the same rounds; printed per product and per iteration of each solve,
  with the lower bound they set: the block iterations times the m-vector product, as a
  multiple of one θ's whole solve;
* the error of each tensor, ``max |C - C_ref| / max |C_ref|``, against a reference: our
  tensor with the dense solver (pseudo-inverse on the null space complement) where
  ``N d ≤ --dense-max`` (else ours at tol 1e-13).

Every method is compiled first, then timed in ``--repeat`` interleaved rounds (one call of
each per round; the best of the rounds), so that a slow spell of a shared machine hits every
method alike.

    python benchmarks/bench_elasticity.py                     # N = 1024, 2D
    python benchmarks/bench_elasticity.py --sizes 1024 4096 --dim 2
    python benchmarks/bench_elasticity.py --sizes 512 --dim 3
    python benchmarks/bench_elasticity.py --sizes 4096 --dim 2 --no-jax-md --dense-max 0 --floor
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # float64 physics, before jax-md loads

from sensitivity.systems import elasticity as el  # noqa: E402
from sensitivity.systems.generate import random_packing  # noqa: E402
from sensitivity.systems.potentials import PairModel, resolve_potential  # noqa: E402
from sensitivity.systems.relax import make_relaxer, resolve_minimizer  # noqa: E402
from sensitivity.systems.response import ResponseSolver, resolve_sensitivity  # noqa: E402
from sensitivity.systems.theta import ParameterSpec  # noqa: E402


def best_of(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times), out


def error(c, ref):
    return float(np.abs(np.asarray(c) - ref).max() / np.abs(ref).max())


def jax_md_tensor(system, y, box_edges, cg_tol, tether=1e-10):
    """jax-md's athermal_moduli, jitted, on the same packing: (callable, arguments)."""
    from jax_md import elasticity, energy, partition, space

    box = jnp.diag(jnp.asarray(box_edges, jnp.float64))
    displacement, _ = space.periodic_general(box, fractional_coordinates=True)
    neighbor_fn, energy_fn = energy.soft_sphere_neighbor_list(
        displacement, box, sigma=jnp.asarray(system.diameters), epsilon=jnp.asarray(1.0),
        alpha=jnp.asarray(2.0), fractional_coordinates=True,
        format=partition.NeighborListFormat.Dense)
    fractional = jnp.asarray(np.asarray(y) / np.asarray(box_edges))
    neighbors = neighbor_fn.allocate(fractional)
    emt = elasticity.athermal_moduli(energy_fn, tether_strength=tether, cg_tol=cg_tol,
                                     check_convergence=True)
    fn = jax.jit(lambda r, nbrs: emt(r, box, neighbor=nbrs))
    return lambda: fn(fractional, neighbors)


def product_loops(solver, m, length):
    """The block-scaled Hessian's product with one vector and with m, each ``length`` times
    in one compiled loop (the operator both solves use): {label: callable}."""
    from sensitivity.systems.hessian import hessian_matmat, hessian_matvec

    hessian = solver.data.precond.hessian
    n, d = np.asarray(solver.y).shape

    def loop(product):
        return jax.jit(lambda h, v: jax.lax.fori_loop(
            0, length, lambda _, v: v - 1e-3 * product(h, v), v))

    one, block = loop(hessian_matvec), loop(hessian_matmat)
    v1, vm = jnp.ones((n, d)), jnp.ones((m, n, d))
    return {"product 1": lambda: one(hessian, v1), "product m": lambda: block(hessian, vm)}


def run(n, dim, phi, seed, repeat, dense_max, with_jax_md, floor=False, length=200):
    system = random_packing(n, dim=dim, phi=phi, seed=seed)
    spec = resolve_potential({}, system.n_species)
    model = PairModel.build(system, spec)
    params = model.default_params(system.diameters)
    relaxer = make_relaxer(model, resolve_minimizer({"ftol": 1e-12}), [params])
    t0 = time.perf_counter()
    relaxed = relaxer.run(system.positions, params)
    t_fire = time.perf_counter() - t0
    assert relaxed.converged, relaxed.message()

    def solver_with(**settings):
        return ResponseSolver(model, relaxed.positions, params, max_force=relaxed.max_force,
                              settings=resolve_sensitivity(settings))

    solver = solver_with()
    theta = [ParameterSpec("xy", "strain", None, "xy", dim)]
    methods = {"one": lambda: solver.scalar_derivatives(theta),
               "tensor": lambda: el.elastic_response(solver)}
    if with_jax_md:
        for tol in (1e-7, 1e-10):
            methods[tol] = jax_md_tensor(system, np.asarray(solver.y), model.box, tol)
    m = len(el.STRAIN_COMPONENTS[dim])
    if floor:
        methods.update(product_loops(solver, m, length))
    for fn in methods.values():
        fn()  # compile
    # interleaved rounds, best of each: a slow spell of a shared machine hits every method
    times = {key: [] for key in methods}
    outs = {}
    for _ in range(repeat):
        for key, fn in methods.items():
            t, outs[key] = best_of(fn, 1)
            times[key].append(t)
    best = {key: min(value) for key, value in times.items()}
    t_one, t_tensor = best["one"], best["tensor"]
    iterations_one = outs["one"]["xy"][1].iterations
    ours = outs["tensor"]
    if n * dim <= dense_max:
        reference = el.elastic_response(solver_with(solver="dense"))["elastic_tensor"]
        ref_name = "dense"
    else:
        reference = el.elastic_response(solver_with(tol=1e-13))["elastic_tensor"]
        ref_name = "ours at tol 1e-13"
    rows = [("ours, one strain θ", t_one, None, f"{iterations_one} CG iterations"),
            ("ours, full tensor", t_tensor, error(ours["elastic_tensor"], reference),
             f"{len(el.STRAIN_COMPONENTS[dim])} components, {ours['iterations']} block iterations, "
             f"converged {ours['converged']}")]
    if with_jax_md:
        for label, tol in (("jax-md defaults (cg_tol 1e-7)", 1e-7),
                           ("jax-md cg_tol 1e-10", 1e-10)):
            c, converged = outs[tol]
            rows.append((label, best[tol], error(c, reference),
                         f"converged flag {bool(converged)}"))
    print(f"\nN = {n}, {dim}D, φ = {phi}: FIRE {relaxed.steps} steps {t_fire:.2f} s, "
          f"{int(solver.rattlers.sum())} rattlers; reference: {ref_name}")
    print(f"  {'method':<32} {'seconds':>10} {'÷ one θ':>8} {'rel. error':>11}  notes")
    for label, t, err, notes in rows:
        err_text = "-" if err is None else f"{err:.1e}"
        print(f"  {label:<32} {t:>10.4f} {t / t_one:>8.2f} {err_text:>11}  {notes}")
    print(f"  p = {ours['pressure']:.6g}, B = {ours['bulk_modulus']:.6g}, "
          f"G = {ours['shear_modulus']:.6g}")
    if floor:
        block_iterations = int(np.max(ours["iterations"]))
        p1, pm = best["product 1"] / length, best["product m"] / length
        print(f"  per iteration: one θ's CG {t_one / iterations_one * 1e6:.1f} µs, the block "
              f"CG {t_tensor / block_iterations * 1e6:.1f} µs; the product with 1 vector "
              f"{p1 * 1e6:.1f} µs, with {m} {pm * 1e6:.1f} µs ({pm / p1:.2f}×)")
        print(f"  floor: {block_iterations} block products alone take "
              f"{block_iterations * pm / t_one:.2f}× one θ's solve "
              f"(its {iterations_one} products {iterations_one * p1 / t_one:.2f}×)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024])
    parser.add_argument("--dim", type=int, default=2, choices=(2, 3))
    parser.add_argument("--phi", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dense-max", type=int, default=4096,
                        help="dense reference up to this many unknowns")
    parser.add_argument("--no-jax-md", action="store_true")
    parser.add_argument("--floor", action="store_true",
                        help="also time the Hessian product alone (1 and m vectors)")
    args = parser.parse_args()
    phi = args.phi or (0.9 if args.dim == 2 else 0.7)
    for n in args.sizes:
        run(n, args.dim, phi, args.seed, args.repeat, args.dense_max, not args.no_jax_md,
            args.floor)


if __name__ == "__main__":
    main()
