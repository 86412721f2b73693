"""∂x*/∂θ of a relaxed 2D packing five ways, timed against the FIRE relaxation itself.

For each N (2D bidisperse 50:50, diameters 1 and 1.4, harmonic soft spheres, φ = 0.9,
θ = the small particles' diameter), in one process:

* ``FIRE``: the relaxation from random positions to max |F| ≤ 1e-12 (steps, seconds);
* ``implicit``: ∂x*/∂θ through ``sensitivity.custom_root`` (systems.response: backbone
  unknowns, translations as the null space, CG at tol 1e-10, cached pair stiffness,
  block-Jacobi preconditioner) — the solve's CG iterations and seconds;
* ``implicit (autodiff HVP)``: the same, with plain forward-over-reverse Hessian-vector
  products and no preconditioner (what a direct use of the engine costs);
* ``unrolled``: forward mode (``jax.jvp``) through the FIRE loop for K = the steps FIRE took
  (memory flat in K), and its relative error against the implicit answer;
* ``FD``: central differences by re-minimizing at θ ± 1e-5 from x* (to the same 1e-12), and the
  error;
* ``jaxopt``: jaxopt 0.8.5's ``custom_root`` (a ``custom_vjp``: reverse mode only) with
  ``solve_cg`` at tol 1e-10 on the same optimality function: one VJP (one linear solve).

Every method is compiled first and timed on a later call (best of ``--repeat``); times are
printed as ratios to the FIRE time. Errors are relative 2-norms over the non-rattlers after
removing the mean (the gauge).

    python benchmarks/bench_packing.py                 # N = 64, 256, 1024 (a few minutes)
    python benchmarks/bench_packing.py --full          # N = 64 ... 4096
    python benchmarks/bench_packing.py --sizes 512 2048
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import systems  # noqa: F401  (x64 before jax-md)
from systems.generate import random_packing
from systems.potentials import PairModel, resolve_potential
from systems.relax import _FireState, make_relaxer, resolve_minimizer
from systems.response import (ParameterSpec, ResponseSolver, gauge_fix, resolve_sensitivity,
                              theta_apply)

THETA = ParameterSpec("small_diameter", "diameter", 0)


def best_of(fn, repeat):
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times), out


def rel_error(a, b, mask):
    a = gauge_fix(a, ~mask)
    b = gauge_fix(b, ~mask)
    return float(np.linalg.norm(a[mask] - b[mask]) / np.linalg.norm(b[mask]))


def implicit_time(solver, repeat):
    """Compiled single-θ forward-mode derivative: (seconds, dx, iterations)."""
    from systems.response import _collect_reports

    theta0, apply = theta_apply(THETA, solver.params, np.asarray(solver.model.species))
    relaxed = solver.relaxed_solver()
    base = solver.params

    def derivative(y_backbone, theta):
        return jax.jvp(lambda t: solver._positions_of(relaxed, apply(base, t), y_backbone),
                       (theta,), (jnp.ones_like(theta),))[1]

    compiled = jax.jit(derivative).lower(solver.y_backbone, theta0).compile()
    with _collect_reports() as reports:
        seconds, dx = best_of(lambda: compiled(solver.y_backbone, theta0), repeat)
        jax.effects_barrier()
    iterations = int(np.asarray(reports[-1].iterations)) if reports else -1
    converged = bool(np.asarray(reports[-1].converged)) if reports else False
    return seconds, np.asarray(dx), iterations, converged


def unrolled_time(relaxer, system, params, steps, repeat):
    """Forward mode through ``steps`` FIRE steps from the initial positions."""
    theta0, apply = theta_apply(THETA, params, system.species)
    y0 = jnp.asarray(system.positions)
    neighbors0 = relaxer._allocate(y0) if relaxer.use_nl else relaxer._all_pairs
    spec = relaxer.spec

    def fire(theta, neighbors):
        p = apply(params, theta)
        _, f = relaxer._energy_and_force(y0, p, neighbors, False)
        state = _FireState(y0, jnp.zeros_like(y0), f, jnp.asarray(spec.dt_start),
                           jnp.asarray(spec.alpha_start), jnp.asarray(0, jnp.int32))

        def body(_, carry):
            state, neighbors = carry
            state, neighbors, _ = relaxer._step(state, neighbors, p)
            return state, neighbors

        state, _ = jax.lax.fori_loop(0, steps, body, (state, neighbors))
        return state.position

    def derivative(theta, neighbors):
        return jax.jvp(lambda t: fire(t, neighbors), (theta,), (jnp.ones_like(theta),))[1]

    compiled = jax.jit(derivative).lower(theta0, neighbors0).compile()
    seconds, dy = best_of(lambda: compiled(theta0, neighbors0), repeat)
    return seconds, np.asarray(dy)


def fd_time(relaxer, solver, system, params, h=1e-5):
    theta0, apply = theta_apply(THETA, params, system.species)
    y_star = np.asarray(solver.y)
    box = np.asarray(system.box)
    seconds = 0.0
    ends = []
    for sign in (1.0, -1.0):
        # (a neighbor list allocated at x* may have another capacity than at the start:
        # the run then compiles again; RelaxResult.time_s excludes that)
        r = relaxer.run(y_star, apply(params, theta0 + sign * h))
        seconds += r.time_s
        y = np.asarray(r.positions)
        ends.append(y_star + (y - y_star) - box * np.round((y - y_star) / box))
    return seconds, (ends[0] - ends[1]) / (2 * h)


def jaxmd_fire_time(relaxer, system, params, ftol=1e-12, max_steps=200_000):
    """jax-md's own ``fire_descent`` (default parameters) in a while loop to max|F| <= ftol,
    on the same energy and neighbor list: (seconds, steps). Its force norm adds 1e-6 under
    the square root, which slows it near tight tolerances."""
    from jax_md import minimize

    from systems.potentials import Pairs

    model = relaxer.model
    y0 = jnp.asarray(system.positions)
    neighbors0 = relaxer._allocate(y0) if relaxer.use_nl else relaxer._all_pairs

    def energy(y, neighbor=None, **unused):
        pairs = Pairs.from_sparse_neighbor_list(neighbor) if relaxer.use_nl else neighbor
        return model.energy(y, params, pairs)

    init_fn, apply_fn = minimize.fire_descent(energy, model.shift_fn)

    def fire(y0, neighbors):
        state = init_fn(y0, neighbor=neighbors)

        def fmax(state):
            return jnp.max(jnp.sqrt(jnp.sum(state.force ** 2, axis=-1)))

        def cond(c):
            state, neighbors, k = c
            return (fmax(state) > ftol) & (k < max_steps)

        def body(c):
            state, neighbors, k = c
            if relaxer.use_nl:
                neighbors = neighbors.update(state.position)
            return apply_fn(state, neighbor=neighbors), neighbors, k + 1

        state, neighbors, k = jax.lax.while_loop(cond, body, (state, neighbors, 0))
        return k, fmax(state)

    compiled = jax.jit(fire).lower(y0, neighbors0).compile()
    seconds, (steps, force) = best_of(lambda: compiled(y0, neighbors0), 1)
    return seconds, int(steps)


def jaxopt_time(solver, repeat):
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import jaxopt
    except ImportError:
        return None
    theta0, apply = theta_apply(THETA, solver.params, np.asarray(solver.model.species))
    model, pairs, base = solver.model, solver.pairs, solver.params

    def optimality(y_backbone, theta):
        y = solver.y.at[solver.backbone].set(y_backbone)
        return jax.grad(model.energy)(y, apply(base, theta), pairs)[solver.backbone]

    solve = functools.partial(jaxopt.linear_solve.solve_cg, tol=1e-10)

    @jaxopt.implicit_diff.custom_root(optimality, solve=solve)
    def relaxed(init, theta):
        return init

    cotangent = np.random.default_rng(0).standard_normal(solver.y_backbone.shape)
    cotangent = jnp.asarray(cotangent - cotangent.mean(axis=0))

    def vjp(y_backbone, theta):
        return jax.grad(lambda t: jnp.sum(cotangent * relaxed(y_backbone, t)))(theta)

    compiled = jax.jit(vjp).lower(solver.y_backbone, theta0).compile()
    seconds, _ = best_of(lambda: compiled(solver.y_backbone, theta0), repeat)
    return seconds


def run(n, repeat, seed=0):
    system = random_packing(n, dim=2, phi=0.9, seed=seed)
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    params = model.default_params(system.diameters)
    theta0, apply = theta_apply(THETA, params, system.species)
    seen = [params, apply(params, theta0 + 1e-5), apply(params, theta0 - 1e-5)]
    relaxer = make_relaxer(model, resolve_minimizer({"ftol": 1e-12}), seen)
    fire = []
    for _ in range(repeat):
        result = relaxer.run(system.positions, params)
        fire.append(result.time_s)
    t_fire = min(fire)
    assert result.converged, result.message()

    solver = ResponseSolver(model, result.positions, params, max_force=result.max_force,
                            settings=resolve_sensitivity({}))
    backbone = ~solver.rattlers
    t_implicit, dx, iterations, converged = implicit_time(solver, repeat)

    plain = ResponseSolver(model, result.positions, params, max_force=result.max_force,
                           settings=resolve_sensitivity({"preconditioner": "none"}))
    plain._gradient = lambda y, p: jax.grad(plain.backbone_model.energy)(y, p, plain.backbone_pairs)
    t_plain, dx_plain, iterations_plain, _ = implicit_time(plain, repeat)

    t_unrolled, dx_unrolled = unrolled_time(relaxer, system, params, result.steps,
                                            max(1, repeat - 1))
    t_fd, dx_fd = fd_time(relaxer, solver, system, params)
    t_jaxopt = jaxopt_time(solver, repeat)
    t_jaxmd, steps_jaxmd = jaxmd_fire_time(relaxer, system, params)
    return {
        "jaxmd_fire_s": t_jaxmd,
        "jaxmd_fire_steps": steps_jaxmd,
        "n": n,
        "rattlers": int(solver.rattlers.sum()),
        "fire_steps": result.steps,
        "fire_s": t_fire,
        "implicit_s": t_implicit,
        "iterations": iterations,
        "converged": converged,
        "plain_s": t_plain,
        "plain_iterations": iterations_plain,
        "plain_error": rel_error(dx_plain, dx, backbone),
        "unrolled_s": t_unrolled,
        "unrolled_error": rel_error(dx_unrolled, dx, backbone),
        "fd_s": t_fd,
        "fd_error": rel_error(dx_fd, dx, backbone),
        "jaxopt_s": t_jaxopt,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="N = 64, 256, 1024, 4096")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([64, 256, 1024, 4096] if args.full else [64, 256, 1024])
    print(f"jax {jax.__version__}, device {jax.devices()[0]}, x64 "
          f"{jax.config.jax_enable_x64}; 2D bidisperse phi = 0.9, ftol 1e-12, CG tol 1e-10")
    header = (f"{'N':>5} {'ratt':>4} {'FIRE steps':>10} {'FIRE s':>8} | {'implicit':>9} "
              f"{'CG it':>6} | {'autodiff HVP':>12} {'it':>5} | {'unrolled':>9} "
              f"{'err':>8} | {'FD':>7} {'err':>8} | {'jaxopt':>7} | "
              f"{'jax-md FIRE steps':>17} {'s':>7} {'implicit/that':>13}")
    print("times as a fraction of the FIRE time (FIRE s); last columns: jax-md's fire_descent "
          "to the same ftol, and the implicit time as a fraction of it")
    print(header)
    print("-" * len(header))
    for n in sizes:
        r = run(n, args.repeat)
        jo = f"{r['jaxopt_s'] / r['fire_s']:7.2%}" if r["jaxopt_s"] is not None else "    n/a"
        print(f"{r['n']:>5} {r['rattlers']:>4} {r['fire_steps']:>10} {r['fire_s']:>8.3f} | "
              f"{r['implicit_s'] / r['fire_s']:>9.2%} {r['iterations']:>6} | "
              f"{r['plain_s'] / r['fire_s']:>12.2%} {r['plain_iterations']:>5} | "
              f"{r['unrolled_s'] / r['fire_s']:>9.2f}x {r['unrolled_error']:>7.1e} | "
              f"{r['fd_s'] / r['fire_s']:>6.2f}x {r['fd_error']:>8.1e} | {jo} | "
              f"{r['jaxmd_fire_steps']:>17} {r['jaxmd_fire_s']:>7.3f} "
              f"{r['implicit_s'] / r['jaxmd_fire_s']:>13.2%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
