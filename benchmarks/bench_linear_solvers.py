"""Iterations and time of the iterative linear solvers on two model systems.

* ``laplace2d``: the 5-point Dirichlet Laplacian on an m x m grid (SPD, condition ~ m^2),
  matrix-free;
* ``springs``: the Hessian of a free chain of n masses joined by springs of random
  stiffness (positive semi-definite, singular: the uniform translation is a zero mode),
  solved with ``nullspace=ones`` for the minimum-norm answer; condition ~ n^2.

Every solve is jit-compiled once, then timed (best of ``--repeat`` runs). The table gives
iterations, operator applications, wall time, and both as ratios to CG on the same system.
One iteration is one matvec for CG, MINRES and GMRES, two for BiCGSTAB and normal CG
(``A`` and ``A^T``).

A second table gives the cost of one iteration of CG and MINRES with and without
``nullspace=`` (and a Jacobi preconditioner ``M``) on ``chain2d``, a 2D free spring chain
(two translation zero modes), with a fixed number of iterations (``tol=0``): what the
null-space projection adds to an iteration, next to what the matvec itself costs.

    python benchmarks/bench_linear_solvers.py            # float64, default sizes
    python benchmarks/bench_linear_solvers.py --quick    # the smallest size of each
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import sensitivity as sn  # noqa: E402

SOLVERS = [
    ("cg", sn.solve_cg, {}, 1),
    ("minres", sn.solve_minres, {}, 1),
    ("gmres(20)", sn.solve_gmres, {"restart": 20}, 1),
    ("gmres(100)", sn.solve_gmres, {"restart": 100}, 1),
    ("bicgstab", sn.solve_bicgstab, {}, 2),
    ("normal_cg", sn.solve_normal_cg, {}, 2),
]


def laplace2d(m: int):
    def matvec(x):
        u = x.reshape(m, m)
        p = jnp.pad(u, 1)
        out = 4 * u - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:]
        return out.reshape(-1)

    b = jnp.asarray(np.random.default_rng(0).normal(size=m * m))
    return f"laplace2d {m}x{m}", matvec, b, None


def springs(n: int):
    k = jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, size=n - 1))

    def matvec(x):
        f = k * (x[1:] - x[:-1])  # spring tensions
        return jnp.pad(f, (1, 0)) - jnp.pad(f, (0, 1))

    b = np.random.default_rng(2).normal(size=n)
    b = jnp.asarray(b - b.mean())  # no net force: consistent
    return f"springs n={n}", matvec, b, jnp.ones((1, n))


def chain2d(m: int):
    """2D free chain of m masses, unknowns (m, 2): zero modes = the two translations."""
    k = jnp.asarray(np.random.default_rng(3).uniform(0.5, 2.0, size=m - 1))

    def matvec(x):
        f = k[:, None] * (x[1:] - x[:-1])
        return jnp.pad(f, ((1, 0), (0, 0))) - jnp.pad(f, ((0, 1), (0, 0)))

    b = np.random.default_rng(4).normal(size=(m, 2))
    b = jnp.asarray(b - b.mean(0))
    basis = jnp.zeros((2, m, 2)).at[0, :, 0].set(1.0).at[1, :, 1].set(1.0)
    diag = jnp.zeros(m).at[1:].add(k).at[:-1].add(k)
    jacobi = lambda r: r / diag[:, None]
    return f"chain2d m={m}", matvec, b, basis, jacobi


def per_iteration(matvec, b, solve, iters, repeat, **options):
    """Seconds per iteration of ``solve`` run for exactly ``iters`` iterations."""
    f = jax.jit(lambda b: solve(matvec, b, tol=0.0, maxiter=iters, on_failure="ignore",
                                full_output=True, **options))
    _, info = jax.block_until_ready(f(b))
    assert int(info.iterations) == iters, int(info.iterations)
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f(b))
        best = min(best, time.perf_counter() - t0)
    return best / iters


def projection_table(sizes, repeat, iters=300):
    head = (f"{'system':<16} {'n':>6} {'solver':<7} {'matvec us':>9} {'plain us/it':>11} "
            f"{'nullspace':>9} {'ratio':>6} {'M us/it':>8} {'M+nullsp':>8} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    for m in sizes:
        name, matvec, b, basis, jacobi = chain2d(m)
        mv = jax.jit(lambda v, f=matvec: jax.lax.fori_loop(0, 100, lambda i, u: f(u) * 0.25, v))
        jax.block_until_ready(mv(b))
        t_mv = np.inf
        for _ in range(repeat):
            t0 = time.perf_counter()
            jax.block_until_ready(mv(b))
            t_mv = min(t_mv, (time.perf_counter() - t0) / 100)
        for label, solve in (("cg", sn.solve_cg), ("minres", sn.solve_minres)):
            t = [per_iteration(matvec, b, solve, iters, repeat, **kw) for kw in (
                {}, {"nullspace": basis}, {"M": jacobi}, {"M": jacobi, "nullspace": basis})]
            print(f"{name:<16} {b.size:>6} {label:<7} {1e6 * t_mv:>9.2f} {1e6 * t[0]:>11.2f} "
                  f"{1e6 * t[1]:>9.2f} {t[1] / t[0]:>6.2f} {1e6 * t[2]:>8.2f} "
                  f"{1e6 * t[3]:>8.2f} {t[3] / t[2]:>6.2f}")
    print()


def run_one(matvec, b, nullspace, solve, options, maxiter, repeat):
    f = jax.jit(lambda b: solve(matvec, b, nullspace=nullspace, maxiter=maxiter, tol=1e-8,
                                on_failure="ignore", full_output=True, **options))
    x, info = jax.block_until_ready(f(b))  # compile
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f(b))
        best = min(best, time.perf_counter() - t0)
    return info, best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smallest size of each system")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    lap_sizes = [16] if args.quick else [16, 32, 64]
    chain_sizes = [100] if args.quick else [100, 300, 1000]
    problems = [laplace2d(m) for m in lap_sizes] + [springs(n) for n in chain_sizes]

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; tol=1e-8 (relative), "
          "float64; time = best of "
          f"{args.repeat} jit-compiled runs")
    head = (f"{'system':<18} {'n':>6} {'solver':<11} {'iters':>7} {'matvecs':>8} "
            f"{'time ms':>9} {'iters/CG':>9} {'time/CG':>8} {'conv':>5} {'residual':>9}")
    print(head)
    print("-" * len(head))
    for name, matvec, b, ns in problems:
        n = b.shape[0]
        maxiter = 40 * n
        base = None
        for label, solve, options, mv_per_it in SOLVERS:
            info, t = run_one(matvec, b, ns, solve, options, maxiter, args.repeat)
            it = int(info.iterations)
            if base is None:
                base = (it, t)
            print(f"{name:<18} {n:>6} {label:<11} {it:>7} {it * mv_per_it:>8} "
                  f"{1e3 * t:>9.2f} {it / max(base[0], 1):>9.2f} {t / base[1]:>8.2f} "
                  f"{'yes' if bool(info.converged) else 'NO':>5} "
                  f"{float(info.residual_norm) / float(info.rhs_norm):>9.1e}")
        print()

    print("cost of one iteration (us), fixed iteration count, with and without nullspace=")
    projection_table([512] if args.quick else [512, 2048, 8192], max(args.repeat, 5))


if __name__ == "__main__":
    main()
