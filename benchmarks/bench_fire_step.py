"""CPU time of one FIRE step at N = 256 (2D, harmonic, phi 0.9): today's compiled loop against
the same loop with the force as ``-jax.grad(model.energy)`` (the scatter-add form it replaced)
and the FIRE update written as before (three reductions and a per-particle sqrt).

    python benchmarks/bench_fire_step.py                  # N = 256, 1000 steps, 9 rounds
    python benchmarks/bench_fire_step.py --n 1024 --steps 500
    python benchmarks/bench_fire_step.py --packings 32       # + whole relaxations of 32 packings

Two starts: the random packing (the first STEPS steps of a relaxation, neighbor-list rebuilds
included) and its relaxed packing (no particle moves: the step alone). The loops are compiled
once and run interleaved, round after round; the best of each (process CPU time, which a busy
shared machine inflates less than wall time) over STEPS. Also: how many list rebuilds a whole
relaxation makes and the CPU time of one rebuild. With ``--packings P``: P packings (seeds
0..P-1) relaxed to max|F| <= ftol (1e-12) by both loops, packing after packing, interleaved,
best of ``--rounds`` each (compilation excluded), and the largest position difference.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sensitivity.systems import _jaxmd, neighbor_lists, relax  # noqa: E402
from sensitivity.systems.generate import random_packing  # noqa: E402
from sensitivity.systems.potentials import PairModel, resolve_potential  # noqa: E402


def autodiff_force(s, model, y, params, neighbors, with_energy):
    pairs = relax._pairs(s, neighbors)
    if with_energy:
        e, g = jax.value_and_grad(model.energy)(y, params, pairs)
        return e, -g
    return jnp.nan, -jax.grad(model.energy)(y, params, pairs)


def previous_step(s, model, state, neighbors, params):
    """The FIRE step before the fused reductions (as of commit d9e00f8)."""
    dt = state.dt
    v_half = state.velocity + 0.5 * dt * state.force
    y = model.shift(state.position, dt * v_half)
    neighbors = relax.update_sorted(model, neighbors, y, s.skin)
    e, f = relax._energy_and_force(s, model, y, params, neighbors, s.etol > 0)
    v = v_half + 0.5 * dt * f
    f_norm = jnp.sqrt(jnp.sum(f * f))
    v_norm = jnp.sqrt(jnp.sum(v * v))
    power = jnp.sum(f * v)
    v = v + state.alpha * (f / jnp.where(f_norm > 0, f_norm, 1.0) * v_norm - v)
    n_pos, dt, alpha = relax.fire_schedule(s, state, dt, power)  # unchanged
    v = jnp.where(power >= 0, v, 0.0)
    return relax._FireState(y, v, f, dt, alpha, n_pos), neighbors, e


def previous_update(model, neighbors, y, skin=None):
    """The list check with jax-md's minimum image (its range ``cond``)."""
    d = _jaxmd.periodic_difference(y - neighbors.reference_position,
                                   jnp.asarray(model.box, jnp.float64))
    moved = jnp.max(jnp.sum(d * d, axis=-1)) > (neighbor_lists._MARGIN * 0.5 * skin) ** 2
    return jax.lax.cond(moved, functools.partial(neighbor_lists._update_sorted, model, y=y),
                        lambda nbrs: nbrs, neighbors)


def previous_max_force(force, params):
    return jnp.max(jnp.sqrt(jnp.sum(force * force, axis=-1))) / params.scale


VARIANTS = {
    "before (autodiff force, jax-md rebuild)": {
        "_energy_and_force": autodiff_force, "_step": previous_step,
        "_max_force": previous_max_force, "update_sorted": previous_update},
    "now": {},
}


def compiled_chunk(patch, s, model, carry, params, steps):
    old = {k: getattr(relax, k) for k in patch}
    try:
        for k, v in patch.items():
            setattr(relax, k, v)

        def chunk(m, c, p):
            return relax._chunk(s, m, c, p, jnp.asarray(steps, jnp.int64), jnp.asarray(0.0))

        return jax.jit(chunk).lower(model, carry, params).compile()
    finally:
        for k, v in old.items():
            setattr(relax, k, v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--packings", type=int, default=0)
    args = parser.parse_args()

    system = random_packing(args.n, dim=2, phi=0.9, seed=0)
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    params = model.default_params(system.diameters)
    relaxer = relax.make_relaxer(model, relax.resolve_minimizer({}), [params])
    result = relaxer.run(system.positions, params)
    s = relaxer._settings
    lists = relaxer._lists
    init = jax.jit(lambda m, y, p, nb: relax._init(s, m, y, p, nb, lists.half_box))
    template = lists.template(jnp.asarray(system.positions))
    starts = {"random start": jnp.asarray(system.positions),
              "relaxed": jnp.asarray(result.positions)}
    carries = {k: init(model, y, params, template)[0] for k, y in starts.items()}

    fns = {(v, k): compiled_chunk(VARIANTS[v], s, model, carries[k], params, args.steps)
           for v in VARIANTS for k in carries}
    best = dict.fromkeys(fns, np.inf)
    for _ in range(args.rounds):
        for key, fn in fns.items():
            carry = carries[key[1]]
            t = time.process_time()
            jax.block_until_ready(fn(model, carry, params))
            best[key] = min(best[key], time.process_time() - t)
    print(f"N = {args.n}: {result.steps} FIRE steps to max|F| <= {result.max_force:.1e}")
    for k in carries:
        base = best[(next(iter(VARIANTS)), k)]
        for v in VARIANTS:
            t = best[(v, k)]
            print(f"  {k:13s} {v:38s} {t / args.steps * 1e6:7.1f} us/step  ({t / base:.2f}x)")

    # list rebuilds over the whole relaxation, and the cost of one
    one = jax.jit(lambda m, c, p: relax._chunk(s, m, c, p, c.step + 1, jnp.asarray(1e-12))[0])
    carry = carries["random start"]
    ref, rebuilds = carry.neighbors.reference_position, 0
    while int(carry.code) == 0:
        carry = one(model, carry, params)
        if not bool(jnp.all(carry.neighbors.reference_position == ref)):
            rebuilds, ref = rebuilds + 1, carry.neighbors.reference_position
    y = starts["random start"]
    rb = jax.jit(lambda m, nb, y: neighbor_lists.rebuild(m, nb, y, lists.half_box)).lower(
        model, template, y).compile()
    cost = np.inf
    for _ in range(args.rounds):
        t = time.process_time()
        for _ in range(50):
            out = rb(model, template, y)
        jax.block_until_ready(out)
        cost = min(cost, (time.process_time() - t) / 50)
    print(f"  {rebuilds} list rebuilds in {int(carry.step)} steps, {cost * 1e3:.2f} ms CPU each")
    if args.packings:
        relaxations(args, model, s, lists, relaxer, init, params)


def relaxations(args, model, s, lists, relaxer, init, params):
    """Whole relaxations of ``args.packings`` packings by both loops, interleaved."""
    ftol = jnp.asarray(relax.MINIMIZER_DEFAULTS["ftol"])
    end = jnp.asarray(relax.MINIMIZER_DEFAULTS["max_steps"], jnp.int64)
    carries = []
    for seed in range(args.packings):
        system = random_packing(args.n, dim=2, phi=0.9, seed=seed)
        y = jnp.asarray(system.positions)
        p = params._replace(diameters=jnp.asarray(system.diameters))
        m = PairModel.build(system, model.spec)
        carry = init(m, y, p, lists.template(y))[0]
        if not bool(carry.neighbors.did_buffer_overflow):
            carries.append((m, carry, p))
    fns = {}
    for v, patch in VARIANTS.items():
        old = {k: getattr(relax, k) for k in patch}
        try:
            for k, f in patch.items():
                setattr(relax, k, f)
            fns[v] = jax.jit(lambda m, c, p: relax._chunk(s, m, c, p, end, ftol)).lower(
                *carries[0]).compile()
        finally:
            for k, f in old.items():
                setattr(relax, k, f)
    cpu = {v: np.full(len(carries), np.inf) for v in fns}
    wall = {v: np.full(len(carries), np.inf) for v in fns}
    out = {}
    for _ in range(args.rounds):
        for i, args_i in enumerate(carries):
            for v, fn in fns.items():
                t, w = time.process_time(), time.perf_counter()
                out[v, i] = jax.block_until_ready(fn(*args_i))[0]
                cpu[v][i] = min(cpu[v][i], time.process_time() - t)
                wall[v][i] = min(wall[v][i], time.perf_counter() - w)
    first = next(iter(fns))
    print(f"  {len(carries)} packings relaxed to max|F| <= {float(ftol):.0e}, best of "
          f"{args.rounds}, per packing:")
    for v in fns:
        steps = np.mean([int(out[v, i].step) for i in range(len(carries))])
        ratio = cpu[v].sum() / cpu[first].sum()
        print(f"    {v:38s} CPU {cpu[v].mean() * 1e3:6.1f} ms ({ratio:.2f}x)"
              f"  wall {wall[v].mean() * 1e3:6.1f} ms  {steps:.0f} steps")
    dx = [float(jnp.max(jnp.abs(out["now", i].state.position - out[first, i].state.position)))
          for i in range(len(carries))]
    print(f"    positions now - before: max {max(dx):.1e}, median {np.median(dx):.1e} "
          "(reference box units)")


if __name__ == "__main__":
    main()
