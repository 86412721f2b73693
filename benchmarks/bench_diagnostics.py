"""The zero-mode and conditioning diagnostics of a packing, timed against its FIRE relaxation.

For each N (2D bidisperse, φ = 0.9, harmonic soft spheres, FIRE to max|F| ≤ 1e-12), in one
process: ``ResponseSolver.zero_modes`` (a dense eigendecomposition up to
``systems.diagnostics.DENSE_EIGEN_MAX_DOF`` coordinates, else the construction plus Lanczos),
compiled first, then best of ``--repeat``; its method, zero modes found against expected,
and the smallest non-zero eigenvalue it reports. With ``--dense-too`` the dense path is also
timed where it is not the default, up to 4096 coordinates (the Lanczos estimate against the
exact value).

    python benchmarks/bench_diagnostics.py                      # N = 256, 512, 1024, 4096
    python benchmarks/bench_diagnostics.py --sizes 512 --dense-too
"""

from __future__ import annotations

import argparse
import sys

import jax

jax.config.update("jax_enable_x64", True)  # float64 physics, before jax-md loads

from sensitivity.systems import diagnostics as diag
from sensitivity.systems import response
from sensitivity.systems.generate import random_packing
from sensitivity.systems.potentials import PairModel, resolve_potential
from sensitivity.systems.relax import make_relaxer, resolve_minimizer


DENSE_TOO_MAX_DOF = 4096  # --dense-too stops here (8192 coordinates: 30 s)


def diagnostics(solver, repeat):
    solver.zero_modes()  # compiles
    runs = [solver.zero_modes() for _ in range(repeat)]
    return min(r["time_s"] for r in runs), runs[-1]


def run(n, repeat, dense_too, seed=0):
    system = random_packing(n, dim=2, phi=0.9, seed=seed)
    model = PairModel.build(system, resolve_potential({}, system.n_species))
    params = model.default_params(system.diameters)
    relaxer = make_relaxer(model, resolve_minimizer({"ftol": 1e-12}), [params])
    result = relaxer.run(system.positions, params)  # compiles
    assert result.converged, result.message()
    fire = min(relaxer.run(system.positions, params).time_s for _ in range(repeat))
    solver = response.ResponseSolver(model, result.positions, params,
                                      max_force=result.max_force,
                                      settings=response.resolve_sensitivity({}))
    rows = [(*diagnostics(solver, repeat), "default")]
    if dense_too and diag.DENSE_EIGEN_MAX_DOF < n * model.dim <= DENSE_TOO_MAX_DOF:
        limit = diag.DENSE_EIGEN_MAX_DOF
        diag.DENSE_EIGEN_MAX_DOF = n * model.dim
        try:
            rows.append((*diagnostics(solver, repeat), "dense"))
        finally:
            diag.DENSE_EIGEN_MAX_DOF = limit
    return fire, result.steps, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 4096])
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--dense-too", action="store_true",
                        help="also time the dense path where Lanczos is the default "
                             "(up to 4096 coordinates)")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, device {jax.devices()[0]}; 2D bidisperse phi = 0.9, "
          f"ftol 1e-12; dense eigendecomposition up to {diag.DENSE_EIGEN_MAX_DOF} "
          "coordinates")
    print(f"{'N':>5} {'FIRE s':>7} | {'diagnostics ms':>14} {'% FIRE':>7}  {'found/expected':>14}"
          f"  {'λ_min (nonzero)':>15}  method")
    for n in args.sizes:
        fire, steps, rows = run(n, args.repeat, args.dense_too)
        for seconds, zero, _ in rows:
            print(f"{n:>5} {fire:>7.3f} | {seconds * 1e3:>14.1f} {seconds / fire:>7.1%}  "
                  f"{zero['found']:>6}/{zero['expected']:<7}  "
                  f"{zero['eigenvalue_min_nonzero']:>15.3e}  {zero['method']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
