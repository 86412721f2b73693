"""How far to trust an implicit derivative computed at an approximate solution.

Implicit differentiation evaluates the Jacobian of the solution,

    J(x, θ) = -∂₁F(x, θ)⁻¹ ∂₂F(x, θ),

at whatever point ``x̂`` the solver returned, not at the exact root ``x*``. Theorem 1 of
Blondel et al. (NeurIPS 2022, arXiv:2105.15183) bounds the error this makes: if ``∂₁F`` is
well conditioned (``σ_min(∂₁F) ≥ α``), ``∂₁F`` is ``γ``-Lipschitz and ``∂₂F`` is ``β``-Lipschitz in
``x``, and ``‖∂₂F(x*, θ)‖ ≤ R``, then

    ‖J(x̂, θ) − ∂x*(θ)‖ ≤ C ‖x̂ − x*‖,      C = β/α + γR/α².

The error of the derivative falls linearly with the error of the solution (unrolling the
solver's iterations gives no such guarantee). :func:`jacobian_error_estimate` turns this into
numbers for a given ``x̂``, using only ``F`` at ``x̂``:

* the distance to the root, from the residual: ``x̂ − x* ≈ δ = ∂₁F(x̂)⁻¹ F(x̂)`` (one Newton
  step, accurate to second order), so ``‖x̂ − x*‖ ≈ ‖δ‖ ≤ ‖F(x̂)‖ / σ_min(∂₁F(x̂))``;
* a first-order **estimate** of the Jacobian error, the change of ``J`` along that step:
  ``J(x̂) − J(x*) ≈ D_x J(x̂)[δ] = -∂₁F⁻¹ (∂₁(∂₁F)[δ] J + ∂₁(∂₂F)[δ])``;
* the theorem's **bound** ``C ‖F(x̂)‖/σ_min`` with the constants measured locally, along the
  step's direction: ``α = σ_min(∂₁F(x̂))``, ``γ = ‖∂₁(∂₁F)[δ̂]‖₂``, ``β = ‖∂₁(∂₂F)[δ̂]‖_F``,
  ``R = ‖∂₂F(x̂)‖_F``. By construction ``error_estimate ≤ error_bound``.

Both are first-order statements (exact when ``F`` is affine in ``x``, e.g. ridge regression
w.r.t. its regularization): they are reliable once ``x̂`` is in the region where Newton's
method converges, and can be off by a large factor far from the root. Matrix norms are
Frobenius norms (for a single direction ``tangents``, vector 2-norms).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._krylov import solve_gmres

__all__ = ["JacobianErrorEstimate", "jacobian_error_estimate"]


class JacobianErrorEstimate(NamedTuple):
    """What :func:`jacobian_error_estimate` measured (every field a scalar JAX array).

    Attributes:
        residual_norm: ``‖F(x̂, θ)‖``.
        sigma_min: the smallest singular value of ``∂₁F(x̂, θ)`` (``α`` of the theorem).
        distance_estimate: ``‖∂₁F(x̂)⁻¹ F(x̂)‖``, the Newton step: ``≈ ‖x̂ − x*‖``.
        distance_bound: ``‖F(x̂)‖ / σ_min``: ``≥ ‖x̂ − x*‖`` to first order.
        error_estimate: first-order estimate of ``‖J(x̂, θ) − ∂x*(θ)‖`` (Frobenius).
        error_bound: Theorem 1's bound ``C · distance_bound`` with local constants.
        lipschitz_constant: ``C = β/α + γR/α²``.
        jacobian_norm: ``‖J(x̂, θ)‖`` (Frobenius), to turn the errors into relative ones.
    """

    residual_norm: jax.Array
    sigma_min: jax.Array
    distance_estimate: jax.Array
    distance_bound: jax.Array
    error_estimate: jax.Array
    error_bound: jax.Array
    lipschitz_constant: jax.Array
    jacobian_norm: jax.Array

    @property
    def relative_error_estimate(self) -> jax.Array:
        """``error_estimate / ‖J(x̂)‖``."""
        tiny = jnp.finfo(self.jacobian_norm.dtype).tiny
        return self.error_estimate / jnp.maximum(self.jacobian_norm, tiny)


@functools.lru_cache(maxsize=None)
def _default_solve():
    # one object for every call: it is a static argument of the jitted estimate
    return functools.partial(solve_gmres, tol=1e-12, on_failure="warn")


def jacobian_error_estimate(
    optimality_fun: Callable,
    sol_hat: Any,
    args: Sequence[Any],
    *,
    argnums: int | Sequence[int] = 0,
    tangents: Any = None,
    method: str = "auto",
    dense_max: int = 2048,
    solve: Callable | None = None,
    power_iterations: int = 50,
    seed: int = 0,
) -> JacobianErrorEstimate:
    """Estimate the error of the implicit Jacobian evaluated at an approximate solution.

    For ``x̂ = sol_hat`` close to a root ``x*`` of ``F = optimality_fun``, returns the
    distance ``‖x̂ − x*‖`` estimated from the residual, a first-order estimate of
    ``‖J(x̂, θ) − ∂x*(θ)‖`` where ``J(x̂, θ) = -∂₁F(x̂, θ)⁻¹ ∂₂F(x̂, θ)`` is what implicit
    differentiation (:func:`custom_root`, :func:`root_jvp`) computes at ``x̂``, and the bound
    of Theorem 1 of Blondel et al. (2022) with locally measured constants (see the module
    docstring). Use it to decide whether the solver's tolerance is tight enough for the
    derivative you need::

        est = jacobian_error_estimate(F, x_hat, (theta, X, y), argnums=0)
        print(est.relative_error_estimate)   # e.g. 3e-7: the derivative has ~6 digits

    For a fixed point ``x = T(x, θ)`` pass ``F(x, θ) = T(x, θ) − x``.

    Args:
        optimality_fun: ``F(x, *args)`` returning a pytree like ``x``.
        sol_hat: the approximate solution ``x̂`` (a pytree).
        args: tuple of the extra arguments of ``F``.
        argnums: which entries of ``args`` are ``θ`` (an int or a tuple of ints); the others
            are held fixed (data).
        tangents: ``None`` for the full Jacobian with respect to the selected arguments, or
            one direction in their space (a pytree like ``args[argnums]``, a tuple of them for a
            tuple ``argnums``): then the errors are those of the JVP ``J(x̂)·tangents``.
        method: ``"dense"`` materializes ``∂₁F`` (``n × n``) and uses exact linear algebra;
            ``"iterative"`` is matrix-free (``solve`` for the linear systems, power iterations
            for the norms); ``"auto"``: dense when ``x`` has at most ``dense_max`` entries.
        dense_max: the size limit of ``"auto"``.
        solve: linear solver ``solve(matvec, b)`` for the iterative method; default
            :func:`solve_gmres` with ``tol=1e-12`` (a solve that misses it warns).
        power_iterations: iterations of the (inverse) power method, iterative method only.
        seed: seed of the power method's starting vector.

    Returns:
        A :class:`JacobianErrorEstimate`.
    """
    args = tuple(args)
    single = isinstance(argnums, int)
    argnums_t = (argnums,) if single else tuple(argnums)
    for i in argnums_t:
        if not -len(args) <= i < len(args):
            raise ValueError(f"argnums={argnums} is out of range for {len(args)} args")
    argnums_t = tuple(i % len(args) for i in argnums_t)

    if method not in ("auto", "dense", "iterative"):
        raise ValueError(f"method must be 'auto', 'dense' or 'iterative', got {method!r}")
    theta = tuple(args[i] for i in argnums_t)
    n = ravel_pytree(sol_hat)[0].size
    p = ravel_pytree(theta)[0].size
    if tangents is None:
        v_flat = None
    else:
        v_flat = ravel_pytree((tangents,) if single else tuple(tangents))[0]
        if v_flat.size != p:
            raise ValueError(f"tangents has {v_flat.size} entries, the selected arguments have {p}")
    if method == "auto":
        method = "dense" if n <= dense_max else "iterative"
    if method == "iterative" and solve is None:
        solve = _default_solve()
    return _estimate(optimality_fun, argnums_t, method, solve, power_iterations, seed, sol_hat,
                     args, v_flat)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _estimate(optimality_fun, argnums_t, method, solve, power_iterations, seed, sol_hat, args,
              v_flat):
    theta = tuple(args[i] for i in argnums_t)
    x_flat, unravel_x = ravel_pytree(sol_hat)
    t_flat, unravel_t = ravel_pytree(theta)
    p = t_flat.size

    def f(xf, tf):
        full = list(args)
        for i, value in zip(argnums_t, unravel_t(tf)):
            full[i] = value
        return ravel_pytree(optimality_fun(unravel_x(xf), *full))[0]

    if v_flat is None:
        V = jnp.eye(p, dtype=t_flat.dtype)  # one direction per parameter (rows here)
    else:
        V = v_flat.astype(t_flat.dtype)[None, :]

    def b_cols(xf):  # ∂₂F(x) · V, shape (q, n): one row per direction
        return jax.vmap(lambda v: jax.jvp(lambda t: f(xf, t), (t_flat,), (v,))[1])(V)

    def a_mv(xf, u):  # ∂₁F(x) · u
        return jax.jvp(lambda y: f(y, t_flat), (xf,), (u,))[1]

    Fx = f(x_flat, t_flat)
    residual_norm = jnp.linalg.norm(Fx)
    B = b_cols(x_flat)
    R = jnp.linalg.norm(B)
    tiny = jnp.finfo(Fx.dtype).tiny

    if method == "dense":
        A = jax.jacfwd(lambda y: f(y, t_flat))(x_flat)
        sigma_min = jnp.linalg.svd(A, compute_uv=False)[-1]
        delta = jnp.linalg.solve(A, Fx)
        J = -jnp.linalg.solve(A, B.T).T  # (q, n)
        lin_solve = lambda rhs: jnp.linalg.solve(A, rhs)  # noqa: E731
    else:
        mv = lambda u: a_mv(x_flat, u)  # noqa: E731
        mvT = jax.linear_transpose(mv, x_flat)
        mvT1 = lambda w: mvT(w)[0]  # noqa: E731
        lin_solve = lambda rhs: solve(mv, rhs)  # noqa: E731
        delta = lin_solve(Fx)
        J = -jax.lax.map(lin_solve, B)
        # inverse power iteration on (AᵀA)⁻¹: its largest eigenvalue is 1/σ_min².
        v0 = jax.random.normal(jax.random.PRNGKey(seed), x_flat.shape, x_flat.dtype)

        def inv_step(v, _):
            w = lin_solve(solve(mvT1, v))
            return w / jnp.linalg.norm(w), jnp.linalg.norm(w)

        _, norms = jax.lax.scan(inv_step, v0 / jnp.linalg.norm(v0), None, length=power_iterations)
        sigma_min = 1.0 / jnp.sqrt(norms[-1])

    distance_estimate = jnp.linalg.norm(delta)
    distance_bound = residual_norm / jnp.maximum(sigma_min, tiny)

    # D_x J(x̂)[δ] = -∂₁F⁻¹ · d/dt[∂₁F(x̂+tδ) J + ∂₂F(x̂+tδ) V]; J held fixed.
    def g(xf):
        return jax.vmap(lambda j, v: jax.jvp(f, (xf, t_flat), (j, v))[1])(J, V)

    dG = jax.jvp(g, (x_flat,), (delta,))[1]  # (q, n)
    if method == "dense":
        dJ = -jnp.linalg.solve(A, dG.T).T
    else:
        dJ = -jax.lax.map(lin_solve, dG)
    error_estimate = jnp.linalg.norm(dJ)

    # Local constants of the theorem along the step's direction δ̂.
    dhat = delta / jnp.maximum(distance_estimate, tiny)
    beta = jnp.linalg.norm(jax.jvp(b_cols, (x_flat,), (dhat,))[1])
    if method == "dense":
        dA = jax.jvp(lambda y: jax.jacfwd(lambda z: f(z, t_flat))(y), (x_flat,), (dhat,))[1]
        gamma = jnp.linalg.norm(dA, ord=2)
    else:
        def dA_mv(u):
            return jax.jvp(lambda y: a_mv(y, u), (x_flat,), (dhat,))[1]

        dA_mvT = jax.linear_transpose(dA_mv, x_flat)
        v0 = jax.random.normal(jax.random.PRNGKey(seed + 1), x_flat.shape, x_flat.dtype)

        def pow_step(v, _):
            w = dA_mvT(dA_mv(v))[0]
            nw = jnp.linalg.norm(w)
            return w / jnp.maximum(nw, tiny), nw

        _, norms = jax.lax.scan(pow_step, v0 / jnp.linalg.norm(v0), None, length=power_iterations)
        gamma = jnp.sqrt(norms[-1])

    alpha = jnp.maximum(sigma_min, tiny)
    C = beta / alpha + gamma * R / alpha**2
    return JacobianErrorEstimate(
        residual_norm=residual_norm,
        sigma_min=sigma_min,
        distance_estimate=distance_estimate,
        distance_bound=distance_bound,
        error_estimate=error_estimate,
        error_bound=C * distance_bound,
        lipschitz_constant=C,
        jacobian_norm=jnp.linalg.norm(J),
    )
