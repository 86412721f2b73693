"""The catalog's solvers: forward answers against references, and the implicit Jacobian of
every row of the paper's table against central finite differences of the tightly solved
problem and against closed forms (lasso on its support, ridge, simplex-constrained least
squares, equality-constrained QP, the second-order cone), in forward and reverse mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from catalog_helpers import assert_close, jacobians, jacobians_and_pointwise_fd
from sensitivity import (
    block_coordinate_descent,
    gradient_descent,
    kl_projection_simplex,
    mirror_descent,
    newton,
    projected_gradient,
    projection_simplex,
    prox_group_lasso,
    prox_lasso,
    proximal_gradient,
    scipy_minimize,
    smat,
    solve_conic,
    solve_qp,
    svec,
)

RNG = np.random.default_rng(1)
X = jnp.asarray(RNG.normal(size=(15, 6)))
Y = jnp.asarray(RNG.normal(size=15))
LIPSCHITZ = float(np.linalg.eigvalsh(np.asarray(X.T @ X)).max())


def least_squares(x, y):
    return 0.5 * jnp.sum((X @ x - y) ** 2)


def check_implicit_jacobian(solution, theta, expected=None, atol=1e-7, h=1e-6, evaluate=None):
    """jacfwd and jacrev of ``solution`` at ``theta`` (one compiled program) against central
    FD (and a closed form). The FD are calls of one compiled forward program ``evaluate``
    (default ``jax.jit(solution)``, which most tests have compiled for their forward check)
    at ``theta +- h e_i`` (:func:`jacobians_and_pointwise_fd`)."""
    jac_fwd, jac_rev, fd = jacobians_and_pointwise_fd(solution, theta, h, evaluate)
    assert np.abs(np.asarray(fd)).max() > 1e-3, "degenerate check: the Jacobian is ~0"
    assert_close(jac_fwd, fd, atol=atol, what="jacfwd vs finite differences")
    assert_close(jac_rev, jac_fwd, atol=1e-9, what="jacrev vs jacfwd")
    if expected is not None:
        assert_close(jac_fwd, expected, atol=1e-8, what="jacfwd vs closed form")


# --------------------------------------------------------------------------- gradient descent


def ridge_objective(x, lam, y):
    return least_squares(x, y) + 0.5 * lam * jnp.sum(x**2)


@pytest.mark.slow
def test_gradient_descent_ridge():
    lam = 0.5
    result = jax.jit(
        lambda y: gradient_descent(ridge_objective, jnp.zeros(6), lam, y, tol=1e-12, maxiter=5000)
    )(Y)
    assert bool(result.converged) and float(result.error) <= 1e-12
    hess_inv = np.linalg.inv(np.asarray(X.T @ X) + lam * np.eye(6))
    assert_close(result.params, hess_inv @ np.asarray(X.T @ Y), atol=1e-11)

    def solution(y):
        return gradient_descent(
            ridge_objective, jnp.zeros(6), lam, y, tol=1e-12, maxiter=5000
        ).params

    check_implicit_jacobian(solution, Y, expected=hess_inv @ np.asarray(X.T))


def test_solver_result_reports_non_convergence_and_validates_arguments():
    result = gradient_descent(ridge_objective, jnp.zeros(6), 0.5, Y, maxiter=3)
    assert not bool(result.converged)
    assert int(result.iterations) == 3 and float(result.error) > 1e-8
    with pytest.raises(ValueError, match="exclusive"):
        gradient_descent(ridge_objective, jnp.zeros(6), 0.5, Y, unroll=True, step_size=0.01)
    with pytest.raises(ValueError, match="fixed step_size"):
        gradient_descent(ridge_objective, jnp.zeros(6), 0.5, Y, implicit_diff=False, unroll=True)


# --------------------------------------------------------------------------- proximal gradient


def lasso_closed_form_jacobian(x, wrt):
    support = np.abs(np.asarray(x)) > 0
    XS = np.asarray(X)[:, support]
    gram_inv = np.linalg.inv(XS.T @ XS)
    if wrt == "lam":
        jac = np.zeros(6)
        jac[support] = -gram_inv @ np.sign(np.asarray(x)[support])
    else:
        jac = np.zeros((6, 15))
        jac[support] = gram_inv @ XS.T
    return support, jac


@pytest.mark.parametrize("acceleration", [True, False])
@pytest.mark.slow
def test_proximal_gradient_lasso(acceleration):
    lam = 2.0

    def solution(lam):
        return proximal_gradient(
            least_squares,
            prox_lasso,
            jnp.zeros(6),
            lam,
            Y,
            acceleration=acceleration,
            tol=1e-12,
            maxiter=20000,
        ).params

    x = jax.jit(solution)(lam)
    support, expected = lasso_closed_form_jacobian(x, "lam")
    assert 0 < support.sum() < 6
    # reference: the lasso's subgradient optimality conditions
    grad = np.asarray(X.T @ (X @ x - Y))
    assert_close(grad[support], -lam * np.sign(np.asarray(x)[support]), atol=1e-9)
    assert np.all(np.abs(grad[~support]) <= lam + 1e-9)
    check_implicit_jacobian(solution, jnp.asarray(lam), expected=expected)


@pytest.mark.slow
def test_proximal_gradient_lasso_jacobian_in_data_with_fixed_step():
    def solution(y):
        return proximal_gradient(
            least_squares,
            prox_lasso,
            jnp.zeros(6),
            2.0,
            y,
            step_size=1.0 / LIPSCHITZ,
            tol=1e-12,
            maxiter=20000,
        ).params

    x = jax.jit(solution)(Y)
    _, expected = lasso_closed_form_jacobian(x, "y")
    check_implicit_jacobian(solution, Y, expected=expected)


@pytest.mark.slow
def test_unrolling_agrees_with_implicit_differentiation_at_convergence():
    def run(lam, **kwargs):
        return proximal_gradient(
            least_squares,
            prox_lasso,
            jnp.zeros(6),
            lam,
            Y,
            step_size=1.0 / LIPSCHITZ,
            tol=1e-12,
            **kwargs,
        )

    implicit = run(2.0, maxiter=20000)
    iterations = int(implicit.iterations)
    unrolled = jax.jit(
        jax.grad(
            lambda lam: run(
                lam, maxiter=2 * iterations, implicit_diff=False, unroll=True
            ).params.sum()
        )
    )(2.0)
    unrolled_result = jax.jit(
        lambda lam: run(lam, maxiter=2 * iterations, implicit_diff=False, unroll=True)
    )(2.0)
    assert int(unrolled_result.iterations) == iterations  # frozen once converged
    assert_close(unrolled_result.params, implicit.params, atol=1e-14)
    implicit_grad = jax.jit(jax.grad(lambda lam: run(lam, maxiter=20000).params.sum()))(2.0)
    assert_close(unrolled, implicit_grad, atol=1e-8)


# --------------------------------------------------------------------------- projected gradient


@pytest.mark.slow
def test_projected_gradient_least_squares_on_the_simplex():
    def solution(y):
        return projected_gradient(
            least_squares, projection_simplex, jnp.zeros(6), 1.0, y, tol=1e-12, maxiter=20000
        ).params

    x = np.asarray(jax.jit(solution)(Y))
    support = x > 0
    assert 1 < support.sum() < 6 and abs(x.sum() - 1) < 1e-12
    # closed form on the support: KKT of min 1/2||X_S x_S - y||^2 s.t. sum(x_S) = 1
    XS = np.asarray(X)[:, support]
    k = support.sum()
    kkt = np.block([[XS.T @ XS, np.ones((k, 1))], [np.ones((1, k)), np.zeros((1, 1))]])
    kkt_inv = np.linalg.inv(kkt)
    assert_close(x[support], (kkt_inv @ np.append(XS.T @ np.asarray(Y), 1.0))[:k], atol=1e-10)
    expected = np.zeros((6, 15))
    expected[support] = kkt_inv[:k, :k] @ XS.T
    check_implicit_jacobian(solution, Y, expected=expected)


# --------------------------------------------------------------------------- mirror descent

H = jnp.asarray(np.diag([1.0, 2.0, 3.0, 4.0]) + 0.2)


def simplex_qp(x, theta):
    return 0.5 * x @ H @ x - theta @ x


@pytest.mark.slow
def test_mirror_descent_kl_simplex():
    theta = jnp.array([1.0, 1.2, 0.8, 1.5])

    def solution(theta):
        return mirror_descent(
            simplex_qp,
            kl_projection_simplex,
            jnp.log,
            jnp.full(4, 0.25),
            1.0,
            theta,
            step_size=0.2,
            tol=1e-12,
            maxiter=20000,
        ).params

    h_inv = np.linalg.inv(np.asarray(H))
    ones = np.ones(4)
    expected = h_inv - np.outer(h_inv @ ones, ones @ h_inv) / (ones @ h_inv @ ones)
    nu = (ones @ h_inv @ np.asarray(theta) - 1.0) / (ones @ h_inv @ ones)
    assert_close(jax.jit(solution)(theta), h_inv @ (np.asarray(theta) - nu), atol=1e-11)
    check_implicit_jacobian(solution, theta, expected=expected)


# --------------------------------------------------------------------------- block coordinate


@pytest.mark.slow
def test_block_coordinate_descent_lasso_closed_form():
    steps = 1.0 / np.diag(np.asarray(X.T @ X))  # coordinate-wise 1/L_j

    def solution(y):
        return block_coordinate_descent(
            least_squares,
            prox_lasso,
            jnp.zeros(6),
            2.0,
            y,
            step_size=steps,
            tol=1e-12,
            maxiter=5000,
        ).params

    reference = proximal_gradient(
        least_squares,
        prox_lasso,
        jnp.zeros(6),
        2.0,
        Y,
        tol=1e-13,
        maxiter=20000,
        implicit_diff=False,
    ).params
    x = jax.jit(solution)(Y)
    assert_close(x, reference, atol=1e-10)
    _, expected = lasso_closed_form_jacobian(x, "y")
    check_implicit_jacobian(solution, Y, expected=expected)


@pytest.mark.slow
def test_block_coordinate_descent_group_lasso():
    Yt = jnp.asarray(RNG.normal(size=(15, 3)))

    def loss(W, Yt):
        return 0.5 * jnp.sum((X @ W - Yt) ** 2)

    steps = 1.0 / np.diag(np.asarray(X.T @ X))

    def solution(lam):
        return block_coordinate_descent(
            loss,
            prox_group_lasso,
            jnp.zeros((6, 3)),
            lam,
            Yt,
            step_size=steps,
            tol=1e-12,
            maxiter=5000,
        ).params

    W = jax.jit(solution)(3.0)
    active = np.linalg.norm(np.asarray(W), axis=1) > 0
    assert 0 < active.sum() < 6
    check_implicit_jacobian(solution, jnp.asarray(3.0))


# --------------------------------------------------------------------------- Newton


def logistic(w, lam, offsets):
    margins = jnp.sign(Y) * (X @ w) + offsets
    return jnp.sum(jnp.logaddexp(0.0, -margins)) + 0.5 * lam * jnp.sum(w**2)


@pytest.mark.slow
def test_newton_logistic_regression():
    offsets = jnp.asarray(0.1 * RNG.normal(size=15))
    forward = jax.jit(lambda o: newton(logistic, jnp.zeros(6), 0.3, o))
    result = forward(offsets)
    assert bool(result.converged) and int(result.iterations) < 20
    reference = scipy.optimize.minimize(
        lambda w: float(logistic(w, 0.3, offsets)),
        np.zeros(6),
        jac=lambda w: np.asarray(jax.grad(logistic)(w, 0.3, offsets)),
        method="BFGS",
        options={"gtol": 1e-10},
    ).x
    assert_close(result.params, reference, atol=1e-7)

    def solution(offsets):
        return newton(logistic, jnp.zeros(6), 0.3, offsets).params

    hess, cross = jax.jit(lambda w, o: (jax.hessian(logistic)(w, 0.3, o),
                                        jax.jacobian(jax.grad(logistic), 2)(w, 0.3, o)))(
        result.params, offsets)
    expected = -np.linalg.solve(hess, cross)
    check_implicit_jacobian(solution, offsets, expected=expected,
                            evaluate=lambda o: forward(o).params)


# --------------------------------------------------------------------------- QP (KKT)

Q_QP = X.T @ X + 0.1 * jnp.eye(6)
C_QP = jnp.asarray(RNG.normal(size=6))
A_QP = jnp.asarray(RNG.normal(size=(2, 6)))
B_QP = jnp.asarray(RNG.normal(size=2))


@pytest.mark.slow
def test_qp_equality_constrained_closed_form():
    def solution(c):
        return solve_qp(Q_QP, c, A_QP, B_QP).params.primal

    kkt = np.block([[np.asarray(Q_QP), np.asarray(A_QP).T], [np.asarray(A_QP), np.zeros((2, 2))]])
    kkt_inv = np.linalg.inv(kkt)
    forward = jax.jit(lambda c: solve_qp(Q_QP, c, A_QP, B_QP))
    result = forward(C_QP)
    assert bool(result.converged) and result.params.dual_ineq.shape == (0,)
    full = kkt_inv @ np.concatenate([-np.asarray(C_QP), np.asarray(B_QP)])
    assert_close(result.params.primal, full[:6], atol=1e-12)
    assert_close(result.params.dual_eq, full[6:], atol=1e-12)
    check_implicit_jacobian(solution, C_QP, expected=-kkt_inv[:6, :6],
                            evaluate=lambda c: forward(c).params.primal)


@pytest.mark.slow
def test_qp_with_inequalities():
    G = jnp.asarray(RNG.normal(size=(5, 6)))
    h = jnp.asarray(0.3 * RNG.uniform(size=5))

    forward = jax.jit(lambda c, h: solve_qp(Q_QP, c, A_QP, B_QP, G, h))
    result = forward(C_QP, h)
    assert bool(result.converged)
    x, nu, lam = (np.asarray(v) for v in result.params)
    slack = np.asarray(h) - np.asarray(G) @ x
    active = lam > 1e-9
    assert 0 < active.sum() < 5 and np.all(slack > -1e-12) and np.all(lam >= 0)
    assert np.all(slack[active] < 1e-12) and np.all(lam[~active] == 0)  # polished: exact
    # closed form on the active set: the equality-constrained QP with G_active x = h_active
    Aa = np.concatenate([np.asarray(A_QP), np.asarray(G)[active]])
    k = Aa.shape[0]
    kkt_inv = np.linalg.inv(np.block([[np.asarray(Q_QP), Aa.T], [Aa, np.zeros((k, k))]]))

    # the Jacobians in c and in h as the blocks of one in (c, h): one compiled check
    def primal_of_c_h(c_h):
        return solve_qp(Q_QP, c_h[:6], A_QP, B_QP, G, c_h[6:]).params.primal

    expected_h = np.zeros((6, 5))
    expected_h[:, active] = kkt_inv[:6, 8:]
    assert np.abs(expected_h).max() > 1e-3  # the h block is not ~0 either
    check_implicit_jacobian(primal_of_c_h, jnp.concatenate([C_QP, h]),
                            expected=np.concatenate([-kkt_inv[:6, :6], expected_h], axis=1),
                            evaluate=lambda c_h: forward(c_h[:6], c_h[6:]).params.primal)


@pytest.mark.slow
def test_qp_reports_an_infeasible_problem():
    # x >= 1 and x <= -1
    G = jnp.array([[-1.0], [1.0]])
    h = jnp.array([-1.0, -1.0])
    result = jax.jit(lambda c: solve_qp(jnp.eye(1), c, G=G, h=h, maxiter=30))(jnp.zeros(1))
    assert not bool(result.converged)


# --------------------------------------------------------------------------- conic programs


@pytest.mark.slow
def test_conic_second_order_cone_closed_form():
    n = 4
    A = jnp.concatenate([jnp.zeros((1, n)), -jnp.eye(n)])
    b = jnp.zeros(n + 1).at[0].set(1.0)
    c = jnp.asarray(RNG.normal(size=n))

    def solution(c):
        return solve_conic(c, A, b, {"q": [n + 1]}, tol=1e-10).params.x

    forward = jax.jit(lambda c: solve_conic(c, A, b, {"q": [n + 1]}, tol=1e-10))
    result = forward(c)
    assert bool(result.converged)
    x = -c / jnp.linalg.norm(c)
    assert_close(result.params.x, x, atol=1e-10)
    expected = -(np.eye(n) - np.outer(x, x)) / float(jnp.linalg.norm(c))
    check_implicit_jacobian(solution, c, expected=expected,
                            evaluate=lambda c: forward(c).params.x)


@pytest.mark.slow
def test_conic_semidefinite_program():
    # min tr(C X) s.t. tr(X) = 1, X PSD: X* = v v^T, v the eigenvector of C's smallest eigenvalue
    k = 3
    d = k * (k + 1) // 2
    M = RNG.normal(size=(k, k))
    C = jnp.asarray(M + M.T)
    A = jnp.concatenate([svec(jnp.eye(k))[None, :], -jnp.eye(d)])
    b = jnp.zeros(d + 1).at[0].set(1.0)
    cones = {"z": 1, "s": [k]}

    def solution(c_vec):
        return solve_conic(c_vec, A, b, cones, tol=1e-10).params.x

    forward = jax.jit(lambda c_vec: solve_conic(c_vec, A, b, cones, tol=1e-10))
    result = forward(svec(C))
    assert bool(result.converged)
    w, V = np.linalg.eigh(np.asarray(C))
    assert_close(smat(result.params.x), np.outer(V[:, 0], V[:, 0]), atol=1e-9)
    check_implicit_jacobian(solution, svec(C), atol=1e-6,
                            evaluate=lambda c_vec: forward(c_vec).params.x)


# --------------------------------------------------------------------------- SciPy via a callback


@pytest.mark.slow
def test_scipy_minimize_under_jit_with_implicit_derivatives():
    lam = 0.5

    @jax.jit
    def solution(y):
        return scipy_minimize(ridge_objective, jnp.zeros(6), lam, y).params

    hess_inv = np.linalg.inv(np.asarray(X.T @ X) + lam * np.eye(6))
    assert_close(solution(Y), hess_inv @ np.asarray(X.T @ Y), atol=1e-9)
    jac_fwd, jac_rev = jacobians(solution, Y)
    assert_close(jac_fwd, hess_inv @ np.asarray(X.T), atol=1e-9)
    assert_close(jac_rev, jac_fwd, atol=1e-10)
    # vmap runs SciPy once per batch element. gtol 1e-8, not the default 1e-10: BFGS's line
    # search loses precision (SciPy status 2) once f changes by less than eps |f|, and
    # whether 1e-10 is reached first depends on XLA's rounding of the gradient.
    ys = jnp.stack([Y, 2 * Y])
    batched = jax.jit(jax.vmap(
        lambda y: scipy_minimize(ridge_objective, jnp.zeros(6), lam, y, tol=1e-8)))(ys)
    assert np.all(np.asarray(batched.converged))
    assert np.all(np.asarray(batched.error) <= 1e-8)
    # ||x - x*|| <= ||grad|| / lambda_min(H) with lambda_min >= lam
    assert_close(batched.params[0], hess_inv @ np.asarray(X.T @ Y), atol=1e-8 / lam)
    assert_close(batched.params[1], 2 * hess_inv @ np.asarray(X.T @ Y), atol=1e-8 / lam)
