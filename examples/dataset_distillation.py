"""Dataset distillation: one learned prototype image per class (Blondel et al., 2022, §4.2).

Learn ten 8x8 images ``P`` (one per digit) such that a multiclass logistic regression trained
on those ten images alone classifies the real digits well. Bilevel problem:

    min_P  L_train(W*(P))     with   W*(P) = argmin_W  CE(P W, labels 0..9) + λ/2 ‖W‖²,

the inner problem solved by accelerated gradient descent. The outer gradient ``∂L/∂P`` goes through
``W*(P)``: by implicit differentiation (``@custom_root`` of the inner gradient, a CG solve with
the inner Hessian) or by unrolling the inner gradient-descent iterations (reverse mode through
the loop). The script trains ``P`` with the implicit gradient, reports the test accuracy of the
classifier trained on the ten prototypes, times one outer step both ways, and saves the
prototypes as an image.

Data: scikit-learn's digits (8x8 images, shipped with scikit-learn) in place of MNIST.

    python examples/dataset_distillation.py [--full] [--output out/examples]
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from sensitivity import custom_root, solve_cg  # noqa: E402

N_CLASSES = 10


def load_data(seed=0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = X / 16.0  # pixels in [0, 1]
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    return jnp.asarray(X_tr), jnp.asarray(y_tr), jnp.asarray(X_te), jnp.asarray(y_te)


def cross_entropy(logits, labels):
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, labels[:, None], 1)[:, 0])


def inner_objective(W, P, lam):
    """Logistic regression on the prototypes (labels 0..9), L2 regularized."""
    logits = P @ W[:-1] + W[-1]  # last row: intercepts
    return cross_entropy(logits, jnp.arange(N_CLASSES)) + 0.5 * lam * jnp.sum(W[:-1] ** 2)


def make_inner_solvers(lam, inner_iterations):
    """The same gradient-descent solver, once with implicit differentiation, once plain."""
    F = jax.grad(inner_objective)  # optimality: ∇_W f(W, P, λ) = 0

    def gradient_descent(init_W, P, lam):
        # Nesterov's accelerated gradient descent for a λ-strongly convex, L-smooth objective:
        # step 1/L with L = ‖[P 1]‖²_F / (2m) + λ ≥ the Lipschitz constant of ∇_W f.
        L = (jnp.sum(P**2) + N_CLASSES) / (2 * N_CLASSES) + lam
        q = jnp.sqrt(lam / L)
        momentum = (1 - q) / (1 + q)

        def step(i, state):
            W, W_prev = state
            Y = W + momentum * (W - W_prev)
            return Y - F(Y, P, lam) / L, W

        return jax.lax.fori_loop(0, inner_iterations, step, (init_W, init_W))[0]

    implicit = custom_root(F, solve=functools.partial(solve_cg, tol=1e-10), symmetric=True)(gradient_descent)
    return implicit, gradient_descent


def accuracy(W, X, y):
    return float(jnp.mean(jnp.argmax(X @ W[:-1] + W[-1], axis=1) == y))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="more outer and inner iterations")
    parser.add_argument("--output", default="out/examples", help="folder for the figure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    outer_steps, inner_iterations, timing_repeats = (300, 3000, 10) if args.full else (40, 1000, 3)
    lam, lr = 3e-2, 0.05

    X_tr, y_tr, X_te, y_te = load_data(args.seed)
    d = X_tr.shape[1]
    implicit_solver, unrolled_solver = make_inner_solvers(lam, inner_iterations)
    W0 = jnp.zeros((d + 1, N_CLASSES))

    def outer_loss(P, solver):
        W = solver(W0, P, lam)
        return cross_entropy(X_tr @ W[:-1] + W[-1], y_tr)

    grad_implicit = jax.jit(jax.value_and_grad(lambda P: outer_loss(P, implicit_solver)))
    grad_unrolled = jax.jit(jax.value_and_grad(lambda P: outer_loss(P, unrolled_solver)))
    solve_jit = jax.jit(lambda P: implicit_solver(W0, P, lam))

    key = jax.random.PRNGKey(args.seed)
    P = 0.5 + 0.1 * jax.random.normal(key, (N_CLASSES, d))  # grey noise: no class information
    acc0 = accuracy(solve_jit(P), X_te, y_te)

    # Time one outer gradient both ways (compiled; best of a few).
    def best_time(fn, P):
        jax.block_until_ready(fn(P))  # compile
        times = []
        for _ in range(timing_repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(P))
            times.append(time.perf_counter() - t)
        return min(times)

    t_implicit = best_time(grad_implicit, P)
    t_unrolled = best_time(grad_unrolled, P)
    g_i, g_u = grad_implicit(P)[1], grad_unrolled(P)[1]
    grad_gap = float(jnp.linalg.norm(g_i - g_u) / jnp.linalg.norm(g_i))

    # Adam on the prototypes, with the implicit gradient.
    m = jnp.zeros_like(P)
    v = jnp.zeros_like(P)
    losses = []
    t0 = time.perf_counter()
    for step in range(1, outer_steps + 1):
        loss, g = grad_implicit(P)
        losses.append(float(loss))
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g**2
        P = P - lr * (m / (1 - 0.9**step)) / (jnp.sqrt(v / (1 - 0.999**step)) + 1e-8)
        P = jnp.clip(P, 0.0, 1.0)  # stay images
    train_time = time.perf_counter() - t0
    W = solve_jit(P)
    acc = accuracy(W, X_te, y_te)
    acc_train = accuracy(W, X_tr, y_tr)

    # Reference: logistic regression trained on all training images.
    from sklearn.linear_model import LogisticRegression

    full_acc = LogisticRegression(max_iter=2000).fit(np.asarray(X_tr), np.asarray(y_tr)).score(
        np.asarray(X_te), np.asarray(y_te))

    print(f"digits: {X_tr.shape[0]} train / {X_te.shape[0]} test images, {outer_steps} outer Adam steps, "
          f"{inner_iterations} inner accelerated gradient iterations")
    rows = [
        ("test accuracy, prototypes at start (noise)", f"{acc0:.3f}"),
        ("test accuracy, 10 learned prototypes", f"{acc:.3f}"),
        ("train accuracy, 10 learned prototypes", f"{acc_train:.3f}"),
        ("test accuracy, all training images (sklearn)", f"{full_acc:.3f}"),
        ("outer loss first -> last", f"{losses[0]:.3f} -> {losses[-1]:.3f}"),
        ("time per outer gradient, implicit [s]", f"{t_implicit:.4f}"),
        ("time per outer gradient, unrolled [s]", f"{t_unrolled:.4f}"),
        ("unrolled / implicit time", f"{t_unrolled / t_implicit:.2f}x"),
        ("|g_implicit - g_unrolled| / |g_implicit| at start", f"{grad_gap:.1e}"),
        ("training time (implicit) [s]", f"{train_time:.1f}"),
    ]
    w = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(w)}  {value}")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, N_CLASSES, figsize=(N_CLASSES * 1.1, 1.6))
    for c, ax in enumerate(axes):
        ax.imshow(np.asarray(P[c]).reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(str(c))
        ax.axis("off")
    fig.suptitle(f"distilled digits: logistic regression on these 10 images, test accuracy {acc:.1%}", fontsize=9)
    fig.tight_layout()
    figure = out / "dataset_distillation.png"
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    print(f"prototypes: {figure}")

    return {
        "test_accuracy": acc,
        "initial_test_accuracy": acc0,
        "full_data_accuracy": float(full_acc),
        "outer_loss_first": losses[0],
        "outer_loss_last": losses[-1],
        "time_implicit": t_implicit,
        "time_unrolled": t_unrolled,
        "speedup": t_unrolled / t_implicit,
        "gradient_gap": grad_gap,
        "figure": str(figure),
    }


if __name__ == "__main__":
    main()
