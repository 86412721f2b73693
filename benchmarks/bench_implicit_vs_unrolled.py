"""Implicit versus unrolled differentiation of gradient descent: time and peak memory.

The inner problem is ridge regression or L2-regularized logistic regression with ``d``
features (``n = 1000`` training samples of Gaussian data), solved by ``T`` iterations of
gradient descent with a fixed step ``1/L``. The derivative is that of a validation loss with
respect to the regularization ``λ``,

* implicitly: the same loop decorated with ``@custom_root`` of the gradient (the inner
  iterations are not differentiated; one CG solve with the Hessian), or
* by unrolling: autodiff through the ``T`` iterations,

in reverse mode (``jax.grad``) and in forward mode (``jax.jvp``). Each measurement runs in its
own process (``--child``), so that compilation caches and allocator state do not leak between
them. Reported per measurement:

* time: best of ``--repeat`` runs of the compiled function, after a warm-up run;
* peak memory: the growth of the process's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs`` after compilation and data set-up) during the first run, with
  glibc's mmap threshold fixed at 64 KiB so that freed buffers return to the OS; and XLA's
  own plan for the compiled program (``memory_analysis().temp_size_in_bytes``).

Ratios are unrolled / implicit: above 1 means implicit differentiation is cheaper. Unrolled
reverse mode stores every iterate (memory ``O(T d)``); implicit differentiation needs the
solution only (``O(d)`` beyond the data).

    python benchmarks/bench_implicit_vs_unrolled.py            # small: d 100, 1000; T 10..300
    python benchmarks/bench_implicit_vs_unrolled.py --full     # d 100..10000; T 10..1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

N_TRAIN, N_VAL = 1000, 200


# --------------------------------------------------------------------------- one measurement


def _status_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(spec: dict) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import functools

    import jax.numpy as jnp
    import numpy as np

    from sensitivity import custom_root, solve_cg

    problem, method, mode = spec["problem"], spec["method"], spec["mode"]
    d, iterations, repeat = spec["d"], spec["iterations"], spec["repeat"]
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(N_TRAIN, d)))
    X_val = jnp.asarray(rng.normal(size=(N_VAL, d)))
    w = rng.normal(size=d) / np.sqrt(d)
    if problem == "ridge":
        y = jnp.asarray(np.asarray(X) @ w + 0.1 * rng.normal(size=N_TRAIN))
        y_val = jnp.asarray(np.asarray(X_val) @ w)

        def inner(x, lam):
            return 0.5 * jnp.mean((X @ x - y) ** 2) + 0.5 * lam * jnp.sum(x**2)

        def outer_loss(x):
            return 0.5 * jnp.mean((X_val @ x - y_val) ** 2)

        curvature = 1.0
    else:
        y = jnp.asarray((np.asarray(X) @ w + 0.1 * rng.normal(size=N_TRAIN) > 0).astype(float))
        y_val = jnp.asarray((np.asarray(X_val) @ w > 0).astype(float))

        def logistic(z, t):
            return jnp.mean(jnp.logaddexp(0.0, z) - t * z)

        def inner(x, lam):
            return logistic(X @ x, y) + 0.5 * lam * jnp.sum(x**2)

        def outer_loss(x):
            return logistic(X_val @ x, y_val)

        curvature = 0.25
    lam0 = 0.05
    L = curvature * float(np.linalg.norm(np.asarray(X), 2) ** 2) / N_TRAIN + lam0
    step = 1.0 / L
    F = jax.grad(inner)

    def gradient_descent(init, lam):
        return jax.lax.fori_loop(0, iterations, lambda i, x: x - step * F(x, lam), init)

    if method == "implicit":
        solver = custom_root(F, solve=functools.partial(solve_cg, tol=spec.get("tol", 1e-10), maxiter=1000), symmetric=True)(
            gradient_descent)
    else:
        solver = gradient_descent
    x0 = jnp.zeros(d)

    def hyper_objective(lam):
        return outer_loss(solver(x0, lam))

    if mode == "reverse":
        fn = jax.jit(jax.grad(hyper_objective))
    else:
        fn = jax.jit(lambda lam: jax.jvp(hyper_objective, (lam,), (jnp.ones_like(lam),))[1])
    lam = jnp.asarray(lam0)

    t = time.perf_counter()
    compiled = fn.lower(lam).compile()
    compile_s = time.perf_counter() - t
    try:
        xla_temp = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        xla_temp = -1
    reset_ok = _reset_peak()
    base = _status_kib("VmRSS")
    value = jax.block_until_ready(compiled(lam))
    peak = _status_kib("VmHWM")
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(compiled(lam))
        times.append(time.perf_counter() - t)
    return dict(spec, time_s=min(times), compile_s=compile_s, xla_temp_bytes=xla_temp,
                rss_growth_bytes=(peak - base) * 1024 if reset_ok else -1, value=float(value))


# --------------------------------------------------------------------------- driver


def run_child(spec):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    env.setdefault("JAX_PLATFORMS", "cpu")
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(here), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_bytes(b):
    if b < 0:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


def ratio(a, b):
    return f"{a / b:.2f}" if a > 0 and b > 0 else "n/a"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="d up to 10^4 and T up to 1000")
    parser.add_argument("--sizes", type=int, nargs="+", help="feature counts d of the size sweep")
    parser.add_argument("--iterations", type=int, nargs="+", help="inner iteration counts T of the iteration sweep")
    parser.add_argument("--problems", nargs="+", default=["ridge", "logistic"], choices=["ridge", "logistic"])
    parser.add_argument("--modes", nargs="+", default=["reverse", "forward"], choices=["reverse", "forward"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tol", type=float, default=1e-10, help="relative tolerance of the implicit CG solve")
    parser.add_argument("--json", help="also write all measurements to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return None

    sizes = args.sizes or ([100, 1000, 10000] if args.full else [100, 1000])
    its = args.iterations or ([10, 100, 1000] if args.full else [10, 100, 300])
    fixed_T = 200 if args.full else 100
    fixed_d = 1000
    sweeps = [("size", [(d, fixed_T) for d in sizes]), ("iterations", [(fixed_d, T) for T in its])]

    print(f"gradient descent, n={N_TRAIN} training samples; one process per measurement; "
          f"time = best of {args.repeat}; implicit: CG to tol {args.tol:g}; ratios = unrolled / implicit")
    results = []
    for sweep, points in sweeps:
        header = (f"{'problem':<9} {'mode':<8} {'d':>6} {'T':>5} | {'t impl':>9} {'t unroll':>9} {'ratio':>6} | "
                  f"{'RSS impl':>10} {'RSS unroll':>10} {'ratio':>6} | {'XLA impl':>10} {'XLA unroll':>10} "
                  f"{'ratio':>6} | {'rel diff':>8}")
        print(f"\n== {sweep} sweep ({'T' if sweep == 'size' else 'd'} = {fixed_T if sweep == 'size' else fixed_d})")
        print(header)
        print("-" * len(header))
        for problem in args.problems:
            for mode in args.modes:
                for d, T in points:
                    pair = {}
                    for method in ("implicit", "unrolled"):
                        spec = dict(problem=problem, method=method, mode=mode, d=d, iterations=T, repeat=args.repeat, tol=args.tol)
                        pair[method] = run_child(spec)
                        results.append(dict(pair[method], sweep=sweep))
                    i, u = pair["implicit"], pair["unrolled"]
                    rel = abs(i["value"] - u["value"]) / max(abs(i["value"]), 1e-300)
                    print(f"{problem:<9} {mode:<8} {d:>6} {T:>5} | {i['time_s']*1e3:>7.2f}ms {u['time_s']*1e3:>7.2f}ms "
                          f"{ratio(u['time_s'], i['time_s']):>6} | {fmt_bytes(i['rss_growth_bytes']):>10} "
                          f"{fmt_bytes(u['rss_growth_bytes']):>10} {ratio(u['rss_growth_bytes'], i['rss_growth_bytes']):>6} | "
                          f"{fmt_bytes(i['xla_temp_bytes']):>10} {fmt_bytes(u['xla_temp_bytes']):>10} "
                          f"{ratio(u['xla_temp_bytes'], i['xla_temp_bytes']):>6} | {rel:>8.1e}", flush=True)
    print("\nrel diff: |implicit - unrolled| / |implicit| of the hypergradient (large when T iterations "
          "do not converge the inner problem: the implicit formula then uses an unconverged point)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
