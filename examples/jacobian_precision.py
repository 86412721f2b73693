"""Jacobian precision (Theorem 1 of Blondel et al., 2022): implicit vs unrolled derivatives.

A solver stops at an approximate solution ``x̂``. Implicit differentiation evaluates the
Jacobian formula ``J(x̂, θ) = -∂₁F(x̂, θ)⁻¹ ∂₂F(x̂, θ)`` there, and Theorem 1 says its error is
linear in the solution's error: ``‖J(x̂, θ) − ∂x*(θ)‖ ≤ C ‖x̂ − x*‖``. Unrolling the same
iterations differentiates the iterates themselves, whose derivative lags behind.

For two strongly convex problems on synthetic data,

* gradient descent on L2-regularized logistic regression, ``θ`` = the L2 strength,
  ``F = ∇f`` (stationarity);
* proximal gradient on elastic-net logistic regression, ``θ`` = the L1 strength,
  ``F(x) = prox(x − η∇f(x)) − x`` (the proximal-gradient fixed point),

this script runs the solver, and at every iterate ``x_k`` measures ``‖x_k − x*‖``, the error of
the implicit Jacobian at ``x_k`` and the error of the unrolled Jacobian (forward mode through the
``k`` iterations), plots both on log-log axes and fits the slope of the implicit error (≈ 1).
It also prints :func:`sensitivity.jacobian_error_estimate`, which predicts the implicit error
from ``F(x_k)`` alone.

    python examples/jacobian_precision.py [--full] [--output out/examples]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from sensitivity import (  # noqa: E402
    jacobian_error_estimate,
    make_gradient_descent_fixed_point,
    make_proximal_gradient_fixed_point,
    make_stationary_condition,
    prox_elastic_net,
    root_jvp,
    solve_lu,
)


def make_data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) / np.sqrt(d)
    w = rng.normal(size=d) * (rng.random(d) < 0.3)
    y = (X @ w + 0.3 * rng.normal(size=n) > 0).astype(float)
    return jnp.asarray(X), jnp.asarray(y)


def logistic_loss(x, X, y):
    z = X @ x
    return jnp.sum(jnp.logaddexp(0.0, z) - y * z)


def build_problems(n, d, strength, seed=0):
    """Each problem: (name, T(x, θ) one solver step, F(x, θ) optimality map, θ, x0)."""
    X, y = make_data(n, d, seed)
    lipschitz = float(jnp.linalg.norm(X, ord=2) ** 2 / 4)

    # gradient descent on f(x, θ) = logistic(x) + θ/2 ‖x‖²
    theta_gd = strength * lipschitz

    def f_gd(x, theta):
        return logistic_loss(x, X, y) + 0.5 * theta * x @ x

    eta_gd = 1.0 / (lipschitz + theta_gd)
    gd_step = make_gradient_descent_fixed_point(f_gd, eta_gd)
    gd_F = make_stationary_condition(f_gd)

    # proximal gradient on logistic(x) + θ‖x‖₁ + μ/2 ‖x‖²
    mu = strength * lipschitz
    eta_pg = 1.0 / lipschitz
    pg_T = make_proximal_gradient_fixed_point(lambda x: logistic_loss(x, X, y), prox_elastic_net, eta_pg)

    def pg_step(x, theta):
        return pg_T(x, (theta, mu))

    def pg_F(x, theta):
        return pg_step(x, theta) - x

    theta_pg = 0.05 * float(jnp.max(jnp.abs(X.T @ (y - 0.5))))  # keeps part of the support
    x0 = jnp.zeros(d)
    return [
        ("gradient descent", gd_step, gd_F, theta_gd, x0),
        ("proximal gradient", pg_step, pg_F, theta_pg, x0),
    ]


def measure(step, F, theta, x0, iterations, n_points):
    """Errors of implicit and unrolled Jacobians along the iterates."""

    def run(th):  # all iterates x_1..x_K
        def body(x, _):
            x_new = step(x, th)
            return x_new, x_new

        return jax.lax.scan(body, x0, None, length=iterations)[1]

    # Unrolled Jacobians of every iterate at once: forward mode through the scan.
    iterates, unrolled = jax.jit(lambda th: jax.jvp(run, (th,), (jnp.ones_like(th),)))(theta)

    # The reference x*: the same solver run ten times longer (to machine precision).
    more = jax.jit(lambda x: jax.lax.fori_loop(0, 10 * iterations, lambda i, v: step(v, theta), x))
    x_star = more(iterates[-1])

    implicit = jax.jit(lambda x: root_jvp(F, x, (theta,), (jnp.ones_like(theta),), solve=solve_lu))
    J_star = implicit(x_star)
    ks = np.unique(np.geomspace(1, iterations, n_points).astype(int)) - 1
    rows = []
    for k in ks:
        x_k = iterates[k]
        est = jacobian_error_estimate(F, x_k, (theta,))
        rows.append(
            dict(
                k=int(k + 1),
                distance=float(jnp.linalg.norm(x_k - x_star)),
                implicit=float(jnp.linalg.norm(implicit(x_k) - J_star)),
                unrolled=float(jnp.linalg.norm(unrolled[k] - J_star)),
                estimate=float(est.error_estimate),
                bound=float(est.error_bound),
                residual=float(est.residual_norm),
            )
        )
    return rows, float(jnp.linalg.norm(J_star))


def fit_slope(rows, key, lo=1e-11, hi=1e-2):
    pts = [(r["distance"], r[key]) for r in rows if lo <= r["distance"] <= hi and r[key] > 0]
    if len(pts) < 3:
        return float("nan")
    d, e = np.log(np.array(pts)).T
    return float(np.polyfit(d, e, 1)[0])


def print_table(headers, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="larger problem, more iterations")
    parser.add_argument("--output", default="out/examples", help="folder for the figure")
    args = parser.parse_args(argv)
    # strength: the L2 term as a fraction of the smooth part's Lipschitz constant (1/κ).
    n, d, strength, iters, points = (500, 200, 0.01, 3000, 50) if args.full else (120, 40, 0.04, 600, 24)

    results = {}
    t0 = time.perf_counter()
    for name, step, F, theta, x0 in build_problems(n, d, strength):
        rows, jnorm = measure(step, F, jnp.asarray(theta), x0, iters, points)
        slope_impl = fit_slope(rows, "implicit")
        slope_unrolled = fit_slope(rows, "unrolled")
        results[name] = dict(rows=rows, slope_implicit=slope_impl, slope_unrolled=slope_unrolled, jnorm=jnorm)
        print(f"\n{name}  (n={n}, d={d}, θ={float(theta):.4g}, ‖∂x*/∂θ‖={jnorm:.3e})")
        print_table(
            ["k", "‖x_k−x*‖", "implicit err", "unrolled err", "estimate", "bound"],
            [[str(r["k"]), f"{r['distance']:.2e}", f"{r['implicit']:.2e}", f"{r['unrolled']:.2e}",
              f"{r['estimate']:.2e}", f"{r['bound']:.2e}"] for r in rows[:: max(1, len(rows) // 10)]],
        )
        print(f"fitted log-log slope: implicit {slope_impl:.3f}, unrolled {slope_unrolled:.3f}")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.3))
    for ax, (name, res) in zip(np.atleast_1d(axes), results.items()):
        rows = res["rows"]
        rows = [r for r in rows if r["distance"] > 0 and r["implicit"] > 0]
        dist = np.array([r["distance"] for r in rows])
        ax.loglog(dist, [r["implicit"] for r in rows], "o", label="implicit diff. at $x_k$")
        ax.loglog(dist, [r["unrolled"] for r in rows], "s", mfc="none", label="unrolling $k$ iterations")
        ax.loglog(dist, [r["estimate"] for r in rows], "-", color="C2", lw=1, label="jacobian_error_estimate")
        ref = dist[dist > 0]
        ratio = np.median([r["implicit"] / r["distance"] for r in rows if r["distance"] > 0])
        ax.loglog(ref, ref * ratio, ":", color="0.5", label="slope 1")
        ax.set_xlabel(r"$\|x_k - x^\star\|$")
        ax.set_ylabel(r"Jacobian error $\|J - \partial x^\star(\theta)\|$")
        ax.set_title(f"{name}: slope {res['slope_implicit']:.2f}")
        ax.invert_xaxis()
        ax.legend(fontsize=8)
    fig.tight_layout()
    figure = out / "jacobian_precision.png"
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    print(f"\nfigure: {figure}  ({time.perf_counter() - t0:.1f} s)")

    return {
        "slope_gradient_descent": results["gradient descent"]["slope_implicit"],
        "slope_proximal_gradient": results["proximal gradient"]["slope_implicit"],
        "slope_unrolled_gradient_descent": results["gradient descent"]["slope_unrolled"],
        "slope_unrolled_proximal_gradient": results["proximal gradient"]["slope_unrolled"],
        "rows": {k: v["rows"] for k, v in results.items()},
        "figure": str(figure),
    }


if __name__ == "__main__":
    main()
