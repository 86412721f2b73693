"""The whole ``diameters`` Jacobian ``[N][N][d]`` against the FIRE relaxation, in one process.

For each N (bidisperse 50:50, diameters 1 and 1.4, harmonic soft spheres; 2D φ = 0.9 or 3D
φ = 0.7 with ``--dim 3``):

* ``FIRE``: the relaxation from random positions to max |F| ≤ 1e-12, timed on a second run
  (the first compiles);
* ``setup``: building the :class:`~systems.response.ResponseSolver` (contacts, rattlers,
  block-row Hessian), compilation excluded;
* ``jacobian``: ``vector_derivative`` of kind ``diameters`` with ``sensitivity.many_rhs`` =
  ``factorization`` (and ``--dense`` / ``--iterative`` to time those paths too): the
  sparse Hessian, its factorization, the right-hand sides from JAX and every solve;
  compilation excluded (reported apart);
* peak RSS during the Jacobian (sampled every 5 ms) above the RSS before it, against the
  size of the result;
* ``--check``: one column against central differences of re-relaxed packings (two more
  relaxations, step :data:`FD_STEP`; 1e-5 for the figures below, which at the larger sizes
  measure the reference's relaxation tolerance, see ``bench_fd_reference.py``), relative
  error on the backbone.

Measured 2026-12-07 on 2 shared CPU cores (load ~8; absolute times noisy, ratios in one
process less so), ``sensitivity.many_rhs = factorization`` (the ``auto`` choice at these sizes):

=====  ==  ==========  ===========  =====  ======  ==============  ========  ============
N      d   FIRE        Jacobian     ratio  result  RSS increase    fill      FD column
=====  ==  ==========  ===========  =====  ======  ==============  ========  ============
1024   2   1.44 s      2.54 s       1.8x   16 MB   +115 MB         5.5       2.6e-6
4096   2   12.06 s     20.24 s      1.7x   256 MB  +448 MB (1.75x) 7.3       7.6e-6
4096   3   120.5 s     162.0 s      1.3x   384 MB  +1079 MB (2.8x) 40.4      1.5e-5
16384  2   83.65 s     226.8 s      2.7x   4 GB    +812 MB (0.2x)  10.2      7.0e-5
=====  ==  ==========  ===========  =====  ======  ==============  ========  ============

(2D 4096: factorization 0.54 s, right-hand sides 0.33 s by 32 JVPs, the rest the triangular
solves; 3D: factorization 24.7 s, its fill is what the RSS holds. The old paths: dense at
N = 1024 took 56.3 s in the same process as the 1.44 s FIRE run, 39x; the batched Krylov path
at 4096 was 281x in the issue. At N = 128 dense and factorization tie, 0.19 / 0.14 s; at
N = 256 0.84 / 0.10 s: hence ``auto`` takes the dense path only up to 256 unknowns.)

    python benchmarks/bench_many_rhs.py                      # N = 1024, 4096 (2D)
    python benchmarks/bench_many_rhs.py --sizes 4096 --dim 3
    python benchmarks/bench_many_rhs.py --sizes 1024 --dense --iterative
    python benchmarks/bench_many_rhs.py --sizes 16384 --write /tmp/out   # streamed to a file

(N = 16384 with ``--write``: the result streamed to a file, RSS growth against 4 GB.)
"""

from __future__ import annotations

import argparse
import threading
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64 physics, before jax-md loads

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from sensitivity.systems.generate import random_packing  # noqa: E402
from sensitivity.systems.pipeline import central_difference  # noqa: E402
from sensitivity.systems.potentials import PairModel, resolve_potential  # noqa: E402
from sensitivity.systems.relax import make_relaxer, resolve_minimizer  # noqa: E402
from sensitivity.systems.response import ResponseSolver, resolve_sensitivity  # noqa: E402
from sensitivity.systems.theta import ParameterSpec, theta_apply  # noqa: E402

DIAMETERS = ParameterSpec("diameters", "diameters")

#: The central-difference step of ``--check``. Its re-relaxations stop at max |F| <= 1e-13,
#: which leaves an error ~ ftol / (λ_min h) in x*(θ ± h): at h = 1e-5 that was the 7e-5
#: (2D, N = 16,384) and 1.5e-5 (3D, 4,096) of the table, not the solve
#: (``bench_fd_reference.py``; a tighter ftol does not converge at that size in minutes).
FD_STEP = 1e-4


class PeakRSS:
    """The largest resident set size seen while in the ``with`` block (sampled)."""

    def __init__(self, every: float = 0.005):
        self.every = every
        self.process = psutil.Process()

    def __enter__(self):
        self.before = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _streamed(solver, system, folder):
    """The Jacobian computed block by block into a result file (``folder/jacobian.h5``),
    as ``sensitivity run`` does on the factorization path: ``(path, report)``."""
    from pathlib import Path

    from sensitivity.systems.io import write_result

    jacobian, report = solver.vector_derivative(DIAMETERS, stream=True)
    path = Path(folder) / "jacobian.h5"
    responses = {"diameters": {"dx_dtheta": jacobian, "report": report}}
    write_result(path, system=system, relaxation={}, responses=responses,
                 rattlers=solver.rattlers, zero_modes={}, parameters={}, timings={})
    return path, responses["diameters"]["report"]  # filled in by the write


def run(n: int, dim: int, methods: list[str], check: bool, seed: int = 0,
        write: str | None = None) -> list[dict]:
    phi = 0.9 if dim == 2 else 0.7
    system = random_packing(n, dim=dim, phi=phi, seed=seed)
    spec = resolve_potential({}, system.n_species)
    model = PairModel.build(system, spec)
    params = model.default_params(system.diameters)
    relaxer = make_relaxer(model, resolve_minimizer({"ftol": 1e-12}), [params])
    relaxer.run(system.positions, params)  # compiles
    t0 = time.perf_counter()
    relaxed = relaxer.run(system.positions, params)
    t_fire = time.perf_counter() - t0
    assert relaxed.converged, relaxed.message()
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        solver = ResponseSolver(model, relaxed.positions, params, max_force=relaxed.max_force,
                                settings=resolve_sensitivity({"many_rhs": method}))
        t_setup = time.perf_counter() - t0 - solver.time_compile_s
        streamed = write is not None and method == "factorization"
        t0 = time.perf_counter()
        with PeakRSS() as rss:
            if streamed:
                path, report = _streamed(solver, system.replace(positions=relaxed.positions),
                                        write)
                dx = None
            else:
                dx, report = solver.vector_derivative(DIAMETERS)
        t_all = time.perf_counter() - t0
        row = {
            "n": n, "dim": dim, "method": method + " (streamed)" * streamed,
            "steps": relaxed.steps, "fire_s": t_fire,
            "setup_s": t_setup, "jacobian_s": report.time_s,
            "written_s": t_all - report.time_compile_s,
            "compile_s": report.time_compile_s,
            "ratio": report.time_s / t_fire,
            "ratio_with_setup": (report.time_s + t_setup) / t_fire,
            "result_mb": 8 * n * n * dim / 2**20,
            "rss_before_mb": rss.before / 2**20, "rss_peak_mb": rss.peak / 2**20,
            "rss_increase_mb": (rss.peak - rss.before) / 2**20,
            "iterations": report.iterations, "relative_residual": report.relative_residual,
            "converged": report.converged, "rattlers": int(solver.rattlers.sum()),
        }
        for key in ("time_factor_s", "time_rhs_s", "factor_fill", "factor_levels"):
            if getattr(report, key) is not None:
                row[key] = getattr(report, key)
        if check and method == methods[0]:
            backbone = ~solver.rattlers
            component = int(np.flatnonzero(backbone)[n // 3])
            theta0, apply = theta_apply(DIAMETERS, params, system.species)
            fd, _ = central_difference(relaxer, model, params, apply, theta0, solver.y,
                                       FD_STEP, solver.rattlers, component=component,
                                       ftol=1e-13)
            if streamed:
                from sensitivity.systems.jacobian_file import read_jacobian_slice

                implicit = read_jacobian_slice(path, "diameters", theta=component)
            else:
                implicit = dx[component]
            row["fd_column"] = component
            row["fd_relative_error"] = float(
                np.linalg.norm(fd[backbone] - implicit[backbone])
                / np.linalg.norm(implicit[backbone]))
        rows.append(row)
        print(_line(row), flush=True)
        del dx
    return rows


def _line(row: dict) -> str:
    text = (f"N={row['n']:>6} {row['dim']}D {row['method']:<13} FIRE {row['steps']} steps "
            f"{row['fire_s']:.2f} s | setup {row['setup_s']:.2f} s | jacobian "
            f"{row['jacobian_s']:.2f} s = {row['ratio']:.1f}x FIRE "
            f"(whole call without compile, writing included: {row['written_s']:.2f} s) "
            f"({row['ratio_with_setup']:.1f}x with setup; compile {row['compile_s']:.2f} s) | "
            f"result {row['result_mb']:.0f} MB, RSS +{row['rss_increase_mb']:.0f} MB "
            f"(peak {row['rss_peak_mb']:.0f} MB) | iterations {row['iterations']}, "
            f"rel. residual {row['relative_residual']:.1e}")
    if "time_factor_s" in row:
        text += (f" | factor {row['time_factor_s']:.2f} s (fill {row['factor_fill']:.1f}, "
                 f"levels {row['factor_levels']}), rhs {row['time_rhs_s']:.2f} s")
    if "fd_relative_error" in row:
        text += f" | column {row['fd_column']} vs central difference {row['fd_relative_error']:.1e}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--dim", type=int, default=2, choices=(2, 3))
    parser.add_argument("--dense", action="store_true", help="also time the dense path")
    parser.add_argument("--iterative", action="store_true",
                        help="also time the batched Krylov path (slow above N = 1024)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the central-difference spot check of one column")
    parser.add_argument("--write", metavar="DIR", default=None,
                        help="factorization: write the Jacobian block by block into "
                             "DIR/jacobian.h5 as it is computed (as `sensitivity run` does)")
    args = parser.parse_args()
    methods = ["factorization"] + ["dense"] * args.dense + ["iterative"] * args.iterative
    for n in args.sizes:
        run(n, args.dim, methods, args.check, write=args.write)


if __name__ == "__main__":
    main()
