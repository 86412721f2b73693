"""jacobian_error_estimate against the measured error of the implicit Jacobian at x̂."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sensitivity
from sensitivity import jacobian_error_estimate, root_jvp


def _logistic_problem(n=40, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.normal(size=(n, d)))
    y = jnp.asarray((rng.normal(size=n) > 0).astype(float))

    def objective(x, lam, X, y):
        z = X @ x
        return jnp.sum(jnp.logaddexp(0.0, z) - y * z) + 0.5 * lam * x @ x

    F = jax.grad(objective)

    def newton_step(_, x):
        H = jax.hessian(objective)(x, 1.0, X, y)
        return x - jnp.linalg.solve(H, F(x, 1.0, X, y))

    newton = jax.jit(lambda x: jax.lax.fori_loop(0, 30, newton_step, x))  # machine precision

    return F, newton(jnp.zeros(d)), X, y, rng


@jax.jit(static_argnums=(0, 3))
def _dense_jacobian(F, x, args, argnums=1):
    A = jax.jacfwd(F)(x, *args)
    B = jax.jacfwd(F, argnums=argnums)(x, *args)
    return -jnp.linalg.solve(A, B)


def test_exported():
    assert sensitivity.jacobian_error_estimate is jacobian_error_estimate
    assert "relative_error_estimate" in dir(sensitivity.JacobianErrorEstimate)


@pytest.mark.slow
def test_ridge_estimate_is_exact():
    # F affine in x: the first-order estimate is the exact error, δ = x̂ − x*.
    rng = np.random.default_rng(1)
    X = jnp.asarray(rng.normal(size=(30, 8)))
    y = jnp.asarray(rng.normal(size=30))
    F = lambda x, lam: X.T @ (X @ x - y) + lam * x  # noqa: E731
    lam = 2.0
    x_star = jnp.linalg.solve(X.T @ X + lam * jnp.eye(8), X.T @ y)
    x_hat = x_star + 1e-3 * jnp.asarray(rng.normal(size=8))
    J_star = root_jvp(F, x_star, (lam,), (1.0,), solve=sensitivity.solve_lu)
    J_hat = root_jvp(F, x_hat, (lam,), (1.0,), solve=sensitivity.solve_lu)
    measured = float(jnp.linalg.norm(J_hat - J_star))
    est = jacobian_error_estimate(F, x_hat, (lam,))
    np.testing.assert_allclose(float(est.distance_estimate), float(jnp.linalg.norm(x_hat - x_star)), rtol=1e-8)
    np.testing.assert_allclose(float(est.error_estimate), measured, rtol=1e-6)
    assert float(est.error_bound) >= measured * (1 - 1e-9)
    assert float(est.distance_bound) >= float(est.distance_estimate) * (1 - 1e-12)


@pytest.mark.slow
def test_logistic_estimate_tracks_measured_error(method="dense"):
    F, x_star, X, y, rng = _logistic_problem()
    u = jnp.asarray(rng.normal(size=x_star.shape))
    u = u / jnp.linalg.norm(u)
    J_star = _dense_jacobian(F, x_star, (1.0, X, y))
    ratios = []
    for eps in [1e-2, 1e-4, 1e-6]:
        x_hat = x_star + eps * u
        measured = float(jnp.linalg.norm(_dense_jacobian(F, x_hat, (1.0, X, y)) - J_star))
        est = jacobian_error_estimate(F, x_hat, (1.0, X, y), argnums=0, method=method)
        ratios.append(float(est.error_estimate) / measured)
        assert float(est.error_bound) >= measured
        np.testing.assert_allclose(float(est.distance_estimate), eps, rtol=5e-2)
        np.testing.assert_allclose(float(est.jacobian_norm), float(jnp.linalg.norm(J_star)), rtol=1e-1)
    # First order: the estimate becomes exact as x̂ → x*.
    assert abs(ratios[0] - 1) < 0.2
    assert abs(ratios[-1] - 1) < 1e-3
    # Linear in the distance (Theorem 1).
    e1 = jacobian_error_estimate(F, x_star + 1e-3 * u, (1.0, X, y))
    e2 = jacobian_error_estimate(F, x_star + 1e-5 * u, (1.0, X, y))
    np.testing.assert_allclose(float(e1.error_estimate / e2.error_estimate), 100.0, rtol=1e-2)


@pytest.mark.slow
def test_dense_and_iterative_agree():
    F, x_star, X, y, rng = _logistic_problem(seed=3)
    x_hat = x_star + 1e-3 * jnp.asarray(rng.normal(size=x_star.shape))
    d = jacobian_error_estimate(F, x_hat, (1.0, X, y), method="dense")
    i = jacobian_error_estimate(F, x_hat, (1.0, X, y), method="iterative", power_iterations=100)
    for name in ["residual_norm", "distance_estimate", "error_estimate", "jacobian_norm"]:
        np.testing.assert_allclose(float(getattr(i, name)), float(getattr(d, name)), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(float(i.sigma_min), float(d.sigma_min), rtol=1e-3)
    np.testing.assert_allclose(float(i.error_bound), float(d.error_bound), rtol=1e-2)


@pytest.mark.slow
def test_pytree_solution_tangents_and_argnums():
    # x = {"a": ..., "b": ...}, θ = (lam, shift) in two arguments; one direction.
    rng = np.random.default_rng(4)
    M = jnp.asarray(rng.normal(size=(6, 6)))
    A = M @ M.T + 6 * jnp.eye(6)

    def F(x, lam, shift):
        v = jnp.concatenate([x["a"], x["b"]])
        r = A @ v + lam * v**3 / 3 - shift
        return {"a": r[:3], "b": r[3:]}

    shift = jnp.asarray(rng.normal(size=6))
    v = jnp.zeros(6)
    for _ in range(40):
        Fv = lambda w: A @ w + 0.5 * w**3 / 3 - shift  # noqa: E731
        v = v - jnp.linalg.solve(jax.jacfwd(Fv)(v), Fv(v))
    x_star = {"a": v[:3], "b": v[3:]}
    x_hat = jax.tree.map(lambda t: t + 1e-4, x_star)
    direction = (1.0, jnp.ones(6))
    est = jacobian_error_estimate(F, x_hat, (0.5, shift), argnums=(0, 1), tangents=direction)

    def jvp_at(x):
        return jnp.concatenate(jax.tree.leaves(
            root_jvp(F, x, (0.5, shift), direction, solve=sensitivity.solve_lu)))

    measured = float(jnp.linalg.norm(jvp_at(x_hat) - jvp_at(x_star)))
    np.testing.assert_allclose(float(est.error_estimate), measured, rtol=5e-2)
    assert float(est.error_bound) >= measured
    full = jacobian_error_estimate(F, x_hat, (0.5, shift), argnums=(0, 1))
    assert float(full.jacobian_norm) > float(est.jacobian_norm) * 0.99  # more columns


def test_bad_arguments():
    F = lambda x, lam: x - lam  # noqa: E731
    with pytest.raises(ValueError, match="argnums"):
        jacobian_error_estimate(F, jnp.ones(2), (1.0,), argnums=3)
    with pytest.raises(ValueError, match="method"):
        jacobian_error_estimate(F, jnp.ones(2), (1.0,), method="magic")
    with pytest.raises(ValueError, match="tangents"):
        jacobian_error_estimate(F, jnp.ones(2), (1.0,), tangents=jnp.ones(3))
