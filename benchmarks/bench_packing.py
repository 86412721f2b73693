"""∂x*/∂θ of a relaxed 2D packing five ways, timed against the FIRE relaxation itself.

For each N (2D bidisperse 50:50, diameters 1 and 1.4, harmonic soft spheres, φ = 0.9,
θ = the small particles' diameter), in one process:

* ``FIRE``: the relaxation from random positions to max |F| ≤ 1e-12 (steps, seconds);
* ``implicit``: ∂x*/∂θ through ``sensitivity.custom_root`` (systems.response: backbone
  unknowns, translations as the null space, CG at tol 1e-10, cached pair stiffness,
  block-Jacobi preconditioning folded into the operator) — the solve's CG iterations and
  seconds; ``+setup``: plus building the solver (contacts, rattlers, Hessian). FIRE, the
  solve and the setup are timed in interleaved rounds (``--repeat`` rounds, one FIRE run
  and the best of 4 solves and of 4 setups each; best of all rounds), so that a slow spell
  of a shared machine hits both sides of the ratio;
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

jax.config.update("jax_enable_x64", True)  # float64 physics, before jax-md loads

from sensitivity.systems.generate import random_packing
from sensitivity.systems.potentials import PairModel, resolve_potential
from sensitivity.systems.relax import _FireState, make_relaxer, resolve_minimizer
from sensitivity.systems.contacts import gauge_fix
from sensitivity.systems.response import ResponseSolver, resolve_sensitivity
from sensitivity.systems.theta import ParameterSpec, theta_apply

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
    """The tool's own derivative (``ResponseSolver.scalar_derivatives``, compiled once):
    (solve seconds, dx, iterations, converged), the solve timed without compilation."""
    times = []
    for _ in range(repeat):
        dx, report = solver.scalar_derivatives([THETA])[THETA.name]
        times.append(report.time_s)
    return min(times), np.asarray(dx), report.iterations, report.converged


def setup_time(model, result, params, repeat):
    """Building the ResponseSolver again (contacts, rattlers, stiffness blocks): seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ResponseSolver(model, result.positions, params, max_force=result.max_force,
                       settings=resolve_sensitivity({}))
        times.append(time.perf_counter() - t0)
    return min(times)


def plain_time(solver, repeat):
    """The engine used directly: ``custom_root`` on autodiff forces (forward-over-reverse
    Hessian-vector products), plain CG with the translations as null space."""
    import sensitivity
    from sensitivity.systems._linear_system import nullspace

    pk = solver.data
    theta0, apply = theta_apply(THETA, solver.params, np.asarray(solver.model.species))
    model, base = solver.model, solver.params

    def optimality(y, theta):
        forces = jax.grad(model.energy)(y, apply(base, theta), pk.pairs)
        return forces + pk.tether * (1.0 - pk.active)[:, None] * (y - pk.y)

    solve = functools.partial(sensitivity.solve_cg, tol=1e-10, nullspace=nullspace(pk),
                              on_failure="ignore", consistency_tol=float("inf"))

    @sensitivity.custom_root(optimality, solve=solve, symmetric=True)
    def relaxed(init, theta):
        return init

    def derivative(y, theta):
        return jax.jvp(lambda t: relaxed(y, t), (theta,), (jnp.ones_like(theta),))[1]

    compiled = jax.jit(derivative).lower(pk.y, theta0).compile()
    seconds, dx = best_of(lambda: compiled(pk.y, theta0), repeat)
    with sensitivity.record_solves() as reports:
        compiled(pk.y, theta0)
    iterations = int(np.asarray(reports[-1].iterations)) if reports else -1
    return seconds, np.asarray(dx), iterations


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

    from sensitivity.systems.potentials import Pairs

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
    pk, model, base = solver.data, solver.model, solver.params

    def optimality(y, theta):
        forces = jax.grad(model.energy)(y, apply(base, theta), pk.pairs)
        return forces + pk.tether * (1.0 - pk.active)[:, None] * (y - pk.y)

    solve = functools.partial(jaxopt.linear_solve.solve_cg, tol=1e-10)

    @jaxopt.implicit_diff.custom_root(optimality, solve=solve)
    def relaxed(init, theta):
        return init

    cotangent = np.random.default_rng(0).standard_normal(pk.y.shape) * np.asarray(
        pk.active)[:, None]
    cotangent = jnp.asarray(cotangent - cotangent.sum(axis=0) / np.asarray(pk.active).sum()
                            * np.asarray(pk.active)[:, None])

    def vjp(y, theta):
        return jax.grad(lambda t: jnp.sum(cotangent * relaxed(y, t)))(theta)

    compiled = jax.jit(vjp).lower(pk.y, theta0).compile()
    seconds, _ = best_of(lambda: compiled(pk.y, theta0), repeat)
    return seconds


def run(n, repeat, seed=0):
    system = random_packing(n, dim=2, phi=0.9, seed=seed)
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    params = model.default_params(system.diameters)
    theta0, apply = theta_apply(THETA, params, system.species)
    seen = [params, apply(params, theta0 + 1e-5), apply(params, theta0 - 1e-5)]
    relaxer = make_relaxer(model, resolve_minimizer({"ftol": 1e-12}), seen)
    result = relaxer.run(system.positions, params)  # compiles
    assert result.converged, result.message()
    solver = ResponseSolver(model, result.positions, params, max_force=result.max_force,
                            settings=resolve_sensitivity({}))
    backbone = ~solver.rattlers
    implicit_time(solver, 1)  # compiles
    # FIRE, the solve and the setup interleaved, round after round (best of each): a
    # slow spell of a shared machine then hits the ratio's numerator and denominator alike
    fire, implicit, setup = [], [], []
    for _ in range(repeat):
        fire.append(relaxer.run(system.positions, params).time_s)
        t, dx, iterations, converged = implicit_time(solver, 4)
        implicit.append(t)
        setup.append(setup_time(model, result, params, 4))
    t_fire, t_implicit, t_setup = min(fire), min(implicit), min(setup)
    t_plain, dx_plain, iterations_plain = plain_time(solver, repeat)
    dx_plain = np.asarray(params.scale) * dx_plain

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
        "setup_s": t_setup,
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
              f"{'CG it':>6} {'+setup':>7} | {'autodiff HVP':>12} {'it':>5} | {'unrolled':>9} "
              f"{'err':>8} | {'FD':>7} {'err':>8} | {'jaxopt':>7} | "
              f"{'jax-md FIRE steps':>17} {'s':>7} {'implicit/that':>13}")
    print("times as a fraction of the FIRE time (FIRE s); +setup: the implicit solve plus "
          "building the solver (contacts, rattlers, stiffness blocks); last columns: jax-md's "
          "fire_descent to the same ftol, and the implicit time as a fraction of it")
    print(header)
    print("-" * len(header))
    for n in sizes:
        r = run(n, args.repeat)
        jo = f"{r['jaxopt_s'] / r['fire_s']:7.2%}" if r["jaxopt_s"] is not None else "    n/a"
        print(f"{r['n']:>5} {r['rattlers']:>4} {r['fire_steps']:>10} {r['fire_s']:>8.3f} | "
              f"{r['implicit_s'] / r['fire_s']:>9.2%} {r['iterations']:>6} "
              f"{(r['implicit_s'] + r['setup_s']) / r['fire_s']:>7.2%} | "
              f"{r['plain_s'] / r['fire_s']:>12.2%} {r['plain_iterations']:>5} | "
              f"{r['unrolled_s'] / r['fire_s']:>9.2f}x {r['unrolled_error']:>7.1e} | "
              f"{r['fd_s'] / r['fire_s']:>6.2f}x {r['fd_error']:>8.1e} | {jo} | "
              f"{r['jaxmd_fire_steps']:>17} {r['jaxmd_fire_s']:>7.3f} "
              f"{r['implicit_s'] / r['jaxmd_fire_s']:>13.2%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
