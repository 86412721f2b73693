"""The catalog of optimality conditions, one row of the paper's table per test.

For each builder: the map vanishes (or is fixed) at a known solution, and the Jacobian the
implicit function theorem gives from it, computed densely in the test
(``-solve(dF/dx, dF/dθ)``, independent of the engine), or through ``custom_root`` /
``custom_fixed_point`` decorating a closed-form solver (forward and reverse mode), equals a
closed form. Derivatives through the iterative solvers are in ``test_solvers.py``.

Every test runs in float32 and float64 (the ``dtype`` fixture): the data are cast to the
dtype, the closed forms are evaluated in float64 from the cast data. Tolerance rule
(:func:`tol`): a float64 tolerance ``t64`` becomes ``t64 ** (log eps / log eps64)`` for a
dtype of machine epsilon ``eps``, i.e. it asks for the same share of the dtype's
significant digits (``1e-12`` -> ``5e-6`` in float32, ``1e-10`` -> ``4e-5``); ``0`` (an
exact branch) stays ``0``.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catalog_helpers import assert_close
from sensitivity import (
    ConeSpec,
    KKTSolution,
    conic_embed,
    conic_recover,
    custom_fixed_point,
    custom_root,
    kl_projection_simplex,
    make_block_proximal_gradient_fixed_point,
    make_cone_projection,
    make_conic_residual_map,
    make_gradient_descent_fixed_point,
    make_kkt_optimality_fun,
    make_mirror_descent_fixed_point,
    make_newton_fixed_point,
    make_projected_gradient_fixed_point,
    make_proximal_gradient_fixed_point,
    make_stationary_condition,
    newton,
    projection_simplex,
    prox_group_lasso,
    prox_lasso,
    proximal_gradient,
    solve_cg,
    solve_lu,
)

RNG = np.random.default_rng(0)
X64 = RNG.normal(size=(15, 6))
Y64 = RNG.normal(size=15)
C64 = RNG.normal(size=6)  # the QP's linear term
A64 = RNG.normal(size=(2, 6))  # its equality constraints
B64 = RNG.normal(size=2)
YT64 = RNG.normal(size=(15, 3))  # the multi-task targets
CONE_C64 = RNG.normal(size=4)  # the conic program's cost


def tol(dtype, tol64):
    """The float64 tolerance ``tol64`` for ``dtype``: the same share of its digits."""
    if tol64 == 0:
        return 0.0
    eps, eps64 = float(jnp.finfo(dtype).eps), float(jnp.finfo(jnp.float64).eps)
    return float(tol64 ** (np.log(eps) / np.log(eps64)))


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return jnp.dtype(request.param)


def test_tolerance_rule():
    assert tol(jnp.float64, 1e-12) == pytest.approx(1e-12)
    assert 3e-6 < tol(jnp.float32, 1e-12) < 8e-6 and tol(jnp.float32, 0) == 0.0


def dense_ift(F, x, theta, pinv=False):
    """``dx*/dθ = -[dF/dx]^{-1} dF/dθ`` with dense Jacobians (x, theta arrays); the
    Jacobians in the arrays' dtype (both in one compiled program: eager, they dispatch op by
    op), the solve in float64 (NumPy)."""
    jx, jt = jax.jit(lambda x, t: (jax.jacobian(F, 0)(x, t), jax.jacobian(F, 1)(x, t)))(x, theta)
    jx = np.asarray(jx, np.float64).reshape(x.size, x.size)
    jt = np.asarray(jt, np.float64).reshape(x.size, -1)
    sol = -(np.linalg.pinv(jx) @ jt if pinv else np.linalg.solve(jx, jt))
    return sol.reshape(x.shape + jnp.shape(theta))


# --------------------------------------------------------------------------- stationarity


def ridge_problem(dtype):
    """``(X, Y, objective, closed form)`` of ridge regression in ``dtype``."""
    X, Y = jnp.asarray(X64, dtype), jnp.asarray(Y64, dtype)

    def objective(x, lam, y):
        return 0.5 * jnp.sum((X @ x - y) ** 2) + 0.5 * lam * jnp.sum(x**2)

    def closed_form(lam, y):
        return jnp.linalg.solve(X.T @ X + lam * jnp.eye(6, dtype=dtype), X.T @ y)

    return X, Y, objective, closed_form


@pytest.mark.slow
def test_stationary_condition_ridge(dtype):
    X, Y, ridge_objective, ridge_closed_form = ridge_problem(dtype)
    lam = jnp.asarray(0.7, dtype)
    x = ridge_closed_form(lam, Y)
    F = make_stationary_condition(ridge_objective)
    assert_close(F(x, lam, Y), np.zeros(6), atol=tol(dtype, 1e-12))
    Xd, xd = np.asarray(X, np.float64), np.asarray(x, np.float64)
    hess_inv = np.linalg.inv(Xd.T @ Xd + 0.7 * np.eye(6))
    dx_dlam, dx_dy = -hess_inv @ xd, hess_inv @ Xd.T
    assert_close(dense_ift(lambda x, t: F(x, t, Y), x, lam), dx_dlam, atol=tol(dtype, 1e-12))

    @custom_root(F, solve=partial(solve_cg, tol=tol(dtype, 1e-13)), symmetric=True)
    def ridge(init, lam, y):
        del init
        return ridge_closed_form(lam, y)

    solution = lambda lam, y: ridge(jnp.zeros(6, dtype), lam, y)  # noqa: E731
    assert_close(jax.jit(jax.jacfwd(solution))(lam, Y), dx_dlam, atol=tol(dtype, 1e-10))
    assert_close(jax.jit(jax.jacrev(solution))(lam, Y), dx_dlam, atol=tol(dtype, 1e-10))
    assert_close(jax.jit(jax.jacrev(solution, argnums=1))(lam, Y), dx_dy, atol=tol(dtype, 1e-10))


@pytest.mark.parametrize("step_size", [0.01, 0.5])
@pytest.mark.slow
def test_gradient_descent_fixed_point_ridge(step_size, dtype):
    X, Y, ridge_objective, ridge_closed_form = ridge_problem(dtype)
    lam = jnp.asarray(0.7, dtype)
    x = ridge_closed_form(lam, Y)
    T = make_gradient_descent_fixed_point(ridge_objective, step_size)
    assert_close(T(x, lam, Y), x, atol=tol(dtype, 1e-12))

    @custom_fixed_point(T, solve=solve_lu)
    def ridge(init, lam, y):
        del init
        return ridge_closed_form(lam, y)

    Xd = np.asarray(X, np.float64)
    expected = -np.linalg.inv(Xd.T @ Xd + 0.7 * np.eye(6)) @ np.asarray(x, np.float64)
    for jac in (jax.jacfwd, jax.jacrev):
        got = jax.jit(jac(lambda t: ridge(jnp.zeros(6, dtype), t, Y)))(lam)
        assert_close(got, expected, atol=tol(dtype, 1e-10))


# --------------------------------------------------------------------------- KKT


def qp_objective(x, params_obj):
    Q, c = params_obj
    return 0.5 * x @ Q @ x + c @ x


@pytest.mark.slow
def test_kkt_equality_constrained_qp(dtype):
    X = jnp.asarray(X64, dtype)
    Q = X.T @ X
    c, A, b = (jnp.asarray(v, dtype) for v in (C64, A64, B64))
    eq_fun = lambda x, params_eq: params_eq[0] @ x - params_eq[1]  # noqa: E731
    F = make_kkt_optimality_fun(qp_objective, eq_fun)

    def closed_form(c, b):
        kkt = jnp.block([[Q, A.T], [A, jnp.zeros((2, 2), dtype)]])
        sol = jnp.linalg.solve(kkt, jnp.concatenate([-c, b]))
        return KKTSolution(sol[:6], sol[6:], None)

    sol = closed_form(c, b)
    residual = F(sol, (Q, c), (A, b))
    assert residual.dual_ineq is None
    assert_close(jnp.concatenate([residual.primal, residual.dual_eq]), np.zeros(8),
                 atol=tol(dtype, 1e-12))

    @custom_root(F, solve=solve_lu)
    def qp(init, params_obj, params_eq):
        del init
        return closed_form(params_obj[1], params_eq[1])

    def primal(c, b):
        return qp(sol, (Q, c), (A, b)).primal

    # reference: the inverse of the KKT matrix, in float64 from the cast data
    Qd, Ad = np.asarray(Q, np.float64), np.asarray(A, np.float64)
    kkt_inv = np.linalg.inv(np.block([[Qd, Ad.T], [Ad, np.zeros((2, 2))]]))
    reference = (-kkt_inv[:6, :6], kkt_inv[:6, 6:])
    for jac in (jax.jacfwd, jax.jacrev):
        got = jax.jit(jac(primal, argnums=(0, 1)))(c, b)
        assert_close(got[0], reference[0], atol=tol(dtype, 1e-10))
        assert_close(got[1], reference[1], atol=tol(dtype, 1e-10))


@pytest.mark.slow
def test_kkt_with_inequalities_non_negative_projection(dtype):
    # min 1/2 ||x - θ||^2 s.t. -x <= 0: x = max(θ, 0), lam = max(-θ, 0), dx/dθ = diag(θ > 0)
    theta = jnp.array([1.2, -0.4, 0.3, -2.0], dtype)
    obj = lambda x, theta: 0.5 * jnp.sum((x - theta) ** 2)  # noqa: E731
    ineq = lambda x, _: -x  # noqa: E731
    F = make_kkt_optimality_fun(obj, None, ineq)

    @custom_root(F, solve=solve_lu)
    def project(init, theta, params_eq, params_ineq):
        del init
        return KKTSolution(jnp.maximum(theta, 0.0), None, jnp.maximum(-theta, 0.0))

    sol = project(None, theta, None, None)
    res = F(sol, theta, None, None)
    assert_close(jnp.concatenate([res.primal, res.dual_ineq]), np.zeros(8), atol=0)
    expected = np.diag((np.asarray(theta) > 0).astype(float))
    for jac in (jax.jacfwd, jax.jacrev):
        got = jax.jit(jac(lambda t: project(None, t, None, None).primal))(theta)
        assert_close(got, expected, atol=tol(dtype, 1e-12))
        got_dual = jax.jit(jac(lambda t: project(None, t, None, None).dual_ineq))(theta)
        assert_close(got_dual, -np.diag((np.asarray(theta) < 0).astype(float)),
                     atol=tol(dtype, 1e-12))


# --------------------------------------------------------------------------- proximal gradient


@pytest.mark.parametrize("step_scale", [0.5, 1.0])
@pytest.mark.slow
def test_proximal_gradient_fixed_point_lasso_closed_form_on_support(step_scale, dtype):
    X, Y = jnp.asarray(X64, dtype), jnp.asarray(Y64, dtype)

    def lasso_loss(x, y):
        return 0.5 * jnp.sum((X @ x - y) ** 2)

    lam = jnp.asarray(2.0, dtype)
    step = step_scale / float(np.linalg.eigvalsh(np.asarray(X.T @ X, np.float64)).max())
    x = proximal_gradient(
        lasso_loss, prox_lasso, jnp.zeros(6, dtype), lam, Y, tol=tol(dtype, 1e-13),
        maxiter=20000, implicit_diff=False,
    ).params
    support = np.abs(np.asarray(x)) > 0
    assert 0 < support.sum() < 6  # a non-trivial support
    T = make_proximal_gradient_fixed_point(lasso_loss, prox_lasso, step)
    assert_close(T(x, lam, Y), x, atol=tol(dtype, 1e-12))
    XS = np.asarray(X, np.float64)[:, support]
    gram_inv = np.linalg.inv(XS.T @ XS)
    dx_dlam = np.zeros(6)
    dx_dlam[support] = -gram_inv @ np.sign(np.asarray(x)[support])
    dx_dy = np.zeros((6, 15))
    dx_dy[support] = gram_inv @ XS.T
    F = lambda x, lam: T(x, lam, Y) - x  # noqa: E731
    assert_close(dense_ift(F, x, lam), dx_dlam, atol=tol(dtype, 1e-9))
    G = lambda x, y: T(x, lam, y) - x  # noqa: E731
    assert_close(dense_ift(G, x, Y), dx_dy, atol=tol(dtype, 1e-9))


@pytest.mark.slow
def test_projected_gradient_fixed_point_simplex_closed_form(dtype):
    # min 1/2||x - θ||^2 over the simplex: x* = projection_simplex(θ), whose Jacobian is known
    theta = jnp.array([0.9, -0.3, 0.5, 0.05, 1.4, -2.0], dtype)
    x = projection_simplex(theta)
    s = (np.asarray(x) > 0).astype(float)
    expected = np.diag(s) - np.outer(s, s) / s.sum()
    fun = lambda x, theta: 0.5 * jnp.sum((x - theta) ** 2)  # noqa: E731
    for step in (0.3, 1.0):
        T = make_projected_gradient_fixed_point(fun, projection_simplex, step)
        assert_close(T(x, 1.0, theta), x, atol=tol(dtype, 1e-15))
        assert_close(dense_ift(lambda x, t: T(x, 1.0, t) - x, x, theta), expected,
                     atol=tol(dtype, 1e-12))


# --------------------------------------------------------------------------- mirror descent

H64 = np.diag([1.0, 2.0, 3.0, 4.0]) + 0.2


@pytest.mark.slow
def test_mirror_descent_fixed_point_kl_simplex(dtype):
    H = jnp.asarray(H64, dtype)

    def simplex_qp_objective(x, theta):
        return 0.5 * x @ H @ x - theta @ x

    def simplex_qp_closed_form(theta):
        # interior solution of min 1/2 x^T H x - θ^T x s.t. sum(x) = 1: x = H^{-1}(θ - nu 1)
        h_inv = jnp.linalg.inv(H)
        ones = jnp.ones(4, dtype)
        nu = (ones @ h_inv @ theta - 1.0) / (ones @ h_inv @ ones)
        return h_inv @ (theta - nu * ones)

    theta = jnp.array([1.0, 1.2, 0.8, 1.5], dtype)
    x = simplex_qp_closed_form(theta)
    assert np.all(np.asarray(x) > 0)  # interior: the KL geometry reaches it
    h_inv = np.linalg.inv(H64)
    ones = np.ones(4)
    expected = h_inv - np.outer(h_inv @ ones, ones @ h_inv) / (ones @ h_inv @ ones)
    T = make_mirror_descent_fixed_point(simplex_qp_objective, kl_projection_simplex, jnp.log, 0.5)
    assert_close(T(x, 1.0, theta), x, atol=tol(dtype, 1e-14))
    assert_close(dense_ift(lambda x, t: T(x, 1.0, t) - x, x, theta), expected,
                 atol=tol(dtype, 1e-12))

    @custom_fixed_point(T, solve=solve_lu)
    def solver(init, value, theta):
        del init, value
        return simplex_qp_closed_form(theta)

    for jac in (jax.jacfwd, jax.jacrev):
        assert_close(jax.jit(jac(lambda t: solver(x, 1.0, t)))(theta), expected,
                     atol=tol(dtype, 1e-11))


# --------------------------------------------------------------------------- Newton


@pytest.mark.slow
def test_newton_fixed_point_logistic_regression(dtype):
    X, Y = jnp.asarray(X64, dtype), jnp.asarray(Y64, dtype)

    def logistic_objective(w, lam):
        margins = jnp.sign(Y) * (X @ w)
        return jnp.sum(jnp.logaddexp(0.0, -margins)) + 0.5 * lam * jnp.sum(w**2)

    lam = jnp.asarray(0.3, dtype)
    # each check below is one compiled program (eager, the Newton loop and the Hessian
    # solves dispatch op by op)
    w = jax.jit(lambda lam: newton(logistic_objective, jnp.zeros(6, dtype), lam,
                                   tol=tol(dtype, 1e-13), implicit_diff=False).params)(lam)
    T = make_newton_fixed_point(logistic_objective)
    assert_close(jax.jit(T)(w, lam), w, atol=tol(dtype, 1e-13))
    # dT/dx vanishes at the solution: the implicit system is the identity
    assert_close(jax.jit(jax.jacobian(T))(w, lam), np.zeros((6, 6)), atol=tol(dtype, 1e-10))
    # same derivative as the stationarity condition's -H^{-1} d(grad f)/dθ
    hess, cross = jax.jit(lambda w, lam: (
        jax.hessian(logistic_objective)(w, lam),
        jax.jacobian(jax.grad(logistic_objective), 1)(w, lam)))(w, lam)
    expected = -np.linalg.solve(np.asarray(hess, np.float64), np.asarray(cross, np.float64))
    assert_close(dense_ift(lambda x, t: T(x, t) - x, w, lam), expected, atol=tol(dtype, 1e-12))

    # a user-supplied matrix-free Hessian solve gives the same map
    def cg_hessian_solve(x, g, lam):
        def matvec(v):
            return jax.jvp(lambda u: jax.grad(logistic_objective)(u, lam), (x,), (v,))[1]

        return jax.lax.custom_linear_solve(
            matvec, g, lambda mv, b: solve_cg(mv, b, tol=tol(dtype, 1e-14)), symmetric=True
        )

    T_cg = make_newton_fixed_point(logistic_objective, hessian_solve=cg_hessian_solve)
    values = jax.jit(lambda x, lam: (T_cg(x, lam), T(x, lam), jax.jacobian(T_cg, 1)(x, lam),
                                     jax.jacobian(T, 1)(x, lam)))(w + 0.1, lam)
    assert_close(values[0], values[1], atol=tol(dtype, 1e-10))
    assert_close(values[2], values[3], atol=tol(dtype, 1e-9))


# --------------------------------------------------------------------------- block prox


@pytest.mark.slow
def test_block_proximal_gradient_fixed_point_group_lasso(dtype):
    # multi-task group lasso: blocks are the rows of W (one feature across tasks)
    X, Yt = jnp.asarray(X64, dtype), jnp.asarray(YT64, dtype)

    def multitask_loss(W, Yt):
        return 0.5 * jnp.sum((X @ W - Yt) ** 2)

    lam = jnp.asarray(3.0, dtype)
    gram = np.asarray(X.T @ X, np.float64)
    step = 1.0 / float(np.linalg.eigvalsh(gram).max())
    row_prox = jax.vmap(prox_group_lasso, in_axes=(0, None, None))
    W = proximal_gradient(
        multitask_loss,
        row_prox,
        jnp.zeros((6, 3), dtype),
        lam,
        Yt,
        step_size=step,
        tol=tol(dtype, 1e-13),
        maxiter=20000,
        implicit_diff=False,
    ).params
    active = np.linalg.norm(np.asarray(W), axis=1) > 0
    assert 0 < active.sum() < 6
    block_steps = 1.0 / np.diag(gram)  # per-block 1/L_j
    T_block = make_block_proximal_gradient_fixed_point(
        multitask_loss, prox_group_lasso, block_steps
    )
    T_full = make_proximal_gradient_fixed_point(multitask_loss, row_prox, step)
    assert_close(T_block(W, lam, Yt), W, atol=tol(dtype, 1e-12))
    # different conditions, same solution map
    d_block = dense_ift(lambda w, t: T_block(w, t, Yt) - w, W, lam)
    d_full = dense_ift(lambda w, t: T_full(w, t, Yt) - w, W, lam)
    assert_close(d_block, d_full, atol=tol(dtype, 1e-9))
    assert np.abs(np.asarray(d_block)).max() > 1e-3
    # blocks given as a tuple (different shapes allowed) agree with the array form
    as_tuple = tuple(W[j] for j in range(6))
    fun_tuple = lambda blocks, Yt: multitask_loss(jnp.stack(blocks), Yt)  # noqa: E731
    T_tuple = make_block_proximal_gradient_fixed_point(fun_tuple, prox_group_lasso, block_steps)
    assert_close(jnp.stack(T_tuple(as_tuple, lam, Yt)), T_block(W, lam, Yt),
                 atol=tol(dtype, 1e-15))


# --------------------------------------------------------------------------- conic programs


@pytest.mark.slow
def test_conic_residual_map_second_order_cone_closed_form(dtype):
    # min c^T x s.t. ||x|| <= 1, as A x + s = b, s = (1, x) in the second-order cone:
    # x* = -c/||c||, y* = (||c||, c), s* = (1, x*), and dx*/dc = -(I - x x^T)/||c||.
    n = 4
    c = jnp.asarray(CONE_C64, dtype)
    A = jnp.concatenate([jnp.zeros((1, n), dtype), -jnp.eye(n, dtype=dtype)])
    b = jnp.zeros(n + 1, dtype).at[0].set(1.0)
    cones = {"q": [n + 1]}
    norm = jnp.linalg.norm(c)
    x = -c / norm
    y = jnp.concatenate([norm[None], c])
    s = jnp.concatenate([jnp.ones(1, dtype), x])
    z = conic_embed(x, y, s)
    assert z.dtype == dtype
    N = make_conic_residual_map(cones)
    assert_close(N(z, c, A, b), np.zeros(2 * n + 2), atol=tol(dtype, 1e-14))
    for got, want in zip(conic_recover(z, n, cones), (x, y, s)):
        assert got.dtype == dtype
        assert_close(got, want, atol=tol(dtype, 1e-14))
    # homogeneous of degree 1: the Jacobian in z is singular along z, the system stays consistent
    jz = jax.jit(jax.jacobian(N))(z, c, A, b)
    assert_close(jz @ z, np.zeros(2 * n + 2), atol=tol(dtype, 1e-13))
    dz_dc = dense_ift(lambda z, c: N(z, c, A, b), z, c, pinv=True)
    dx_dz = jax.jit(jax.jacobian(lambda z: conic_recover(z, n, cones)[0]))(z)
    dx_dc = np.asarray(dx_dz, np.float64) @ dz_dc
    cd = np.asarray(c, np.float64)
    xd = -cd / np.linalg.norm(cd)
    expected = -(np.eye(n) - np.outer(xd, xd)) / np.linalg.norm(cd)
    assert_close(dx_dc, expected, atol=tol(dtype, 1e-10))


@pytest.mark.slow
def test_cone_projection_and_spec(dtype):
    spec = ConeSpec(zero=1, nonneg=2, soc=(3,), psd=(2,))
    assert spec.dim == 1 + 2 + 3 + 3
    v = jnp.array([5.0, -1.0, 2.0, -2.0, 0.5, 0.5, -1.0, 0.0, 3.0], dtype)
    primal = make_cone_projection(spec)(v)
    dual = make_cone_projection({"z": 1, "l": 2, "q": [3], "s": [2]}, dual=True)(v)
    assert primal.dtype == dual.dtype == dtype
    assert_close(primal[0], 0.0, atol=0)  # the zero cone
    assert_close(dual[0], 5.0, atol=0)  # its dual: the whole line
    assert_close(primal[1:], dual[1:], atol=0)  # the other cones are self-dual
    assert_close(primal[1:3], [0.0, 2.0], atol=0)
    with pytest.raises(ValueError, match="unknown cone"):
        make_cone_projection({"exp": 3})
    with pytest.raises(ValueError, match="shape"):
        make_cone_projection(spec)(jnp.zeros(4, dtype))
