"""Task-driven dictionary learning (Mairal et al., 2012; Blondel et al., 2022, §4.3).

Each sample ``x_i`` is encoded by a sparse code over a dictionary ``D`` (``k`` unit-norm atoms):

    a_i*(D) = argmin_a  ½‖x_i − Dᵀa‖² + λ₁‖a‖₁ + (λ₂/2)‖a‖²        (elastic net),

computed for all samples at once by proximal gradient (FISTA); ``sensitivity`` differentiates
the codes through the proximal-gradient fixed point ``A = prox(A − η∇f(A))``. A logistic
regression on the codes is trained together with the dictionary, on the classification loss
only (no reconstruction term): the dictionary is learned for the task. The test AUC is compared
with plain L1- and L2-regularized logistic regression on the raw features and with a
logistic regression on the codes of the initial (unsupervised) dictionary.

Data: scikit-learn's breast cancer data set (569 samples, 30 features; shipped with
scikit-learn).

    python examples/dictionary_learning.py [--full] [--output out/examples]
"""

from __future__ import annotations

import argparse
import functools
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from sensitivity import proximal_gradient, prox_elastic_net, solve_gmres  # noqa: E402


def load_data(seed=0):
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(X_tr)
    return scaler.transform(X_tr), y_tr.astype(float), scaler.transform(X_te), y_te.astype(float)


def reconstruction(A, D, X):
    return 0.5 * jnp.sum((X - A @ D) ** 2)


def normalize(D_raw):
    return D_raw / jnp.linalg.norm(D_raw, axis=1, keepdims=True)


def make_encoder(n_atoms, l1, l2, maxiter):
    # unit-norm atoms: ‖D‖₂² ≤ ‖D‖_F² = k, so the step 1/k is always ≤ 1/L
    step = 1.0 / n_atoms
    solve = functools.partial(solve_gmres, tol=1e-9, restart=50)

    def encode(D, X):
        init = jnp.zeros((X.shape[0], D.shape[0]))
        res = proximal_gradient(
            reconstruction, prox_elastic_net, init, (l1, l2), D, X,
            step_size=step, tol=1e-8, maxiter=maxiter, solve=solve,
        )
        return res.params, res

    return encode


def logistic(scores, y):
    return jnp.mean(jnp.logaddexp(0.0, scores) - y * scores)


def auc(y, scores):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(y), np.asarray(scores)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="more atoms and outer steps")
    parser.add_argument("--output", default="out/examples", help="folder for the figure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_atoms, outer_steps, maxiter = (20, 300, 2000) if args.full else (10, 30, 1000)
    l1, l2, ridge, lr = 0.1, 0.1, 1e-3, 0.02

    X_tr, y_tr, X_te, y_te = load_data(args.seed)
    Xj, yj, Xt = jnp.asarray(X_tr), jnp.asarray(y_tr), jnp.asarray(X_te)
    encode = make_encoder(n_atoms, l1, l2, maxiter)

    # Baselines on the raw features.
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    baselines = {}
    for name, penalty, solver in [("L1 logistic regression", "l1", "liblinear"), ("L2 logistic regression", "l2", "lbfgs")]:
        with warnings.catch_warnings():  # scikit-learn's deprecation notices about `penalty`
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            clf = LogisticRegressionCV(Cs=10, cv=5, penalty=penalty, solver=solver, scoring="roc_auc", max_iter=5000)
            clf.fit(X_tr, y_tr)
        baselines[name] = auc(y_te, clf.decision_function(X_te))

    # Initial dictionary: random training samples (unsupervised starting point).
    rng = np.random.default_rng(args.seed)
    D_raw = jnp.asarray(X_tr[rng.choice(len(X_tr), n_atoms, replace=False)])
    A0, _ = jax.jit(encode)(normalize(D_raw), Xj)
    A0t, _ = jax.jit(encode)(normalize(D_raw), Xt)
    clf0 = LogisticRegression(max_iter=5000).fit(np.asarray(A0), y_tr)
    baselines["codes of the initial dictionary + L2 LR"] = auc(y_te, clf0.decision_function(np.asarray(A0t)))

    # Task-driven learning: dictionary and classifier by Adam on the training logistic loss.
    params = {"D": D_raw, "w": jnp.asarray(clf0.coef_[0]), "b": jnp.asarray(clf0.intercept_[0])}

    def outer_loss(params):
        A, res = encode(normalize(params["D"]), Xj)
        loss = logistic(A @ params["w"] + params["b"], yj) + 0.5 * ridge * jnp.sum(params["w"] ** 2)
        return loss, res

    value_and_grad = jax.jit(jax.value_and_grad(outer_loss, has_aux=True))
    predict = jax.jit(lambda p, X: encode(normalize(p["D"]), X)[0] @ p["w"] + p["b"])
    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    history = []
    t0 = time.perf_counter()
    for step in range(1, outer_steps + 1):
        (loss, res), g = value_and_grad(params)
        m = jax.tree.map(lambda m_, g_: 0.9 * m_ + 0.1 * g_, m, g)
        v = jax.tree.map(lambda v_, g_: 0.999 * v_ + 0.001 * g_**2, v, g)
        params = jax.tree.map(
            lambda p, m_, v_: p - lr * (m_ / (1 - 0.9**step)) / (jnp.sqrt(v_ / (1 - 0.999**step)) + 1e-8),
            params, m, v)
        if step == 1 or step % max(1, outer_steps // 10) == 0 or step == outer_steps:
            history.append(dict(step=step, loss=float(loss), test_auc=auc(y_te, predict(params, Xt)),
                                inner_iterations=int(res.iterations),
                                sparsity=float(jnp.mean(res.params == 0))))
    elapsed = time.perf_counter() - t0
    final_auc = auc(y_te, predict(params, Xt))
    train_auc = auc(y_tr, predict(params, Xj))

    print(f"breast cancer: {len(X_tr)} train / {len(X_te)} test, {X_tr.shape[1]} features; "
          f"{n_atoms} atoms, elastic net λ₁={l1}, λ₂={l2}; {outer_steps} Adam steps in {elapsed:.1f} s")
    print("\ntraining (implicit differentiation of the proximal-gradient codes):")
    print(f"{'step':>5}  {'train loss':>10}  {'test AUC':>8}  {'inner its':>9}  {'zero codes':>10}")
    for r in history:
        print(f"{r['step']:>5}  {r['loss']:>10.4f}  {r['test_auc']:>8.4f}  {r['inner_iterations']:>9}  {r['sparsity']:>10.2f}")
    print("\ntest AUC:")
    rows = list(baselines.items()) + [("task-driven dictionary learning (this)", final_auc)]
    w = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name.ljust(w)}  {value:.4f}")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.4]})
    ax = axes[0]
    ax.plot([r["step"] for r in history], [r["test_auc"] for r in history], "o-", label="task-driven dictionary")
    for i, (name, value) in enumerate(baselines.items()):
        ax.axhline(value, ls="--", color=f"C{i + 1}", label=name)
    ax.set_xlabel("outer step")
    ax.set_ylabel("test AUC")
    ax.legend(fontsize=7)
    ax = axes[1]
    D = np.asarray(normalize(params["D"]))
    im = ax.imshow(D, cmap="RdBu_r", vmin=-np.abs(D).max(), vmax=np.abs(D).max(), aspect="auto")
    ax.set_xlabel("feature")
    ax.set_ylabel("atom")
    ax.set_title("learned dictionary (unit-norm atoms)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    figure = out / "dictionary_learning.png"
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    print(f"figure: {figure}")

    return {
        "test_auc": final_auc,
        "train_auc": train_auc,
        "baselines": baselines,
        "loss_first": history[0]["loss"],
        "loss_last": history[-1]["loss"],
        "figure": str(figure),
    }


if __name__ == "__main__":
    main()
