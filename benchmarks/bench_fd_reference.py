"""Which limits the central-difference check of a Jacobian column: the reference (its step h,
the re-relaxations' ftol) or the solve?

One column of the factorized ``diameters`` Jacobian (the column ``bench_many_rhs.py --check``
spot-checks) against central differences of packings re-relaxed at θ ± h, for several
(h, ftol), and the differences among the references themselves. If the error falls with
ftol at fixed h, and the references agree with each other only as well as with the solve,
the reference is the limit (its relaxation error ~ ftol / (λ_min h)), not the solve (whose
residual is printed).

    python benchmarks/bench_fd_reference.py --n 4096 --dim 3
    python benchmarks/bench_fd_reference.py --n 16384 --dim 2
"""
import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

from sensitivity.systems.generate import random_packing  # noqa: E402
from sensitivity.systems.many_rhs import _ColoredRHS, backbone_factorization  # noqa: E402
from sensitivity.systems.pipeline import central_difference  # noqa: E402
from sensitivity.systems.potentials import PairModel, resolve_potential  # noqa: E402
from sensitivity.systems.relax import make_relaxer, resolve_minimizer  # noqa: E402
from sensitivity.systems.response import ResponseSolver, resolve_sensitivity  # noqa: E402
from sensitivity.systems.theta import ParameterSpec, theta_apply, theta_data  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--n", type=int, default=4096)
parser.add_argument("--dim", type=int, default=3, choices=(2, 3))
parser.add_argument("--pairs", default="1e-5:1e-13,1e-5:1e-14,4e-5:1e-14",
                    help="h:ftol of each reference, comma-separated")
args = parser.parse_args()
n, dim = args.n, args.dim
combos = [tuple(float(x) for x in pair.split(":")) for pair in args.pairs.split(",")]
D = ParameterSpec("diameters", "diameters")
system = random_packing(n, dim=dim, phi=0.9 if dim == 2 else 0.7, seed=0)
model = PairModel.build(system, resolve_potential({}, system.n_species))
params = model.default_params(system.diameters)
relaxer = make_relaxer(model, resolve_minimizer({"ftol": 1e-12}), [params])
t0 = time.perf_counter()
relaxed = relaxer.run(system.positions, params)
print(f"relaxed {relaxed.steps} steps {time.perf_counter() - t0:.1f} s", flush=True)
solver = ResponseSolver(model, relaxed.positions, params, max_force=relaxed.max_force,
                        settings=resolve_sensitivity({"many_rhs": "factorization"}))
backbone = ~solver.rattlers
component = int(np.flatnonzero(backbone)[n // 3])  # the benchmark's column
factor = backbone_factorization(solver)
tag, theta0, member = theta_data(D, params, system.species)
colored = _ColoredRHS(solver, tag, theta0, member, backbone)
rhs = colored.block(component, component + 1)
dy, info = factor.solve(rhs, tol=1e-10, full_output=True)
scale = float(np.asarray(params.scale))
implicit = np.full((n, dim), np.nan)
implicit[backbone] = scale * dy.reshape(-1, dim)
print(f"column {component}: solve residual {float(np.max(info.residual_norm)):.1e} "
      f"(rhs {float(np.max(info.rhs_norm)):.1e}), |col| {np.linalg.norm(implicit[backbone]):.3e}",
      flush=True)
theta0, apply = theta_apply(D, params, system.species)
fds = {}
for h, ftol in combos:
    t0 = time.perf_counter()
    fd, runs = central_difference(relaxer, model, params, apply, theta0, solver.y, h,
                                  solver.rattlers, component=component, ftol=ftol)
    err = np.linalg.norm(fd[backbone] - implicit[backbone]) / np.linalg.norm(implicit[backbone])
    fds[(h, ftol)] = fd
    print(f"h {h:.0e} ftol {ftol:.0e}: relative error {err:.2e}  (relax steps "
          f"{[r.steps for r, _, _ in runs]}, converged {[r.converged for r, _, _ in runs]}, "
          f"max|F| {[f'{r.max_force:.1e}' for r, _, _ in runs]}) {time.perf_counter() - t0:.0f} s",
          flush=True)
keys = list(fds)
for a in range(len(keys)):
    for b in range(a + 1, len(keys)):
        d = np.linalg.norm(fds[keys[a]][backbone] - fds[keys[b]][backbone])
        print(f"FD {keys[a]} vs {keys[b]}: {d / np.linalg.norm(implicit[backbone]):.2e}")
