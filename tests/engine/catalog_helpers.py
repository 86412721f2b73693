"""Shared helpers for the catalog tests (operators, optimality conditions, solvers)."""

import jax
import jax.numpy as jnp
import numpy as np


def fd_jacobian(fun, theta, h=1e-6):
    """Central finite-difference Jacobian of ``fun`` at array ``theta`` (traceable: vmapped).

    Returns an array of shape ``out.shape + theta.shape`` (like ``jax.jacfwd``).
    """
    theta = jnp.asarray(theta)
    basis = jnp.eye(theta.size, dtype=theta.dtype).reshape((theta.size,) + theta.shape)
    cols = jax.vmap(lambda e: (fun(theta + h * e) - fun(theta - h * e)) / (2 * h))(basis)
    out_ndim = cols.ndim - 1
    cols = jnp.moveaxis(cols, 0, -1)  # (*out_shape, size)
    return cols.reshape(cols.shape[:out_ndim] + theta.shape)


def central_fd_jacobian(fun, theta, h=1e-6):
    """:func:`fd_jacobian` in one jitted call."""
    return jax.jit(lambda t: fd_jacobian(fun, t, h))(jnp.asarray(theta))


def pointwise_fd_jacobian(evaluate, theta, h=1e-6):
    """:func:`fd_jacobian` by calls of ``evaluate`` (a compiled function, e.g. ``jax.jit(fun)``)
    at each ``theta +- h e_i``: for a solver, no vmapped copy of its loop to compile when its
    forward program is compiled anyway. Same shape as :func:`fd_jacobian`."""
    theta = jnp.asarray(theta)
    basis = np.eye(theta.size).reshape((theta.size,) + theta.shape).astype(theta.dtype)
    cols = [np.asarray((evaluate(theta + h * e) - evaluate(theta - h * e)) / (2 * h))
            for e in basis]
    return np.moveaxis(np.stack(cols), 0, -1).reshape(cols[0].shape + theta.shape)


def jacobians_and_pointwise_fd(fun, theta, h=1e-6, evaluate=None):
    """``(jacfwd, jacrev)`` of ``fun`` at ``theta`` compiled together once, and the central FD
    of :func:`pointwise_fd_jacobian` by calls of ``evaluate`` (default ``jax.jit(fun)``). For
    an iterative ``fun`` (a solver) this compiles faster than :func:`jacobians_and_fd`,
    whose vmapped copy of the loop costs as much as a Jacobian (1.9 s of 4.6 s for a
    semidefinite program)."""
    theta = jnp.asarray(theta)
    jac_fwd, jac_rev = jax.jit(lambda t: (jax.jacfwd(fun)(t), jax.jacrev(fun)(t)))(theta)
    fd = pointwise_fd_jacobian(jax.jit(fun) if evaluate is None else evaluate, theta, h)
    return jac_fwd, jac_rev, fd


def jacobians_and_fd(fun, theta, h=1e-6):
    """``(jacfwd, jacrev, central FD)`` of ``fun`` at ``theta``, compiled together once."""
    return jax.jit(lambda t: (jax.jacfwd(fun)(t), jax.jacrev(fun)(t), fd_jacobian(fun, t, h)))(
        jnp.asarray(theta)
    )


def jacobians(fun, theta):
    """``(jacfwd, jacrev)`` of ``fun`` at ``theta``, each jitted once."""
    return jax.jit(jax.jacfwd(fun))(theta), jax.jit(jax.jacrev(fun))(theta)


def assert_close(actual, desired, atol, rtol=0.0, what=""):
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values {actual}"
    np.testing.assert_allclose(actual, desired, atol=atol, rtol=rtol, err_msg=what)
