"""jaxopt's calling conventions, exercised on our engine (our own tests, not jaxopt's code).

A jaxopt user ports by changing ``jaxopt.X`` into ``sensitivity.X``; each test here pins one
convention that such code relies on, checked against a closed form or finite differences,
in float32 and float64 where the dtype matters.
"""

import collections
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sensitivity
from sensitivity import implicit_diff as idf

DTYPES = [jnp.float32, jnp.float64]


def _ridge_data(dtype=jnp.float64):
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(10, 3)), dtype)
    y = jnp.asarray(rng.normal(size=10), dtype)
    return X, y


def _ridge_objective(params, lam, X, y):
    residuals = X @ params - y
    return 0.5 * jnp.mean(residuals**2) + 0.5 * lam * jnp.sum(params**2)


def _ridge_closed_form(lam, X, y):
    n, d = X.shape
    return jnp.linalg.solve(X.T @ X / n + lam * jnp.eye(d, dtype=X.dtype), X.T @ y / n)


def _ridge_dsol_dlam(lam, X, y):
    """d/dlam of (X^T X / n + lam I)^{-1} X^T y / n = -(X^T X / n + lam I)^{-1} sol."""
    n, d = X.shape
    sol = _ridge_closed_form(lam, X, y)
    return -jnp.linalg.solve(X.T @ X / n + lam * jnp.eye(d, dtype=X.dtype), sol)


def _ridge_solver(init_params, lam, X, y):
    del init_params
    return _ridge_closed_form(lam, X, y)


# --------------------------------------------------------------------------- custom_root


OptStep = collections.namedtuple("OptStep", "params state")
State = collections.namedtuple("State", "iter_num error aux")


@pytest.mark.parametrize("mode", ["rev", "fwd"])
@pytest.mark.slow
def test_has_aux_namedtuple_keeps_its_type_and_derivative(mode):
    # jaxopt's solvers return OptStep(params, state); the state holds ints, floats and None.
    X, y = _ridge_data()

    @idf.custom_root(jax.grad(_ridge_objective), has_aux=True)
    def solver(init_params, lam, X, y):
        return OptStep(_ridge_solver(init_params, lam, X, y), State(jnp.asarray(7), 0.0, None))

    out = solver(None, 0.5, X, y)
    assert isinstance(out, OptStep) and isinstance(out.state, State)
    jac = jax.jacrev if mode == "rev" else jax.jacfwd
    # the derivatives compiled (eager, the default Krylov solve dispatches op by op)
    got = jax.jit(jac(lambda lam: solver(None, lam, X, y).params))(0.5)
    np.testing.assert_allclose(got, _ridge_dsol_dlam(0.5, X, y), rtol=1e-8, atol=1e-12)
    # jacrev of a whole float OptStep keeps the structure (jaxopt's tests unpack it).
    @idf.custom_root(jax.grad(_ridge_objective), has_aux=True)
    def float_solver(init_params, lam, X, y):
        return OptStep(_ridge_solver(init_params, lam, X, y), None)

    whole = jax.jit(jax.jacrev(float_solver, argnums=1))(None, 0.5, X, y)
    assert isinstance(whole, OptStep)
    np.testing.assert_allclose(whole.params, _ridge_dsol_dlam(0.5, X, y), rtol=1e-8)


@pytest.mark.slow
def test_has_aux_list_and_pytree_aux():
    X, y = _ridge_data()

    @idf.custom_root(jax.grad(_ridge_objective), has_aux=True)
    def solver(init_params, lam, X, y):
        return [_ridge_solver(init_params, lam, X, y), {"n": 3, "trace": jnp.ones(2)}]

    out = solver(None, 0.5, X, y)
    assert isinstance(out, list) and set(out[1]) == {"n", "trace"}
    got = jax.grad(lambda lam: solver(None, lam, X, y)[0].sum())(0.5)
    np.testing.assert_allclose(got, _ridge_dsol_dlam(0.5, X, y).sum(), rtol=1e-8)


def test_init_params_by_keyword_and_keywords_in_any_order():
    X, y = _ridge_data()
    solver = idf.custom_root(jax.grad(_ridge_objective))(_ridge_solver)
    ref = _ridge_closed_form(0.5, X, y)
    np.testing.assert_allclose(solver(init_params=None, lam=0.5, X=X, y=y), ref, rtol=1e-12)
    np.testing.assert_allclose(solver(None, y=y, X=X, lam=0.5), ref, rtol=1e-12)
    got = jax.grad(lambda lam: solver(init_params=None, y=y, lam=lam, X=X)[0])(0.5)
    np.testing.assert_allclose(got, _ridge_dsol_dlam(0.5, X, y)[0], rtol=1e-8)
    got_jit = jax.jit(jax.grad(lambda lam: solver(None, X=X, y=y, lam=lam)[0]))(0.5)
    np.testing.assert_allclose(got_jit, got, rtol=1e-12)


@pytest.mark.slow
def test_solver_with_catch_all_kwargs_maps_them_to_positions_of_grad_f():
    # jax.grad(f) takes its differentiable arguments by position: jaxopt maps the solver's
    # keywords onto F's positions through F's signature.
    X, y = _ridge_data()

    def solver_kw(init_params, **kw):
        return _ridge_solver(init_params, kw["lam"], kw["X"], kw["y"])

    solver = idf.custom_root(jax.grad(_ridge_objective))(solver_kw)
    # compiled (eager, the Krylov solves dispatch op by op)
    got = jax.jit(jax.jacfwd(lambda lam: solver(None, X=X, lam=lam, y=y)))(0.5)
    np.testing.assert_allclose(got, _ridge_dsol_dlam(0.5, X, y), rtol=1e-8)
    got = jax.jit(jax.grad(lambda lam: solver(None, y=y, lam=lam, X=X)[1]))(0.5)
    np.testing.assert_allclose(got, _ridge_dsol_dlam(0.5, X, y)[1], rtol=1e-8)


@pytest.mark.slow
def test_defaults_left_out_reach_the_optimality_function():
    # F has no default for lam; the solver does: the default is bound and differentiated.
    X, y = _ridge_data()
    F = jax.grad(_ridge_objective)

    def solver(init_params, X, y, lam=0.25, maxiter=100):
        del maxiter  # a solver option F does not take: stays the solver's own
        return _ridge_closed_form(lam, X, y)

    def F_reordered(params, X, y, lam):
        return F(params, lam, X, y)

    decorated = idf.custom_root(F_reordered)(solver)
    np.testing.assert_allclose(decorated(None, X, y), _ridge_closed_form(0.25, X, y), rtol=1e-12)
    # The defaulted lam is an argument like any other: d/dy through the solver vs closed form.
    got = jax.jacrev(lambda y: decorated(None, X, y))(y)
    want = jax.jacrev(lambda y: _ridge_closed_form(0.25, X, y))(y)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)


@pytest.mark.slow
def test_reference_signature_callable_signature_and_subfun():
    X, y = _ridge_data()

    def F_catch_all(params, *args):
        return jax.grad(_ridge_objective)(params, *args)

    def reference(params, lam, X, y):
        pass

    class Composite:  # jaxopt's CompositeLinearFunction stands for its subfun
        subfun = staticmethod(reference)

    want = _ridge_dsol_dlam(0.5, X, y)
    for ref in (reference, inspect.signature(reference), Composite()):
        solver = idf.custom_root(F_catch_all, reference_signature=ref)(_ridge_solver)
        got = jax.jacrev(lambda lam: solver(None, X=X, y=y, lam=lam))(0.5)
        np.testing.assert_allclose(got, want, rtol=1e-8)


@pytest.mark.slow
def test_custom_fixed_point_with_wrapped_signature_and_keywords():
    X, y = _ridge_data()
    grad_fun = jax.grad(_ridge_objective)
    fp_fun = functools.wraps(grad_fun)(lambda x, *args: x - grad_fun(x, *args))
    solver = idf.custom_fixed_point(fp_fun)(_ridge_solver)
    got = jax.jacrev(solver, argnums=1)(None, 0.5, X=X, y=y)
    np.testing.assert_allclose(got, _ridge_dsol_dlam(0.5, X, y), rtol=1e-8)


@pytest.mark.slow
def test_root_vjp_and_root_jvp_keywords_as_jaxopt():
    X, y = _ridge_data()
    F = jax.grad(_ridge_objective)
    sol = _ridge_closed_form(0.5, X, y)
    want = _ridge_dsol_dlam(0.5, X, y)
    # compiled (eager, the Krylov solves dispatch op by op)
    jvp = jax.jit(lambda sol: idf.root_jvp(
        optimality_fun=F, sol=sol, args=(0.5, X, y),
        tangents=(1.0, jnp.zeros_like(X), jnp.zeros_like(y)),
    ))(sol)
    np.testing.assert_allclose(jvp, want, rtol=1e-8)
    vjp = jax.jit(jax.vmap(
        lambda g: idf.root_vjp(optimality_fun=F, sol=sol, args=(0.5, X, y), cotangent=g)[0]
    ))(jnp.eye(3))
    np.testing.assert_allclose(vjp, want, rtol=1e-8)


@pytest.mark.slow
def test_forward_mode_and_hessian_still_work_with_keywords():
    # What jaxopt could not do (custom_vjp): jacfwd and hessian through keyword calls.
    X, y = _ridge_data()
    solver = idf.custom_root(jax.grad(_ridge_objective), solve=sensitivity.solve_cg)(_ridge_solver)

    def loss(lam):
        return jnp.sum(solver(init_params=None, X=X, y=y, lam=lam) ** 2)

    h = 1e-4

    @jax.jit  # one compiled program: eager, the CG solves dispatch op by op
    def hessian_and_fd(lam):
        fd = (jax.grad(loss)(lam + h) - jax.grad(loss)(lam - h)) / (2 * h)
        return jax.hessian(loss)(lam), fd

    hess, fd = hessian_and_fd(0.5)
    np.testing.assert_allclose(hess, fd, rtol=1e-6)


def test_solver_closing_over_a_differentiated_preconditioner_raises_closure_error():
    F = lambda x, th: th * x - 1.0  # noqa: E731

    def loss(th):
        solve = functools.partial(sensitivity.solve_cg, M=lambda v: v / th)

        @idf.custom_root(F, solve=solve)
        def solver(init, th):
            return jnp.ones(3) / th

        return solver(None, th).sum()

    with pytest.raises(sensitivity.ClosureError):
        jax.grad(loss)(2.0)


def test_linear_operator_closing_over_a_reverse_mode_value_raises_closure_error():
    b = jnp.ones(3)
    with pytest.raises(sensitivity.ClosureError, match="matvec closes over"):
        jax.grad(lambda th: sensitivity.solve_cg(lambda v: th * v, b).sum())(2.0)
    # Forward mode through the solver is not refused (and is right: d/dth sum(b/th)).
    forward = lambda th: sensitivity.solve_cg(lambda v: th * v, b, on_failure="nan").sum()  # noqa: E731
    got = jax.jacfwd(forward)(2.0)
    np.testing.assert_allclose(got, -3 / 4.0, rtol=1e-8)


# --------------------------------------------------------------------------- linear_solve

from sensitivity import linear_solve as ls  # noqa: E402


def _spd_system(dtype, n=5, seed=0):
    """An SPD system with cond(A) = 1.8e3 in float64 and 51 in float32.

    A residual test at the default tolerance (100 eps ||b||) is attainable only when
    eps * cond(A) is well below it: at cond 1.8e3 float32 BiCGSTAB stops at 1.3 to 1.5
    times the tolerance or just under it, depending on how XLA orders the sums.
    """
    rng = np.random.RandomState(seed)
    A = rng.randn(n, n)
    A = A.T @ A
    if dtype == jnp.float32:
        A = A + 0.3 * np.eye(n)
    return A.astype(dtype), rng.randn(n).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "name", ["solve_lu", "solve_cholesky", "solve_qr", "solve_inv", "solve_iterative_refinement",
             "solve_cg", "solve_gmres", "solve_bicgstab", "solve_normal_cg"]
)
def test_every_jaxopt_solver_on_a_well_posed_spd_system(name, dtype):
    A, b = _spd_system(dtype)
    cond = np.linalg.cond(A.astype(np.float64))
    assert (1e3 < cond < 1e4) if dtype == jnp.float64 else (10 < cond < 100)
    x = getattr(ls, name)(lambda v: jnp.asarray(A) @ v, jnp.asarray(b))
    assert x.dtype == dtype
    exact = np.linalg.solve(A.astype(np.float64), b.astype(np.float64))
    eps = np.finfo(dtype).eps
    # forward error <= cond * (backward error at round-off level, or the solver's tolerance)
    bound = cond * max(1e3 * eps, 2e-5 if dtype == np.float32 else 1e-9)
    assert np.max(np.abs(np.asarray(x, np.float64) - exact)) <= bound * np.max(np.abs(exact))


def test_dense_solve_of_a_singular_matrix_is_still_reported_with_its_cause():
    A = np.diag([1.0, 1.0, 0.0])
    with pytest.raises(sensitivity.LinearSolveError, match="singular"):
        ls.solve_lu(lambda v: A @ v, jnp.array([1.0, 1.0, 1.0]))
    # numerically singular, finite answer: the factorization ran, the residual is too large
    A = np.array([[1.0, 1.0, 0.0], [1.0, 1.0 + 1e-15, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(sensitivity.LinearSolveError, match="singular or too ill-conditioned"):
        ls.solve_qr(lambda v: A @ v, jnp.array([1.0, -1.0, 1.0]))
    with pytest.raises(sensitivity.LinearSolveError, match="factorization failed"):
        ls.solve_cholesky(lambda v: -jnp.eye(3) @ v, jnp.ones(3))


@pytest.mark.slow
def test_solve_scalar_rhs_and_ridge_positionally():
    np.testing.assert_allclose(ls.solve_lu(lambda v: 4.0 * v, jnp.asarray(2.0)), 0.5)
    A, b = _spd_system(np.float64)
    ref = np.linalg.solve(A + 2.0 * np.eye(5), b)
    for name in ["solve_lu", "solve_inv", "solve_qr", "solve_cg", "solve_gmres"]:
        np.testing.assert_allclose(getattr(ls, name)(lambda v: A @ v, b, 2.0), ref, rtol=1e-7)


def test_normal_cg_jaxopt_ridge_placement_and_non_square():
    rng = np.random.RandomState(1)
    A, b = rng.randn(5, 5), rng.randn(5)
    x = ls.solve_normal_cg(lambda v: A @ v, b, ridge=1.0, ridge_placement="normal")
    np.testing.assert_allclose(x, np.linalg.solve(A.T @ A + np.eye(5), A.T @ b), rtol=1e-8)
    x = ls.solve_normal_cg(lambda v: A @ v, b, ridge=1.0)  # ours: (A + I) x = b
    np.testing.assert_allclose(x, np.linalg.solve(A + np.eye(5), b), rtol=1e-8)
    W, c = rng.randn(2, 3), rng.randn(2)
    x = ls.solve_normal_cg(lambda v: W @ v, c, init=jnp.zeros(3))
    np.testing.assert_allclose(x, np.linalg.lstsq(W, c, rcond=None)[0], rtol=1e-8)


def test_iterative_refinement_corrects_an_inexact_inner_solve():
    # Classic use: the inner solve sees a perturbed A (relative 1e-4, like a low-precision
    # copy); the residual is always computed with the exact A.
    A, b = _spd_system(np.float64)
    A_bar = A * (1 + 1e-4 * np.random.RandomState(3).randn(*A.shape))
    x, info = ls.solve_iterative_refinement(lambda v: A @ v, b, maxiter=50, tol=1e-10,
                                            solve=sensitivity.solve_lu,
                                            matvec_bar=lambda v: A_bar @ v, full_output=True)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-7)
    assert bool(info.converged) and int(info.iterations) > 1


# --------------------------------------------------------------------------- projection, prox

from sensitivity import projection as proj  # noqa: E402
from sensitivity import prox  # noqa: E402
from sensitivity import tree_util  # noqa: E402


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.slow
def test_projection_simplex_exact_for_any_magnitude_and_minus_inf(dtype):
    simplex = jax.jit(proj.projection_simplex)  # one program per shape, not one per operation
    np.testing.assert_array_equal(simplex(jnp.array([1e9, 0], dtype)), [1, 0])
    big = 1e17 if dtype == jnp.float64 else 1e30
    np.testing.assert_array_equal(simplex(jnp.array([0, big], dtype)), [0, 1])
    np.testing.assert_allclose(simplex(jnp.array([0, 0, -jnp.inf], dtype)), [0.5, 0.5, 0])
    rng = np.random.RandomState(0)
    for scale in [1.0, 1e9]:
        p = simplex(jnp.asarray(scale * rng.randn(50), dtype), 0.8)
        assert abs(float(jnp.sum(p)) - 0.8) <= 8 * jnp.finfo(dtype).eps and bool(jnp.all(p >= 0))
    # Jacobian with a -inf entry: the sparsemax Jacobian of the finite part, 0 elsewhere.
    J = jax.jit(jax.jacfwd(proj.projection_simplex))(jnp.array([0.3, 0.1, -jnp.inf], dtype))
    np.testing.assert_allclose(J, [[0.5, -0.5, 0], [-0.5, 0.5, 0], [0, 0, 0]])


@pytest.mark.slow
def test_l1_sphere_sparse_simplex_against_brute_force():
    rng = np.random.RandomState(0)
    x = rng.randn(6)
    # compiled, one program per function and shape (eager, each operation compiles alone)
    l1_sphere, simplex = jax.jit(proj.projection_l1_sphere), jax.jit(proj.projection_simplex)
    p = l1_sphere(x, 2.0)
    np.testing.assert_allclose(np.sum(np.abs(p)), 2.0)
    # brute force: the nearest point of the l1 sphere is on the face of x's sign pattern
    signs = np.where(x >= 0, 1.0, -1.0)
    np.testing.assert_allclose(p, signs * simplex(np.abs(x), 2.0))
    np.testing.assert_allclose(l1_sphere(jnp.zeros(4)), 0.25)
    # sparse simplex: best over every support of size <= k (k = 2 of n = 5)
    x = rng.randn(5)
    got = jax.jit(proj.projection_sparse_simplex, static_argnums=1)(x, 2)
    best = None
    for i in range(5):
        for j in range(i, 5):
            idx = sorted({i, j})
            q = np.zeros(5)
            q[idx] = simplex(x[idx])
            d = np.sum((q - x) ** 2)
            best = (d, q) if best is None or d < best[0] else best
    np.testing.assert_allclose(got, best[1], atol=1e-12)


def test_hyperplane_and_halfspace_on_pytrees():
    tree_x = (1.0, {"k1": 2.0, "k2": (2.0, 1.0)}, 2.0)
    tree_a = (1.0, {"k1": 1.0, "k2": (1.0, 0.0)}, 1.0)
    p = proj.projection_hyperplane(tree_x, (tree_a, 1.0))
    # <a, x> = 7, ||a||^2 = 4: x - (7 - 1) / 4 a
    want = (-0.5, {"k1": 0.5, "k2": (0.5, 1.0)}, 0.5)
    for u, v in zip(jax.tree.leaves(p), jax.tree.leaves(want)):
        np.testing.assert_allclose(u, v)
    assert jax.tree.structure(p) == jax.tree.structure(tree_x)
    inside = proj.projection_halfspace(tree_x, (tree_a, 10.0))
    for u, v in zip(jax.tree.leaves(inside), jax.tree.leaves(tree_x)):
        np.testing.assert_allclose(u, v)


@pytest.mark.slow
def test_check_feasible_raises_value_error_and_default_gives_nan():
    A = jnp.array([[1.0, 1.0], [0.0, 1.0], [-1.0, 1.0]])
    b = jnp.array([1.0, 1.0, -1.0])
    params = (A, b, -jnp.eye(2), jnp.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        proj.projection_polyhedron(jnp.zeros(2), params, check_feasible=True)
    assert bool(jnp.all(jnp.isnan(proj.projection_polyhedron(jnp.zeros(2), params))))
    x = jnp.array([1.2, 3.0, 0.7])
    w = jnp.array([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="alpha"):
        proj.projection_box_section(x, (jnp.full(3, 1.5), jnp.ones(3), w, 1.0), True)
    with pytest.raises(ValueError, match="beta"):
        proj.projection_box_section(x, (jnp.zeros(3), jnp.full(3, -0.5), w, 1.0), True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.slow
def test_projection_polyhedron_float32_and_float64_agree_with_kkt(dtype):
    rng = np.random.RandomState(0)
    x = rng.randn(5).astype(dtype)
    A, b = rng.randn(3, 5).astype(dtype), rng.randn(3).astype(dtype)
    G, h = rng.randn(2, 5).astype(dtype), rng.randn(2).astype(dtype)
    # one compiled program for the projection and its Jacobian (eager, the interior point
    # dispatches op by op)
    p, J = jax.jit(lambda x, hp: (proj.projection_polyhedron(x, hp),
                                  jax.jacrev(proj.projection_polyhedron)(x, hp)))(x, (A, b, G, h))
    assert p.dtype == dtype and bool(jnp.all(jnp.isfinite(p)))
    # reference: the active set of this instance is {G_1 y <= h_1}; KKT system in float64
    A64, b64, G64, h64, x64 = (np.asarray(v, np.float64) for v in (A, b, G, h, x))
    C = np.vstack([A64, G64[1:]])
    d = np.concatenate([b64, h64[1:]])
    ref = x64 - C.T @ np.linalg.solve(C @ C.T, C @ x64 - d)
    assert np.all(G64 @ ref <= h64 + 1e-12)
    tol = 1e-3 if dtype == jnp.float32 else 1e-9
    np.testing.assert_allclose(p, ref, rtol=tol, atol=tol)
    P_null = np.eye(5) - C.T @ np.linalg.solve(C @ C.T, C)  # d proj / d x on that face
    np.testing.assert_allclose(J, P_null, atol=10 * tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.slow
def test_transport_projections_marginals_and_sinkhorn(dtype):
    rng = np.random.RandomState(0)
    S = rng.rand(4, 5).astype(dtype)
    a = rng.rand(4); a /= a.sum()  # noqa: E702
    b = rng.rand(5); b /= b.sum()  # noqa: E702
    a, b = a.astype(dtype), b.astype(dtype)
    tol = 1e-5 if dtype == jnp.float32 else 1e-10
    # each projection compiled once (eager, the interior point dispatches op by op)
    plans = {fn: jax.jit(fn)(S, (a, b))
             for fn in (proj.projection_transport, proj.kl_projection_transport)}
    for T in plans.values():
        assert T.dtype == dtype and bool(jnp.all(T >= -tol))
        np.testing.assert_allclose(T.sum(1), a, atol=tol)
        np.testing.assert_allclose(T.sum(0), b, atol=tol)
    # KL: P = diag(u) exp(S) diag(v), the Sinkhorn scaling (reference: plain NumPy iterations)
    K, v = np.exp(S.astype(np.float64)), np.ones(5)
    for _ in range(5000):
        u = a / (K @ v)
        v = b / (K.T @ u)
    np.testing.assert_allclose(plans[proj.kl_projection_transport], u[:, None] * K * v,
                               atol=10 * tol)
    ds = np.array([[0.6, 0.4], [0.4, 0.6]], dtype)
    np.testing.assert_allclose(jax.jit(proj.projection_birkhoff)(ds), ds, atol=tol)
    np.testing.assert_allclose(jax.jit(proj.kl_projection_birkhoff)(ds).sum(0), 1.0, atol=tol)


@pytest.mark.slow
def test_transport_derivatives_against_finite_differences():
    rng = np.random.RandomState(1)
    S, W, D = rng.rand(3, 4), rng.randn(3, 4), rng.randn(3, 4)
    a, b = np.full(3, 1 / 3), np.full(4, 1 / 4)
    h = 1e-6
    for fn in (proj.projection_transport, proj.kl_projection_transport):
        f = lambda S: jnp.sum(W * fn(S, (a, b)))  # noqa: E731

        @jax.jit  # one compiled program: eager, the interior point dispatches op by op
        def derivatives(S):
            fd = (f(S + h * D) - f(S - h * D)) / (2 * h)
            return fd, jax.jvp(f, (S,), (D,))[1], jnp.vdot(jax.grad(f)(S), D)

        fd, forward, reverse = derivatives(S)
        np.testing.assert_allclose(forward, fd, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(reverse, fd, rtol=1e-6, atol=1e-9)


def test_prox_hyperparams_none_and_jaxopt_elastic_net():
    x = jnp.array([-2.0, -0.5, 0.3, 1.5])
    np.testing.assert_allclose(prox.prox_lasso(x), prox.prox_lasso(x, 1.0))
    np.testing.assert_allclose(prox.prox_ridge(x, None, 0.5), x / 1.5)
    np.testing.assert_allclose(
        prox.make_prox_from_projection(proj.projection_simplex)(x), proj.projection_simplex(x))
    # jaxopt's elastic net: lam (||y||_1 + gamma/2 ||y||^2) -> soft(x, lam) / (1 + lam gamma)
    lam, gamma = 0.5, 0.1
    soft = np.sign(x) * np.maximum(np.abs(x) - lam, 0)
    np.testing.assert_allclose(prox.prox_elastic_net(x, (lam, gamma)), soft / (1 + lam * gamma))
    # the flat name keeps independent strengths (l1reg, l2reg)
    np.testing.assert_allclose(sensitivity.prox_elastic_net(x, (lam, gamma)), soft / (1 + gamma))
    tree = {"a": x, "b": 2 * x}
    got = prox.prox_elastic_net(tree, [tree_util.tree_ones_like(tree)] * 2)
    np.testing.assert_allclose(got["b"], prox.prox_elastic_net(2 * x, (1.0, 1.0)))


def test_tree_util_names():
    a = (jnp.array([1.0, 2.0]), {"k": jnp.array(3.0)})
    b = (jnp.array([0.5, -1.0]), {"k": jnp.array(2.0)})
    assert float(tree_util.tree_vdot(a, b)) == 0.5 - 2.0 + 6.0
    assert float(tree_util.tree_l2_norm(a)) == pytest.approx(np.sqrt(14.0))
    assert float(tree_util.tree_inf_norm((a, jnp.array([])))) == 3.0
    np.testing.assert_allclose(tree_util.tree_add_scalar_mul(a, 2.0, b)[0], [2.0, 0.0])
    c = tree_util.tree_where(jnp.asarray(False), a, jnp.array(42.0))
    assert float(c[1]["k"]) == 42.0
    with pytest.raises(ValueError):
        tree_util.broadcast_pytrees([1.0], [2.0, 3.0])


def test_module_paths_cover_jaxopt_public_names():
    # jaxopt 0.8.5's public names, module by module.
    names = {
        "implicit_diff": "custom_root custom_fixed_point root_jvp root_vjp",
        "linear_solve": "solve_lu solve_cholesky solve_qr solve_inv solve_cg solve_normal_cg "
                        "solve_gmres solve_bicgstab solve_iterative_refinement",
        "prox": "make_prox_from_projection prox_none prox_lasso prox_non_negative_lasso "
                "prox_elastic_net prox_group_lasso prox_ridge prox_non_negative_ridge",
        "projection": "projection_non_negative projection_box projection_hypercube "
                      "projection_simplex projection_sparse_simplex projection_l1_sphere "
                      "projection_l1_ball projection_l2_sphere projection_l2_ball "
                      "projection_linf_ball projection_hyperplane projection_halfspace "
                      "projection_affine_set projection_polyhedron projection_box_section "
                      "projection_transport projection_birkhoff kl_projection_transport "
                      "kl_projection_birkhoff",
        "tree_util": "broadcast_pytrees tree_map tree_reduce tree_add tree_sub tree_mul "
                     "tree_scalar_mul tree_add_scalar_mul tree_dot tree_vdot tree_vdot_real "
                     "tree_div tree_sum tree_l2_norm tree_where tree_zeros_like tree_ones_like "
                     "tree_negative tree_inf_norm tree_conj tree_real tree_imag",
    }
    import importlib

    for module, listed in names.items():
        mod = importlib.import_module(f"sensitivity.{module}")
        missing = [n for n in listed.split() if not callable(getattr(mod, n, None))]
        assert not missing, (module, missing)
        assert sorted(mod.__all__) == sorted(listed.split())


@pytest.mark.slow
def test_defaults_reach_an_optimality_function_that_spells_them_differently():
    X, y = _ridge_data()

    def solver(init_params, lam, X, y, reg=0.25):
        return _ridge_closed_form(lam + reg, X, y)

    def F(w, a, b, c, d):  # positional correspondence only, as jaxopt binds it
        return jax.grad(_ridge_objective)(w, a + d, b, c)

    decorated = idf.custom_root(F)(solver)
    got = jax.jacfwd(lambda lam: decorated(None, lam, X, y))(0.25)
    np.testing.assert_allclose(got, _ridge_dsol_dlam(0.5, X, y), rtol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.slow
def test_polyhedron_with_a_vacuous_equality_row(dtype):
    # jaxopt's tests write "no equality" as A = [[0, 0]], b = [0]; the KKT system must not
    # become singular. Reference: the same projection without the equality.
    A, b = jnp.zeros((1, 2), dtype), jnp.zeros(1, dtype)
    G = jnp.array([[-1, -1], [0, 1], [1, -1], [-1, 0], [0, -1]], dtype)
    h = jnp.array([-1, 1, 1, 0, 0], dtype)
    polyhedron = jax.jit(proj.projection_polyhedron)  # compiled once per structure, not per x
    for x in ([0.0, 1.0], [2.0, 3.0], [-1.0, 0.2]):
        x = jnp.asarray(x, dtype)
        got = polyhedron(x, (A, b, G, h))
        want = polyhedron(x, (None, None, G, h))
        assert bool(jnp.all(jnp.isfinite(got)))
        np.testing.assert_allclose(got, want, atol=1e-5 if dtype == jnp.float32 else 1e-10)
    # on the face x2 = 1 the projection of (2, 3) is (2, 1): closed form
    np.testing.assert_allclose(polyhedron(jnp.asarray([2.0, 3.0], dtype), (A, b, G, h)),
                               [2.0, 1.0], atol=1e-5)
