"""The implicit-differentiation engine against closed forms, finite differences and dense solves."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sensitivity as sn

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(30, 6)))
Y = jnp.asarray(RNG.normal(size=30))
LABELS = jnp.asarray((RNG.normal(size=30) > 0).astype(float))

TIGHT_CG = partial(sn.solve_cg, tol=1e-12)


# --- ridge regression: the paper's first example, closed form available ---


def ridge_grad(w, lam, X, y):
    return X.T @ (X @ w - y) + lam * w


def ridge_closed_form(lam, X=X, y=Y):
    return jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y)


@sn.custom_root(ridge_grad, solve=TIGHT_CG, symmetric=True)
def ridge_solver(init, lam, X, y):
    del init  # a closed form solver: the engine never looks inside it
    return ridge_closed_form(lam, X, y)


@pytest.mark.parametrize("jac", [jax.jacfwd, jax.jacrev], ids=["jacfwd", "jacrev"])
@pytest.mark.slow
def test_ridge_jacobian_matches_closed_form(jac):
    lam = 3.0
    got = jac(ridge_solver, argnums=1)(None, lam, X, Y)
    want = jax.jacfwd(ridge_closed_form)(lam)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_ridge_jacobian_wrt_data_matches_closed_form():
    lam = 1.5
    got = jax.jacrev(ridge_solver, argnums=2)(None, lam, X, Y)
    want = jax.jacrev(lambda X: ridge_closed_form(lam, X, Y))(X)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-11)


@pytest.mark.slow
def test_jvp_and_vjp_agree_with_closed_form():
    lam, dlam = 2.0, 0.7
    _, tangent = jax.jvp(lambda l: ridge_solver(None, l, X, Y), (lam,), (dlam,))
    _, want = jax.jvp(ridge_closed_form, (lam,), (dlam,))
    np.testing.assert_allclose(tangent, want, rtol=1e-9)
    cot = jnp.arange(6.0)
    _, vjp = jax.vjp(lambda l: ridge_solver(None, l, X, Y), lam)
    _, vjp_want = jax.vjp(ridge_closed_form, lam)
    np.testing.assert_allclose(vjp(cot)[0], vjp_want(cot)[0], rtol=1e-9)


@pytest.mark.slow
def test_kwargs_are_differentiated():
    lam = 3.0
    got = jax.jacrev(lambda l: ridge_solver(None, lam=l, X=X, y=Y))(lam)
    np.testing.assert_allclose(got, jax.jacfwd(ridge_closed_form)(lam), rtol=1e-9, atol=1e-12)
    got_y = jax.jacfwd(lambda y: ridge_solver(None, lam, X, y=y))(Y)
    want_y = jax.jacfwd(lambda y: ridge_closed_form(lam, X, y))(Y)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-8, atol=1e-12)


@pytest.mark.slow
def test_vmap_over_theta_under_jit():
    lams = jnp.array([0.5, 1.0, 4.0])
    got = jax.jit(jax.vmap(jax.jacfwd(ridge_solver, argnums=1), (None, 0, None, None)))(
        None, lams, X, Y
    )
    want = jax.vmap(jax.jacfwd(ridge_closed_form))(lams)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_hessian_through_solver_matches_finite_differences_of_gradient():
    def outer(lam):
        w = ridge_solver(None, lam, X, Y)
        return jnp.sum((X @ w - Y) ** 2) + jnp.sum(jnp.sin(w))

    lam, h = 2.0, 1e-5

    @jax.jit  # one compiled program: eager, the CG solves dispatch op by op
    def hessians_and_fd(lam):
        grad = jax.grad(outer)
        fd = (grad(lam + h) - grad(lam - h)) / (2 * h)
        closed = jax.hessian(
            lambda t: jnp.sum((X @ ridge_closed_form(t) - Y) ** 2)
            + jnp.sum(jnp.sin(ridge_closed_form(t)))
        )(lam)
        return jax.hessian(outer)(lam), fd, closed

    hess, fd, closed = hessians_and_fd(lam)
    np.testing.assert_allclose(hess, fd, rtol=1e-6)
    # and against the closed form, exactly
    np.testing.assert_allclose(hess, closed, rtol=1e-8)


# --- logistic regression: no closed form, central finite differences of a tight solve ---


def logistic_grad(w, lam, X, labels):
    logits = X @ w
    return X.T @ (jax.nn.sigmoid(logits) - labels) + lam * w


def newton_logistic(lam, X, labels, iters=30):
    w = jnp.zeros(X.shape[1])
    hess_fn = jax.jacfwd(logistic_grad)
    for _ in range(iters):
        w = w - jnp.linalg.solve(hess_fn(w, lam, X, labels), logistic_grad(w, lam, X, labels))
    return w


@sn.custom_root(logistic_grad, solve=TIGHT_CG, symmetric=True)
def logistic_solver(init, lam, X, labels):
    del init
    return newton_logistic(lam, X, labels)


@pytest.mark.parametrize("jac", [jax.jacfwd, jax.jacrev], ids=["jacfwd", "jacrev"])
@pytest.mark.slow
def test_logistic_regression_matches_central_differences(jac):
    lam, h = 0.8, 1e-5
    got = jac(logistic_solver, argnums=1)(None, lam, X, LABELS)
    fd = (newton_logistic(lam + h, X, LABELS) - newton_logistic(lam - h, X, LABELS)) / (2 * h)
    assert np.linalg.norm(fd) > 1e-3  # the reference is not trivially zero
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-10)


# --- a fixed-point problem ---

A_CONTRACT = jnp.asarray(RNG.normal(size=(5, 5))) / 6.0


def contraction(x, theta):
    return jnp.tanh(A_CONTRACT @ x) + theta


def iterate_fixed_point(theta, iters=200):
    x = jnp.zeros(5)
    for _ in range(iters):
        x = contraction(x, theta)
    return x


@sn.custom_fixed_point(contraction, solve=partial(sn.solve_gmres, tol=1e-12))
def fixed_point_solver(init, theta):
    x = init
    for _ in range(200):
        x = contraction(x, theta)
    return x


@pytest.mark.parametrize("jac", [jax.jacfwd, jax.jacrev], ids=["jacfwd", "jacrev"])
@pytest.mark.slow
def test_fixed_point_matches_central_differences(jac):
    theta = jnp.asarray(RNG.normal(size=5))
    got = jac(fixed_point_solver, argnums=1)(jnp.zeros(5), theta)
    h = 1e-6
    fd = np.stack(
        [
            (iterate_fixed_point(theta + h * e) - iterate_fixed_point(theta - h * e)) / (2 * h)
            for e in np.eye(5)
        ],
        axis=1,
    )
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-9)


# --- pytrees and auxiliary outputs ---


def pytree_grad(params, hyper):
    # f(w, b) = 1/2|X w + b - y|^2 + lam/2 |w|^2 + mu/2 b^2 ; F = ∇f
    r = X @ params["w"] + params["b"] - Y
    return {
        "w": X.T @ r + hyper["lam"] * params["w"],
        "b": jnp.sum(r) + hyper["mu"] * params["b"],
    }


def pytree_closed_form(hyper):
    design = jnp.concatenate([X, jnp.ones((X.shape[0], 1))], axis=1)
    reg = jnp.diag(jnp.concatenate([jnp.full(6, hyper["lam"]), jnp.array([hyper["mu"]])]))
    z = jnp.linalg.solve(design.T @ design + reg, design.T @ Y)
    return {"w": z[:6], "b": z[6]}


@sn.custom_root(pytree_grad, has_aux=True, solve=TIGHT_CG)
def pytree_solver(init, hyper):
    sol = pytree_closed_form(hyper)
    return sol, {"iterations": jnp.asarray(1), "note": jnp.asarray(0.5)}


@pytest.mark.parametrize("jac", [jax.jacfwd, jax.jacrev], ids=["jacfwd", "jacrev"])
@pytest.mark.slow
def test_pytree_solution_and_hyperparameters(jac):
    hyper = {"lam": jnp.asarray(1.3), "mu": jnp.asarray(0.4)}
    init = {"w": jnp.zeros(6), "b": jnp.asarray(0.0)}
    got = jax.jit(jac(lambda h: pytree_solver(init, h)[0]))(hyper)  # compiled: not op by op
    want = jax.jacfwd(pytree_closed_form)(hyper)
    for key_out in ("w", "b"):
        for key_in in ("lam", "mu"):
            np.testing.assert_allclose(got[key_out][key_in], want[key_out][key_in], rtol=1e-8, atol=1e-12)


@pytest.mark.slow
def test_aux_output_passes_through_and_init_gets_zero_derivative():
    hyper = {"lam": jnp.asarray(1.3), "mu": jnp.asarray(0.4)}
    init = {"w": jnp.ones(6), "b": jnp.asarray(2.0)}
    (_, aux), (_, aux_dot) = jax.jvp(lambda h: pytree_solver(init, h), (hyper,), (hyper,))
    assert int(aux["iterations"]) == 1
    assert float(aux_dot["note"]) == 0.0
    d_init = jax.grad(lambda i: jnp.sum(pytree_solver(i, hyper)[0]["w"]))(init)
    assert all(float(jnp.abs(v).max()) == 0.0 for v in jax.tree.leaves(d_init))


# --- the lower-level API and the reports ---


@pytest.mark.slow
def test_root_jvp_and_root_vjp_with_reports():
    lam = 2.0
    sol = ridge_closed_form(lam)
    tangent, info = sn.root_jvp(ridge_grad, sol, (lam, X, Y), (1.0, jnp.zeros_like(X), jnp.zeros_like(Y)), solve=TIGHT_CG, full_output=True)
    np.testing.assert_allclose(tangent, jax.jacfwd(ridge_closed_form)(lam), rtol=1e-9)
    assert bool(info.converged) and int(info.iterations) > 0
    assert float(info.residual_norm) <= float(info.tolerance)
    cot = jnp.ones(6)
    vjps, info = sn.root_vjp(ridge_grad, sol, (lam, X, Y), cot, solve=TIGHT_CG, full_output=True)
    np.testing.assert_allclose(vjps[0], jax.jacfwd(ridge_closed_form)(lam) @ cot, rtol=1e-9)
    assert bool(info.converged)


def test_record_solves_reports_every_solve_inside_transformations():
    with sn.record_solves() as reports:
        jax.jit(jax.jacfwd(ridge_solver, argnums=1))(None, 2.0, X, Y)
    assert len(reports) >= 1
    assert all(bool(np.all(r.converged)) for r in reports)
    assert all(float(np.max(r.residual_norm)) <= 1e-8 for r in reports)


@pytest.mark.slow
def test_unconverged_backward_solve_is_never_silent():
    starved = partial(sn.solve_cg, maxiter=1, tol=1e-14)

    @sn.custom_root(ridge_grad, solve=starved)
    def solver(init, lam, X, y):
        return ridge_closed_form(lam, X, y)

    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(jax.jacrev(solver, argnums=1)(None, 2.0, X, Y))

    @sn.custom_root(ridge_grad, solve=partial(starved, on_failure="nan"))
    def solver_nan(init, lam, X, y):
        return ridge_closed_form(lam, X, y)

    assert bool(jnp.all(jnp.isnan(jax.jacfwd(solver_nan, argnums=1)(None, 2.0, X, Y))))


def test_closing_over_a_differentiated_value_is_an_error():
    def outer(lam):
        @sn.custom_root(lambda w, X, y: X.T @ (X @ w - y) + lam * w, solve=TIGHT_CG)
        def solver(init, X, y):
            return ridge_closed_form(lam, X, y)

        return solver(None, X, Y)

    for transform in (jax.jacfwd, jax.jacrev, lambda f: jax.jit(jax.grad(lambda l: f(l).sum()))):
        with pytest.raises(sn.ClosureError, match="Pass that value as an argument"):
            transform(outer)(2.0)


def test_signature_mismatch_is_reported():
    with pytest.raises(TypeError, match="do not match the optimality function"):
        ridge_solver(None, 1.0, X, Y, 5)


# --- a singular system: a translation-invariant chain of springs ---

N_SPRINGS = 7
K_SPRINGS = jnp.asarray(RNG.uniform(0.5, 2.0, size=N_SPRINGS - 1))


def spring_energy(x, rest):
    return 0.5 * jnp.sum(K_SPRINGS * (jnp.diff(x) - rest) ** 2)


spring_force = jax.grad(spring_energy)
TRANSLATION = jnp.ones((1, N_SPRINGS))


def spring_solution(rest):
    x = jnp.concatenate([jnp.zeros(1), jnp.cumsum(rest)])
    return x - x.mean()  # the gauge: zero mean


def _spring_reference(rest):
    """∂x*/∂rest by a dense pseudo-inverse of the (singular) Hessian."""
    x = spring_solution(rest)
    hess = jax.hessian(spring_energy)(x, rest)
    cross = jax.jacfwd(spring_force, argnums=1)(x, rest)
    return -np.linalg.pinv(np.asarray(hess)) @ np.asarray(cross)


@pytest.mark.parametrize("solver", ["cg", "minres", "gmres", "lstsq"])
@pytest.mark.slow
def test_singular_spring_chain_with_nullspace_both_modes(solver):
    solve = partial(sn.get_solver(solver), tol=1e-12, nullspace=TRANSLATION)

    @sn.custom_root(spring_force, solve=solve, symmetric=True)
    def relax(init, rest):
        return spring_solution(rest)

    rest = jnp.asarray(RNG.uniform(0.8, 1.2, size=N_SPRINGS - 1))
    want = _spring_reference(rest)
    # A cotangent with a component along the translation: finite, minimum-norm answer.
    cot = jnp.arange(N_SPRINGS, dtype=float) + 3.0
    # one compiled program (eager, the Krylov solves dispatch op by op)
    jac_fwd, jac_rev, grad = jax.jit(lambda rest: (
        jax.jacfwd(relax, argnums=1)(None, rest), jax.jacrev(relax, argnums=1)(None, rest),
        jax.grad(lambda r: relax(None, r) @ cot)(rest)))(rest)
    np.testing.assert_allclose(jac_fwd, want, atol=1e-9)
    np.testing.assert_allclose(jac_rev, want, atol=1e-9)
    assert bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(grad, want.T @ np.asarray(cot), atol=1e-9)


@pytest.mark.slow
def test_same_jacobian_as_jaxopt_on_the_same_problem():
    jaxopt = pytest.importorskip("jaxopt")

    # jaxopt's default tol=1e-5 would differ from the exact answer by ~1e-5 relative.
    jaxopt_cg = partial(jaxopt.linear_solve.solve_cg, tol=1e-12)

    @jaxopt.implicit_diff.custom_root(ridge_grad, solve=jaxopt_cg)
    def jaxopt_ridge(init, lam, X, y):
        del init
        return ridge_closed_form(lam, X, y)

    lam = 0.7
    want = jax.jacrev(jaxopt_ridge, argnums=1)(None, lam, X, Y)
    got_rev = jax.jacrev(ridge_solver, argnums=1)(None, lam, X, Y)
    got_fwd = jax.jacfwd(ridge_solver, argnums=1)(None, lam, X, Y)  # jaxopt cannot do this one
    np.testing.assert_allclose(got_rev, want, rtol=1e-8)
    np.testing.assert_allclose(got_fwd, want, rtol=1e-8)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jacfwd(jaxopt_ridge, argnums=1)(None, lam, X, Y)


@pytest.mark.slow
def test_reverse_mode_when_a_block_of_F_does_not_depend_on_theta():
    # Equality-constrained least squares, KKT residuals (∇L, A x - b): the second block
    # ignores y, so its part of ∂₂F·dy is a constant zero (custom_linear_solve cannot
    # transpose such a right-hand side unless it is flattened).
    A = jnp.asarray(RNG.normal(size=(2, 6)))
    b = jnp.asarray(RNG.normal(size=2))

    def kkt(z, y):
        x, nu = z
        return (X.T @ (X @ x - y) + A.T @ nu, A @ x - b)

    def dense_kkt(y):
        n = X.shape[1]
        K = jnp.block([[X.T @ X, A.T], [A, jnp.zeros((2, 2))]])
        z = jnp.linalg.solve(K, jnp.concatenate([X.T @ y, b]))
        return z[:n], z[n:]

    @sn.custom_root(kkt, solve=partial(sn.solve_gmres, tol=1e-12))
    def solver(init, y):
        return dense_kkt(y)

    got = jax.jacrev(lambda y: solver(None, y)[0])(Y)
    np.testing.assert_allclose(got, jax.jacfwd(lambda y: dense_kkt(y)[0])(Y), rtol=1e-8, atol=1e-11)


@pytest.mark.slow
def test_symmetric_default_is_minres_and_handles_an_indefinite_jacobian():
    # F = ∇f at a saddle point of f(x, θ) = ½ xᵀ D x - θᵀx with D indefinite: GMRES would do,
    # but the symmetric default must also get it right.
    D = jnp.diag(jnp.array([3.0, -2.0, 1.0, -0.5]))

    @sn.custom_root(lambda x, theta: D @ x - theta, symmetric=True)
    def saddle(init, theta):
        return theta / jnp.diag(D)

    theta = jnp.arange(1.0, 5.0)
    with sn.record_solves() as reports:
        jac = jax.jacrev(saddle, argnums=1)(None, theta)
    np.testing.assert_allclose(jac, jnp.diag(1 / jnp.diag(D)), rtol=1e-10)
    assert len(reports) > 0 and all(bool(np.all(r.converged)) for r in reports)
