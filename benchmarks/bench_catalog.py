"""Implicit differentiation through each catalog solver against unrolling the same solver.

For each solver of ``sensitivity._solvers`` that can be unrolled, and growing problem sizes,
the gradient of a scalar loss of the solution with respect to a hyperparameter is computed

* implicitly: the solver (``lax.while_loop``, stops at ``tol``) decorated with its
  optimality condition, one linear solve in the backward pass;
* by unrolling: the same iterations in a ``lax.scan`` of exactly ``K`` steps, ``K`` being the
  number of iterations the forward solve needed (so both runs end at the same iterate), and
  reverse-mode autodiff through all of them.

Time: the jitted gradient after compilation, best of ``--repeat`` runs. Peak memory: XLA's
compile-time estimate for the whole jitted gradient, ``compiled.memory_analysis()``
(``temp + argument + output - alias`` bytes); it is what the compiled program allocates, not a
process measurement (tracemalloc would not see XLA's buffers). The last column is the relative
difference between the two gradients: unrolling a converged solver agrees with the implicit
answer up to the solver tolerance.

Problems (``n`` unknowns, ``3n/2`` samples of Gaussian data):

* gradient_descent: ridge regression, d/d(lambda) of the validation loss;
* proximal_gradient: lasso (FISTA), d/d(lambda);
* projected_gradient: least squares on the simplex, d/d(targets);
* mirror_descent: a quadratic on the simplex in the KL geometry, d/d(linear term);
* block_coordinate_descent: lasso by coordinate descent, d/d(lambda);
* newton: l2-regularized logistic regression, d/d(lambda).

    python benchmarks/bench_catalog.py                  # sizes 10 50 250
    python benchmarks/bench_catalog.py --sizes 20 200   # other sizes
    python benchmarks/bench_catalog.py --only newton proximal_gradient
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import sensitivity as sn  # noqa: E402


class Problem(NamedTuple):
    """``run(theta, **solver_options) -> SolverResult`` and a scalar ``loss(solution)``."""

    run: Callable
    theta: jax.Array
    loss: Callable


def _data(n: int, seed: int = 0):
    # 3n/2 samples: the Gram matrix has condition number ~100, so first-order solvers need
    # hundreds to thousands of iterations (what unrolling has to store).
    rng = np.random.default_rng(seed)
    m = n + n // 2 + 2
    X = jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m))
    y = jnp.asarray(rng.normal(size=m))
    return X, y, float(np.linalg.eigvalsh(np.asarray(X.T @ X)).max())


def _least_squares(X, y):
    def fun(w, *reg):
        value = 0.5 * jnp.sum((X @ w - y) ** 2)
        return value + 0.5 * reg[0] * jnp.sum(w**2) if reg else value

    return fun


def gradient_descent_problem(n):
    X, y, L = _data(n)
    fun = _least_squares(X, y)  # ridge: fun(w, lam)

    def run(lam, **kw):
        return sn.gradient_descent(fun, jnp.zeros(n), lam, step_size=1.0 / (L + 0.01), **kw)

    return Problem(run, jnp.asarray(0.01), lambda w: jnp.sum((X @ w - 0.5 * y) ** 2))


def proximal_gradient_problem(n):
    X, y, L = _data(n)
    fun = _least_squares(X, y)

    def run(lam, **kw):
        return sn.proximal_gradient(fun, sn.prox_lasso, jnp.zeros(n), lam, step_size=1.0 / L, **kw)

    lam = 0.1 * float(jnp.max(jnp.abs(X.T @ y)))
    return Problem(run, jnp.asarray(lam), lambda w: jnp.sum((X @ w - 0.5 * y) ** 2))


def projected_gradient_problem(n):
    X, noise, L = _data(n)
    # targets from a point of the simplex plus noise: a solution with a large support
    weights = jnp.asarray(np.random.default_rng(2).dirichlet(np.ones(n)))

    def fun(w, y):
        return 0.5 * jnp.sum((X @ w - y) ** 2)

    def run(y, **kw):
        init = jnp.full(n, 1.0 / n)
        return sn.projected_gradient(
            fun, sn.projection_simplex, init, 1.0, y, step_size=1.0 / L, **kw
        )

    return Problem(run, X @ weights + 0.01 * noise, lambda w: jnp.sum(w**2))


def mirror_descent_problem(n):
    # the KL geometry needs an interior solution (x > 0)
    rng = np.random.default_rng(1)
    M = rng.normal(size=(n, n)) / np.sqrt(n)
    H = jnp.asarray(M @ M.T + np.eye(n))
    # the KL metric near the uniform point is ~ n I: steps ~ n / L
    step = 0.5 * n / float(np.linalg.eigvalsh(np.asarray(H)).max())

    def fun(x, theta):
        return 0.5 * x @ H @ x - theta @ x

    def run(theta, **kw):
        init = jnp.full(n, 1.0 / n)
        return sn.mirror_descent(
            fun, sn.kl_projection_simplex, jnp.log, init, 1.0, theta, step_size=step, **kw
        )

    # theta = H x_star puts the minimizer at x_star, well inside the simplex
    x_star = jnp.asarray(rng.dirichlet(5.0 * np.ones(n)))
    return Problem(run, H @ x_star, lambda x: jnp.sum(x * jnp.arange(n)))


def block_coordinate_descent_problem(n):
    X, y, _ = _data(n)
    fun = _least_squares(X, y)
    steps = 1.0 / jnp.diag(X.T @ X)  # coordinate-wise 1 / L_j

    def run(lam, **kw):
        return sn.block_coordinate_descent(
            fun, sn.prox_lasso, jnp.zeros(n), lam, step_size=steps, **kw
        )

    lam = 0.1 * float(jnp.max(jnp.abs(X.T @ y)))
    return Problem(run, jnp.asarray(lam), lambda w: jnp.sum((X @ w - 0.5 * y) ** 2))


def newton_problem(n):
    X, y, _ = _data(n)
    labels = jnp.sign(y)

    def fun(w, lam):  # l2-regularized logistic regression
        return jnp.sum(jnp.logaddexp(0.0, -labels * (X @ w))) + 0.5 * lam * jnp.sum(w**2)

    def run(lam, **kw):
        return sn.newton(fun, jnp.zeros(n), lam, line_search=False, **kw)

    return Problem(run, jnp.asarray(1.0), lambda w: jnp.sum(w**2))


PROBLEMS = {
    "gradient_descent": gradient_descent_problem,
    "proximal_gradient": proximal_gradient_problem,
    "projected_gradient": projected_gradient_problem,
    "mirror_descent": mirror_descent_problem,
    "block_coordinate_descent": block_coordinate_descent_problem,
    "newton": newton_problem,
}


def _peak_bytes(compiled) -> float:
    stats = compiled.memory_analysis()
    if stats is None:
        return float("nan")
    return float(
        stats.temp_size_in_bytes
        + stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
    )


def _time(fn, arg, repeat):
    jax.block_until_ready(fn(arg))
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn(arg))
        best = min(best, time.perf_counter() - start)
    return best


def measure(problem: Problem, tol: float, maxiter: int, repeat: int) -> dict:
    forward = jax.jit(lambda t: problem.run(t, tol=tol, maxiter=maxiter))(problem.theta)
    if not bool(forward.converged):
        raise RuntimeError(
            f"forward solve did not converge in {maxiter} iterations "
            f"(error {float(forward.error):.1e} > tol {tol:.0e})"
        )
    iterations = int(forward.iterations)

    def implicit(t):
        return problem.loss(problem.run(t, tol=tol, maxiter=maxiter).params)

    def unrolled(t):
        return problem.loss(
            problem.run(t, tol=tol, maxiter=iterations, implicit_diff=False, unroll=True).params
        )

    out = {"iterations": iterations}
    grads = {}
    for name, fn in (("implicit", implicit), ("unrolled", unrolled)):
        compiled = jax.jit(jax.grad(fn)).lower(problem.theta).compile()
        out[f"{name}_time"] = _time(compiled, problem.theta, repeat)
        out[f"{name}_bytes"] = _peak_bytes(compiled)
        grads[name] = np.asarray(compiled(problem.theta))
    scale = max(float(np.linalg.norm(grads["implicit"])), 1e-300)
    out["grad_diff"] = float(np.linalg.norm(grads["unrolled"] - grads["implicit"])) / scale
    return out


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024 or unit == "GB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return str(b)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 250])
    parser.add_argument("--only", nargs="+", choices=sorted(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--tol", type=float, default=1e-10)
    parser.add_argument("--maxiter", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, float64, tol {args.tol:.0e}")
    print(
        "peak memory: XLA compile-time estimate (compiled.memory_analysis(): temp + args + outputs)"
    )
    header = (
        f"{'solver':<25} {'n':>5} {'iters':>6} {'implicit':>10} {'unrolled':>10} {'time x':>7} "
        f"{'mem implicit':>13} {'mem unrolled':>13} {'mem x':>7} {'rel diff':>9}"
    )
    print(header)
    print("-" * len(header))
    for name in args.only:
        for n in args.sizes:
            try:
                r = measure(PROBLEMS[name](n), args.tol, args.maxiter, args.repeat)
            except RuntimeError as err:
                print(f"{name:<25} {n:>5}  skipped: {err}")
                continue
            print(
                f"{name:<25} {n:>5} {r['iterations']:>6} {r['implicit_time'] * 1e3:>8.2f}ms "
                f"{r['unrolled_time'] * 1e3:>8.2f}ms "
                f"{r['unrolled_time'] / r['implicit_time']:>7.2f} "
                f"{_fmt_bytes(r['implicit_bytes']):>13} {_fmt_bytes(r['unrolled_bytes']):>13} "
                f"{r['unrolled_bytes'] / r['implicit_bytes']:>7.1f} {r['grad_diff']:>9.1e}",
                flush=True,
            )
    print("time x, mem x: unrolled / implicit (above 1: implicit differentiation is cheaper)")


if __name__ == "__main__":
    main()
