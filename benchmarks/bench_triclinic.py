"""The cost of a sheared (triclinic) cell: one 2D packing relaxed and differentiated in its
square box and in an equivalent sheared cell (the same lattice: cell vectors (L, 0), (L, L)).

A square box takes jax-md's ``space.periodic`` and cell-list neighbor lists; a sheared cell
``space.periodic_general(H, fractional_coordinates=False)`` (each displacement goes to
fractional coordinates and back) and a neighbor list whose candidates are every pair, pruned
at each rebuild. Both runs start from the same positions (wrapped into each cell), so FIRE
takes the same path and the steps agree; the table gives the time of each, the derivative
(θ = the small particles' diameter, CG to 1e-10) and the largest difference between the two
answers. Compilation is excluded (each side is run twice, the second timed).

    python benchmarks/bench_triclinic.py                 # N = 256, 1024
    python benchmarks/bench_triclinic.py --sizes 4096
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from sensitivity.systems._system import minimum_image, wrap_positions  # noqa: E402
from sensitivity.systems.generate import random_packing  # noqa: E402
from sensitivity.systems.potentials import PairModel, resolve_potential  # noqa: E402
from sensitivity.systems.relax import make_relaxer, resolve_minimizer  # noqa: E402
from sensitivity.systems.response import ResponseSolver, resolve_sensitivity  # noqa: E402
from sensitivity.systems.theta import ParameterSpec  # noqa: E402


def one(system, positions):
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    params = model.default_params(system.diameters)
    relaxer = make_relaxer(model, resolve_minimizer({"ftol": 1e-12}), [params])
    relaxer.run(positions, params)  # compile
    t0 = time.perf_counter()
    result = relaxer.run(positions, params)
    t_relax = time.perf_counter() - t0
    spec = [ParameterSpec("small_diameter", "diameter", 0)]
    settings = resolve_sensitivity({})
    solver = ResponseSolver(model, result.positions, params, max_force=result.max_force,
                            settings=settings)
    solver.scalar_derivatives(spec)  # compile
    t0 = time.perf_counter()
    solver = ResponseSolver(model, result.positions, params, max_force=result.max_force,
                            settings=settings)
    dx, report = solver.scalar_derivatives(spec)["small_diameter"]
    t_derivative = time.perf_counter() - t0
    return result, relaxer.use_nl, t_relax, dx, report.iterations, t_derivative


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    args = parser.parse_args()
    print("| N | box | neighbor list | FIRE steps | FIRE s | derivative s (CG its) "
          "| max |Δx*| | max |Δ dx/dθ| |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in args.sizes:
        square = random_packing(n, dim=2, phi=0.9, seed=0)
        cell = np.diag(square.box)
        cell[0, 1] = square.box[0]
        sheared = square.replace(box=cell, positions=wrap_positions(square.positions, cell))
        a = one(square, square.positions)
        b = one(sheared, sheared.positions)
        dpos = np.abs(minimum_image(b[0].positions - a[0].positions, cell)).max()
        ddx = np.nanmax(np.abs(b[3] - a[3]))
        for name, r in (("square", a), ("sheared", b)):
            print(f"| {n} | {name} | {r[1]} | {r[0].steps} | {r[2]:.3g} | {r[5]:.3g} ({r[4]}) "
                  f"| {dpos:.1e} | {ddx:.1e} |")


if __name__ == "__main__":
    main()
