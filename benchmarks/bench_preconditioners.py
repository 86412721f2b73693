"""CG on a relaxed packing's Hessian: the ELL operator of systems.hessian and the
preconditioners of systems.preconditioners, timed against the FIRE relaxation.

For each N (2D bidisperse, φ = 0.9, harmonic soft spheres, relaxed by FIRE to max|F| ≤ 1e-12,
rattlers removed as in systems.response), in one process:

* the Hessian-vector product: today's ``Σ_pairs K (v_i - v_j)`` with two segment sums, and
  the gather-only ELL product (:func:`systems.hessian.hessian_matvec`), µs per product
  measured inside a compiled loop of 200 products (no dispatch overhead);
* for no preconditioner, block Jacobi (applied, and folded into the operator as
  ``block_scaling``: the response's default) and two-level Schwarz variants: the build time
  (ELL Hessian + preconditioner data), the CG iterations and the solve time of
  ``sensitivity.solve_cg(..., nullspace=translations, tol=1e-10)`` compiled once with the
  operator and preconditioner data as arguments (best of ``--repeat`` rounds, each round
  timing every configuration once, so that load on a shared machine hits all alike), the
  relative
  difference to the block-Jacobi answer, and (build + solve) as a percentage of FIRE.

The right-hand side is ``-∂F/∂θ`` for θ = the small particles' diameter.

    python benchmarks/bench_preconditioners.py                    # N = 1024, 4096
    python benchmarks/bench_preconditioners.py --sizes 1024 --configs 32-spectral-12
    python benchmarks/bench_preconditioners.py --batch 32     # + vmapped many-rhs solves
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # float64 physics, before jax-md loads

import sensitivity
from sensitivity.systems import hessian as hs
from sensitivity.systems import preconditioners as pc
from sensitivity.systems.generate import random_packing
from sensitivity.systems.potentials import PairModel, resolve_potential
from sensitivity.systems.relax import make_relaxer, resolve_minimizer
from sensitivity.systems.response import ResponseSolver, resolve_sensitivity
from sensitivity.systems.theta import ParameterSpec, theta_apply

THETA = ParameterSpec("small_diameter", "diameter", 0)
DEFAULT_CONFIGS = ["none", "block_jacobi", "block_scaling", "16-none", "default",
                   "16-translations-f32", "32-spectral-12-bal"]
SCALED = "scaled"  # the apply of block_scaling: folded into the operator, none per iteration
_build_scaling = jax.jit(pc.build_block_scaling)


def best_of(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times), out


def segment_sum_hvp(K, i, j, v):
    """Today's product (systems.potentials.gradient_fn): gather, d×d blocks, two scatters."""
    n, d = v.shape
    dv = v[i] - v[j]
    f = jnp.stack([sum(K[:, a, c] * dv[:, c] for c in range(d)) for a in range(d)], axis=-1)
    return jax.ops.segment_sum(f, i, n) - jax.ops.segment_sum(f, j, n)


def per_product_us(product, args, v, loops=200, repeat=5):
    """µs per product inside one compiled loop of ``loops`` products."""
    @jax.jit
    def run(args, v):
        def body(_, v):
            w = product(*args, v)
            return w / jnp.linalg.norm(w)
        return jax.lax.fori_loop(0, loops, body, v)

    seconds, _ = best_of(lambda: run(args, v), repeat)
    return 1e6 * seconds / loops


def parse_config(name):
    """``none``, ``block_jacobi``, ``default`` (build_schwarz defaults) or
    ``PERCELL-COARSE[-MODES][-f32][-bal]`` (e.g. ``16-translations-f32``,
    ``32-spectral-12-f32-bal``): parts of about PERCELL particles, the coarse space,
    float32 local/coarse matrices, the balancing form (apply_schwarz_balanced).
    Returns (build, apply, kwargs, balanced) or None."""
    if name == "none":
        return None
    if name == "block_jacobi":
        return pc.build_block_jacobi, pc.apply_block_jacobi, {}, False
    if name == "block_scaling":  # the response's default: CG on S H S, S = D^(-1/2)
        return (lambda H, y, box: jax.block_until_ready(_build_scaling(H))), SCALED, {}, False
    if name == "default":
        return pc.build_schwarz, pc.apply_schwarz, {}, False
    per_cell, coarse, *rest = name.split("-")
    kw = dict(per_cell=int(per_cell), coarse=coarse)
    balanced = "bal" in rest
    if "f32" in rest:
        kw["dtype"] = np.float32
    modes = [r for r in rest if r.isdigit()]
    if modes:
        kw["modes"] = int(modes[0])
    apply = pc.apply_schwarz_balanced if balanced else pc.apply_schwarz
    return pc.build_schwarz, apply, kw, balanced


_SOLVES = {}


def compiled_solve(apply):
    """``solve(H, data, b, basis)``, one compiled function per apply (data are arguments)."""
    if apply == SCALED and apply not in _SOLVES:
        def solve(H, data, b, basis):
            # as systems._linear_system._block_scaling: b projected off the translations, CG on
            # the consistent scaled system without per-iteration projection
            flat = basis.reshape(basis.shape[0], -1)
            gram_inv = jnp.linalg.inv(flat @ flat.T)

            def project(x):
                return x - (((flat @ x.reshape(-1)) @ gram_inv) @ flat).reshape(x.shape)

            z, info = sensitivity.solve_cg(lambda v: hs.hessian_matvec(data.hessian, v),
                                           hs.scale_blocks(data.scale, project(b)),
                                           tol=1e-10, on_failure="ignore", full_output=True)
            return project(hs.scale_blocks(data.scale, z)), info
        _SOLVES[apply] = jax.jit(solve)
        _SOLVES[apply].__wrapped__ = solve
    if apply not in _SOLVES:
        def solve(H, data, b, basis):
            M = None if apply is None else (lambda r: apply(data, r))
            return sensitivity.solve_cg(lambda v: hs.hessian_matvec(H, v), b, M=M,
                                        nullspace=basis, tol=1e-10, on_failure="ignore",
                                        full_output=True)
        _SOLVES[apply] = jax.jit(solve)
        _SOLVES[apply].__wrapped__ = solve
    return _SOLVES[apply]


_BATCHED = {}


def compiled_batched_solve(apply):
    """``solve(H, data, bs, basis) -> (xs, max iterations)``: vmap over right-hand sides."""
    if apply not in _BATCHED:
        def solve(H, data, bs, basis):
            def one(b):
                x, info = compiled_solve(apply).__wrapped__(H, data, b, basis)
                return x, info.iterations
            xs, its = jax.vmap(one)(bs)
            return xs, jnp.max(its)
        _BATCHED[apply] = jax.jit(solve)
    return _BATCHED[apply]


def run(n, configs, repeat, seed=0, batch=0):
    system = random_packing(n, dim=2, phi=0.9, seed=seed)
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    params = model.default_params(system.diameters)
    relaxer = make_relaxer(model, resolve_minimizer({"ftol": 1e-12}), [params])
    fire = []
    for _ in range(repeat):
        result = relaxer.run(system.positions, params)
        fire.append(result.time_s)
    assert result.converged, result.message()
    t_fire = min(fire)
    solver = ResponseSolver(model, result.positions, params, max_force=result.max_force,
                            settings=resolve_sensitivity({}))
    # the backbone (non-rattlers), its pairs renumbered; translations = null space
    rattlers = np.asarray(solver.rattlers)
    backbone = np.flatnonzero(~rattlers)
    nb = len(backbone)
    pairs = solver.pairs  # the backbone's pairs, numbered as in the whole packing
    y_full = jnp.asarray(solver.y)
    y = np.asarray(y_full)[backbone]
    K = np.asarray(jax.jit(model.pair_stiffness)(y_full, params, pairs))
    number = np.cumsum(~rattlers) - 1
    i, j = number[np.asarray(pairs.i)], number[np.asarray(pairs.j)]
    box = np.asarray(model.box)
    basis = np.zeros((2, nb, 2))
    basis[0, :, 0] = basis[1, :, 1] = 1.0
    basis = jnp.asarray(basis)
    theta0, apply = theta_apply(THETA, params, np.asarray(system.species))
    force = jax.jit(lambda t: jax.jvp(
        lambda t: jax.grad(model.energy)(y_full, apply(params, t), pairs), (t,),
        (jnp.ones_like(t),))[1])
    b = -force(theta0)[jnp.asarray(backbone)]

    t_ell, H = best_of(lambda: hs.block_hessian(i, j, K, nb), repeat)
    v = jnp.asarray(np.random.default_rng(0).standard_normal((nb, 2)))
    Kj, ij = jnp.asarray(K), (jnp.asarray(i), jnp.asarray(j))
    assert np.allclose(hs.hessian_matvec(H, v), segment_sum_hvp(Kj, *ij, v), rtol=0,
                       atol=1e-12 * float(jnp.abs(Kj).max()) * 20)
    us_old = per_product_us(segment_sum_hvp, (Kj, *ij), v)
    us_ell = per_product_us(hs.hessian_matvec, (H,), v)
    out = dict(n=n, nb=nb, pairs=len(i), capacity=int(H.idx.shape[1]), fire_s=t_fire,
               fire_steps=result.steps, rattlers=int(solver.rattlers.sum()),
               ell_build_s=t_ell, us_old=us_old, us_ell=us_ell, rows=[])
    # compile and build everything first, then time round-robin (one build and one solve
    # of every configuration per round, best of ``repeat`` rounds): a burst of load on a
    # shared machine then hits every configuration alike
    x_ref = None
    entries = []
    for name in configs:
        cfg = parse_config(name)
        if cfg is None:
            build, kw, data, apply_fn, shape, balanced = None, {}, None, None, "-", False
        else:
            build, apply_fn, kw, balanced = cfg
            data = build(H, y, box, **kw)
            shape = (f"parts {data.members.shape[0]}x{data.members.shape[1]}, coarse "
                     f"{data.coarse.shape[0]}" if isinstance(data, pc.Schwarz) else "-")
            if balanced:
                data = (H, data)
        solve = compiled_solve(apply_fn)
        x, info = solve(H, data, b, basis)
        x = np.asarray(x)
        if x_ref is None or name == "block_jacobi":
            x_ref = x
        entries.append((build, kw, data, solve))
        out["rows"].append(dict(
            name=name, shape=shape, build_s=np.inf, solve_s=np.inf,
            iterations=int(info.iterations), converged=bool(info.converged), x=x))
    for _ in range(repeat):
        for (build, kw, data, solve), row in zip(entries, out["rows"], strict=True):
            if build is not None:
                t_build, _ = best_of(lambda b=build, kw=kw: b(H, y, box, **kw), 1)
            else:
                t_build = 0.0
            t_solve, _ = best_of(lambda s=solve, p=data: s(H, p, b, basis), 1)
            row["build_s"] = min(row["build_s"], t_build + t_ell)
            row["solve_s"] = min(row["solve_s"], t_solve)
    if batch:
        # many right-hand sides at one packing (vector θ): one vmapped solve of ``batch``
        # random right-hand sides (mean removed), best of 2
        bs = np.random.default_rng(1).standard_normal((batch, nb, 2))
        bs = jnp.asarray(bs - bs.mean(axis=1, keepdims=True))
        for (build, _kw, data, _solve), row in zip(entries, out["rows"], strict=True):
            fn = compiled_batched_solve(None if build is None else
                                        parse_config(row["name"])[1])
            _, its = fn(H, data, bs, basis)
            t, _ = best_of(lambda f=fn, p=data: f(H, p, bs, basis), 2)
            row["batch_s"], row["batch_iterations"] = t / batch, int(its)
    for row in out["rows"]:
        row["diff"] = float(np.linalg.norm(row.pop("x") - x_ref) / np.linalg.norm(x_ref))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                        help="none, block_jacobi, default, or PERCELL-COARSE[-MODES]")
    parser.add_argument("--repeat", type=int, default=7,
                        help="best of this many rounds (round-robin over configurations)")
    parser.add_argument("--batch", type=int, default=0,
                        help="also time a vmapped solve of this many right-hand sides")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, device {jax.devices()[0]}; 2D bidisperse phi = 0.9, "
          "ftol 1e-12, CG tol 1e-10; build = ELL Hessian + preconditioner (host)")
    for n in args.sizes:
        r = run(n, args.configs, args.repeat, batch=args.batch)
        print(f"\nN = {r['n']} (backbone {r['nb']}, {r['rattlers']} rattlers, {r['pairs']} "
              f"pairs, ELL capacity {r['capacity']}); FIRE {r['fire_steps']} steps "
              f"{r['fire_s'] * 1e3:.0f} ms; HVP µs: segment_sum {r['us_old']:.1f}, ELL "
              f"{r['us_ell']:.1f}; ELL build {r['ell_build_s'] * 1e3:.1f} ms")
        header = (f"{'preconditioner':>22} {'shape':>28} {'build ms':>9} {'CG it':>6} "
                  f"{'solve ms':>9} {'µs/it':>6} {'total ms':>9} {'% FIRE':>7} {'diff':>8}")
        print(header)
        print("-" * len(header))
        for row in r["rows"]:
            total = row["build_s"] + row["solve_s"]
            flag = "" if row["converged"] else " (not converged)"
            print(f"{row['name']:>22} {row['shape']:>28} {row['build_s'] * 1e3:>9.1f} "
                  f"{row['iterations']:>6} {row['solve_s'] * 1e3:>9.2f} "
                  f"{row['solve_s'] * 1e6 / max(row['iterations'], 1):>6.1f} "
                  f"{total * 1e3:>9.2f} {total / r['fire_s']:>7.2%} {row['diff']:>8.1e}{flag}"
                  + (f" | batch of {args.batch}: {row['batch_s'] * 1e3:.2f} ms per rhs, "
                     f"max it {row['batch_iterations']}" if args.batch else ""),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
