"""Proximal operators against their definition (an argmin solved numerically with SciPy),
their derivatives against finite differences, and the conventions at kinks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from catalog_helpers import assert_close, central_fd_jacobian, jacobians_and_fd
from sensitivity import (
    make_prox_from_projection,
    projection_box,
    prox_elastic_net,
    prox_group_lasso,
    prox_lasso,
    prox_non_negative_lasso,
    prox_non_negative_ridge,
    prox_none,
    prox_ridge,
)

SCALING = 0.7
L1, L2 = 0.8, 1.3

# name -> (prox, hyperparams, penalty g(y) on a numpy vector, y >= 0 constraint)
SEPARABLE = {
    "lasso": (prox_lasso, L1, lambda y: L1 * np.abs(y).sum(), False),
    "non_negative_lasso": (prox_non_negative_lasso, L1, lambda y: L1 * y.sum(), True),
    "elastic_net": (
        prox_elastic_net,
        (L1, L2),
        lambda y: L1 * np.abs(y).sum() + 0.5 * L2 * (y**2).sum(),
        False,
    ),
    "ridge": (prox_ridge, L2, lambda y: 0.5 * L2 * (y**2).sum(), False),
    "non_negative_ridge": (prox_non_negative_ridge, L2, lambda y: 0.5 * L2 * (y**2).sum(), True),
    "none": (prox_none, None, lambda y: 0.0, False),
}


def _random_x(seed, n=9):
    x = np.random.default_rng(seed).normal(scale=1.5, size=n)
    # Points where the operators are not differentiable: exactly at the thresholds and at 0.
    x[0] = SCALING * L1
    x[1] = -SCALING * L1
    x[2] = 0.0
    return x


def _argmin_scalar(x_i, penalty, non_negative):
    """argmin_y 1/2 (y - x_i)^2 + SCALING * penalty(y) by bounded Brent (convex, 1-D)."""
    lo = 0.0 if non_negative else -abs(x_i) - 1.0
    res = scipy.optimize.minimize_scalar(
        lambda y: 0.5 * (y - x_i) ** 2 + SCALING * penalty(np.array([y])),
        bounds=(lo, abs(x_i) + 1.0),
        method="bounded",
        options={"xatol": 1e-12},
    )
    return res.x


@pytest.mark.parametrize("name", sorted(SEPARABLE))
@pytest.mark.parametrize("seed", [0, 1])
def test_separable_prox_is_the_argmin(name, seed):
    prox, hyper, penalty, non_negative = SEPARABLE[name]
    x = _random_x(seed)
    expected = np.array([_argmin_scalar(x_i, penalty, non_negative) for x_i in x])
    assert_close(prox(jnp.asarray(x), hyper, SCALING), expected, atol=1e-7, what=name)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_lasso_is_the_argmin(seed):
    rng = np.random.default_rng(seed)
    # one point with ||x|| above the threshold, one below (the prox is exactly 0 there)
    x = rng.normal(size=5) * (1.0 if seed != 2 else 0.1)
    c = SCALING * L1

    # epigraph: min 1/2||y - x||^2 + c t  s.t.  t^2 >= ||y||^2, t >= 0 (smooth, SLSQP)
    def objective(v):
        return 0.5 * np.sum((v[:-1] - x) ** 2) + c * v[-1]

    res = scipy.optimize.minimize(
        objective,
        np.append(x, np.linalg.norm(x) + 1.0),
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda v: v[-1] ** 2 - np.sum(v[:-1] ** 2)}],
        bounds=[(None, None)] * 5 + [(0, None)],
        options={"ftol": 1e-15, "maxiter": 500},
    )
    assert_close(prox_group_lasso(jnp.asarray(x), L1, SCALING), res.x[:-1], atol=1e-6)


def test_prox_on_pytrees_with_per_leaf_hyperparams():
    x = {"a": jnp.array([2.0, -0.5]), "b": jnp.array([[1.5]])}
    out = prox_lasso(x, {"a": 1.0, "b": 0.2}, 1.0)
    assert_close(out["a"], [1.0, 0.0], atol=0)
    assert_close(out["b"], [[1.3]], atol=1e-15)
    # a scalar hyperparameter applies to every leaf
    assert_close(prox_lasso(x, 1.0)["b"], [[0.5]], atol=1e-15)
    # group lasso: the whole pytree is one group
    norm = np.sqrt(4 + 0.25 + 2.25)
    out = prox_group_lasso(x, 1.0)
    assert_close(out["a"], (1 - 1 / norm) * np.array([2.0, -0.5]), atol=1e-15)


@pytest.mark.parametrize("name", sorted(SEPARABLE) + ["group_lasso"])
@pytest.mark.slow
def test_prox_derivatives_match_finite_differences(name):
    if name == "group_lasso":
        prox, hyper = prox_group_lasso, L1
    else:
        prox, hyper = SEPARABLE[name][:2]
    x = jnp.asarray(np.random.default_rng(3).normal(scale=1.5, size=6))
    # jacfwd, jacrev and central FD in one compiled program (eager, op by op)
    jac_x, jac_x_rev, fd_x = jacobians_and_fd(lambda u: prox(u, hyper, SCALING), x)
    assert_close(jac_x, fd_x, atol=1e-8, what=name)
    assert_close(jac_x_rev, jac_x, atol=1e-14, what=name)
    if hyper is not None:
        # derivative in the (first) hyperparameter and in the scaling
        def of_first(t):
            hp = (t, hyper[1]) if isinstance(hyper, tuple) else t
            return prox(x, hp, SCALING)

        first = hyper[0] if isinstance(hyper, tuple) else hyper
        t0 = jnp.asarray(first)
        assert_close(
            jax.jit(jax.jacfwd(of_first))(t0), central_fd_jacobian(of_first, t0), atol=1e-8,
            what=name,
        )
        s0 = jnp.asarray(SCALING)
        of_scaling = lambda s: prox(x, hyper, s)  # noqa: E731
        assert_close(
            jax.jit(jax.jacrev(of_scaling))(s0), central_fd_jacobian(of_scaling, s0), atol=1e-8,
            what=name,
        )


@pytest.mark.slow
def test_conventions_at_kinks_are_finite_and_documented():
    t = SCALING * L1
    x = jnp.array([t, -t, 0.0, 2.0])
    # soft threshold: at |x| = threshold the coordinate is inactive (zero derivative)
    assert_close(jnp.diag(jax.jacfwd(prox_lasso)(x, L1, SCALING)), [0, 0, 0, 1], atol=0)
    assert_close(jax.grad(lambda lam: prox_lasso(x, lam, SCALING).sum())(L1), -SCALING, atol=1e-15)
    # non-negative variants at 0 and at the threshold
    assert_close(
        jnp.diag(jax.jacfwd(prox_non_negative_ridge)(x, L2, SCALING)),
        [1 / (1 + SCALING * L2)] * 1 + [0, 0, 1 / (1 + SCALING * L2)],
        atol=1e-15,
    )
    assert_close(
        jnp.diag(jax.jacfwd(prox_non_negative_lasso)(x, L1, SCALING)), [0, 0, 0, 1], atol=0
    )
    # group lasso at x = 0 and on the threshold sphere: output 0, Jacobian 0, no NaN
    for point in (jnp.zeros(3), jnp.array([t, 0.0, 0.0])):
        assert_close(prox_group_lasso(point, L1, SCALING), np.zeros(3), atol=0)
        assert_close(jax.jacfwd(prox_group_lasso)(point, L1, SCALING), np.zeros((3, 3)), atol=0)
        assert_close(
            jax.grad(lambda u: prox_group_lasso(u, L1, SCALING).sum())(point), np.zeros(3), atol=0
        )
        assert_close(
            jax.grad(lambda lam: prox_group_lasso(point, lam, SCALING).sum())(L1), 0.0, atol=0
        )


def test_prox_from_projection_ignores_scaling():
    prox_box = make_prox_from_projection(projection_box)
    x = jnp.array([-2.0, 0.3, 5.0])
    for scaling in (0.1, 10.0):
        assert_close(prox_box(x, (0.0, 1.0), scaling), [0.0, 0.3, 1.0], atol=0)


def test_prox_works_under_jit_and_vmap():
    xs = jnp.asarray(np.random.default_rng(4).normal(size=(4, 3)))
    lams = jnp.array([0.1, 0.5, 1.0, 2.0])
    batched = jax.jit(jax.vmap(prox_group_lasso))(xs, lams)
    for i in range(4):
        assert_close(batched[i], prox_group_lasso(xs[i], lams[i]), atol=1e-15)
