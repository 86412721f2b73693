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
def test_has_aux_namedtuple_keeps_its_type_and_derivative(mode):
    # jaxopt's solvers return OptStep(params, state); the state holds ints, floats and None.
    X, y = _ridge_data()

    @idf.custom_root(jax.grad(_ridge_objective), has_aux=True)
    def solver(init_params, lam, X, y):
        return OptStep(_ridge_solver(init_params, lam, X, y), State(jnp.asarray(7), 0.0, None))

    out = solver(None, 0.5, X, y)
    assert isinstance(out, OptStep) and isinstance(out.state, State)
    jac = jax.jacrev if mode == "rev" else jax.jacfwd
    got = jac(lambda lam: solver(None, lam, X, y).params)(0.5)
    np.testing.assert_allclose(got, _ridge_dsol_dlam(0.5, X, y), rtol=1e-8, atol=1e-12)
    # jacrev of a whole float OptStep keeps the structure (jaxopt's tests unpack it).
    @idf.custom_root(jax.grad(_ridge_objective), has_aux=True)
    def float_solver(init_params, lam, X, y):
        return OptStep(_ridge_solver(init_params, lam, X, y), None)

    whole = jax.jacrev(float_solver, argnums=1)(None, 0.5, X, y)
    assert isinstance(whole, OptStep)
    np.testing.assert_allclose(whole.params, _ridge_dsol_dlam(0.5, X, y), rtol=1e-8)


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


def test_solver_with_catch_all_kwargs_maps_them_to_positions_of_grad_f():
    # jax.grad(f) takes its differentiable arguments by position: jaxopt maps the solver's
    # keywords onto F's positions through F's signature.
    X, y = _ridge_data()

    def solver_kw(init_params, **kw):
        return _ridge_solver(init_params, kw["lam"], kw["X"], kw["y"])

    solver = idf.custom_root(jax.grad(_ridge_objective))(solver_kw)
    got = jax.jacfwd(lambda lam: solver(None, X=X, lam=lam, y=y))(0.5)
    np.testing.assert_allclose(got, _ridge_dsol_dlam(0.5, X, y), rtol=1e-8)
    got = jax.grad(lambda lam: solver(None, y=y, lam=lam, X=X)[1])(0.5)
    np.testing.assert_allclose(got, _ridge_dsol_dlam(0.5, X, y)[1], rtol=1e-8)


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


def test_custom_fixed_point_with_wrapped_signature_and_keywords():
    X, y = _ridge_data()
    grad_fun = jax.grad(_ridge_objective)
    fp_fun = functools.wraps(grad_fun)(lambda x, *args: x - grad_fun(x, *args))
    solver = idf.custom_fixed_point(fp_fun)(_ridge_solver)
    got = jax.jacrev(solver, argnums=1)(None, 0.5, X=X, y=y)
    np.testing.assert_allclose(got, _ridge_dsol_dlam(0.5, X, y), rtol=1e-8)


def test_root_vjp_and_root_jvp_keywords_as_jaxopt():
    X, y = _ridge_data()
    F = jax.grad(_ridge_objective)
    sol = _ridge_closed_form(0.5, X, y)
    want = _ridge_dsol_dlam(0.5, X, y)
    jvp = idf.root_jvp(
        optimality_fun=F, sol=sol, args=(0.5, X, y),
        tangents=(1.0, jnp.zeros_like(X), jnp.zeros_like(y)),
    )
    np.testing.assert_allclose(jvp, want, rtol=1e-8)
    vjp = jax.vmap(
        lambda g: idf.root_vjp(optimality_fun=F, sol=sol, args=(0.5, X, y), cotangent=g)[0]
    )(jnp.eye(3))
    np.testing.assert_allclose(vjp, want, rtol=1e-8)


def test_forward_mode_and_hessian_still_work_with_keywords():
    # What jaxopt could not do (custom_vjp): jacfwd and hessian through keyword calls.
    X, y = _ridge_data()
    solver = idf.custom_root(jax.grad(_ridge_objective), solve=sensitivity.solve_cg)(_ridge_solver)
    loss = lambda lam: jnp.sum(solver(init_params=None, X=X, y=y, lam=lam) ** 2)
    h = 1e-4
    fd = (jax.grad(loss)(0.5 + h) - jax.grad(loss)(0.5 - h)) / (2 * h)
    np.testing.assert_allclose(jax.hessian(loss)(0.5), fd, rtol=1e-6)
