"""Ridge regression: the paper's first snippet, checked against the closed form.

A ridge solver decorated with ``@custom_root`` of the gradient of its objective is
differentiated with ``jax.jacobian`` (forward mode) and ``jax.jacrev`` (reverse mode) with
respect to the regularization ``θ``. The closed form is

    x*(θ) = (XᵀX + θI)⁻¹ Xᵀy,      ∂x*/∂θ = -(XᵀX + θI)⁻¹ x*(θ).

The script prints the largest deviation from the closed form for a range of ``θ`` and uses the
derivative for what it is for: the gradient of a validation loss with respect to ``θ``, which
is compared with central finite differences and plotted along the regularization path.

Data: scikit-learn's diabetes data set (shipped with scikit-learn, nothing downloaded).

    python examples/ridge_regression.py [--full] [--output out/examples]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from sensitivity import custom_root, solve_cg  # noqa: E402


def load_data(seed: int = 0):
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    X_tr, X_val, y_tr, y_val = train_test_split(X, y, test_size=0.5, random_state=seed)
    return tuple(jnp.asarray(a) for a in (X_tr, y_tr, X_val, y_val))


def make_ridge_solver(X_tr, y_tr):
    """The paper's snippet: a ridge solver made differentiable by ``@custom_root``."""

    def f(x, theta):  # the objective
        residual = X_tr @ x - y_tr
        return (jnp.sum(residual**2) + theta * jnp.sum(x**2)) / 2

    F = jax.grad(f)  # optimality condition: ∇₁f(x, θ) = 0

    @custom_root(F, solve=solve_cg)
    def ridge_solver(init_x, theta):
        del init_x  # the closed-form solve needs no starting point
        XX = X_tr.T @ X_tr
        Xy = X_tr.T @ y_tr
        eye = jnp.eye(X_tr.shape[1])
        return jnp.linalg.solve(XX + theta * eye, Xy)

    return ridge_solver


def closed_form(X_tr, y_tr, theta):
    H = X_tr.T @ X_tr + theta * jnp.eye(X_tr.shape[1])
    x = jnp.linalg.solve(H, X_tr.T @ y_tr)
    return x, -jnp.linalg.solve(H, x)


def print_table(headers, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="a finer θ grid for the figure")
    parser.add_argument("--output", default="out/examples", help="folder for the figure")
    args = parser.parse_args(argv)

    X_tr, y_tr, X_val, y_val = load_data()
    ridge_solver = make_ridge_solver(X_tr, y_tr)

    # The paper's snippet.
    jac_fwd = jax.jit(jax.jacobian(ridge_solver, argnums=1))
    jac_rev = jax.jit(jax.jacrev(ridge_solver, argnums=1))
    print("jax.jacobian(ridge_solver, argnums=1)(None, 10.0) =")
    print(np.asarray(jac_fwd(None, 10.0)).round(5))

    thetas = [0.1, 1.0, 10.0, 100.0, 1000.0]
    rows, max_err = [], 0.0
    for theta in thetas:
        _, exact = closed_form(X_tr, y_tr, theta)
        e_fwd = float(jnp.max(jnp.abs(jac_fwd(None, theta) - exact)))
        e_rev = float(jnp.max(jnp.abs(jac_rev(None, theta) - exact)))
        scale = float(jnp.max(jnp.abs(exact)))
        max_err = max(max_err, e_fwd / scale, e_rev / scale)
        rows.append([f"{theta:g}", f"{scale:.3e}", f"{e_fwd:.1e}", f"{e_rev:.1e}"])
    print("\nJacobian dx*/dθ against the closed form -(XᵀX+θI)⁻¹x*:")
    print_table(["θ", "max|dx*/dθ|", "err jacobian", "err jacrev"], rows)

    # Hyperparameter gradient: validation loss as a function of log θ.
    def val_loss(log_theta):
        x = ridge_solver(None, jnp.exp(log_theta))
        return 0.5 * jnp.mean((X_val @ x - y_val) ** 2)

    val_and_grad = jax.jit(jax.value_and_grad(val_loss))
    h = 1e-5
    fd_rows, fd_err = [], 0.0
    for lt in np.log([1.0, 30.0, 300.0]):
        v, g = val_and_grad(lt)
        fd = (val_loss(lt + h) - val_loss(lt - h)) / (2 * h)
        fd_err = max(fd_err, abs(float(g - fd)) / max(abs(float(fd)), 1e-12))
        fd_rows.append([f"{np.exp(lt):g}", f"{float(v):.6f}", f"{float(g):+.6e}", f"{float(fd):+.6e}"])
    print("\nValidation loss and its derivative in log θ (implicit vs central differences):")
    print_table(["θ", "val loss", "implicit d/dlogθ", "finite diff"], fd_rows)

    grid = np.logspace(-2, 4, 121 if args.full else 31)
    t0 = time.perf_counter()
    solve_jit = jax.jit(ridge_solver)
    vals, grads = map(np.array, zip(*(val_and_grad(lt) for lt in np.log(grid))))
    paths = np.array([solve_jit(None, t) for t in grid])
    dpaths = np.array([jac_fwd(None, t) for t in grid])
    elapsed = time.perf_counter() - t0

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.semilogx(grid, np.asarray(paths))
    sel = slice(None, None, max(1, len(grid) // 10))
    for j in range(paths.shape[1]):  # tangents from the implicit derivative
        t, xv, dv = grid[sel], np.asarray(paths[sel, j]), np.asarray(dpaths[sel, j])
        ax.quiver(t, xv, 0.3 * t, 0.3 * t * dv, angles="xy", scale_units="xy", scale=1, width=0.003, alpha=0.6)
    ax.set_xlabel("θ (regularization)")
    ax.set_ylabel("coefficients x*(θ)")
    ax.set_title("ridge path with implicit tangents dx*/dθ")
    ax = axes[1]
    ax.semilogx(grid, np.asarray(vals), label="validation loss")
    ax2 = ax.twinx()
    ax2.semilogx(grid, np.asarray(grads), "C1--", label="d loss / d log θ (implicit)")
    ax2.axhline(0, color="0.6", lw=0.8)
    best = grid[int(np.argmin(np.asarray(vals)))]
    ax.axvline(best, color="0.4", ls=":", lw=1)
    ax.set_xlabel("θ")
    ax.set_ylabel("validation loss")
    ax2.set_ylabel("hypergradient", color="C1")
    ax.set_title(f"validation loss; minimum near θ={best:.3g}")
    fig.tight_layout()
    figure = out / "ridge_regression.png"
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    print(f"\n{len(grid)} θ values in {elapsed:.2f} s; figure: {figure}")
    print(f"max relative error of the implicit Jacobian: {max_err:.1e}")

    return {
        "max_relative_jacobian_error": max_err,
        "max_relative_hypergradient_fd_error": fd_err,
        "best_theta": float(best),
        "figure": str(figure),
    }


if __name__ == "__main__":
    main()
