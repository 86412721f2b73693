"""Block conjugate gradients: m right-hand sides of one symmetric positive semi-definite
operator in one shared Krylov space (O'Leary, Linear Algebra Appl. 29, 293 (1980)).

After k iterations block CG has searched the block Krylov space of all m residuals, of
dimension up to m k, so each right-hand side converges in fewer iterations than plain CG
would take alone (measured on packing Hessians: 0.6-0.7× the iterations; the figures are in
benchmarks/README.md, "Elastic tensor"); an iteration costs one product with an ``(…, m)``
block and a few m×m operations.

The form is Dubrulle's DR-BCG (Electron. Trans. Numer. Anal. 12, 216 (2001)): the residual
is carried as ``R = Q C`` with ``Q`` orthonormal, so right-hand sides whose residuals differ
by many orders of magnitude (one column converges long before another) do not make the
m×m systems singular. Rank deficiency (a zero right-hand side, dependent ones, a direction
of the block that has converged) is handled by deflation: each orthonormalization is a
Cholesky QR of the unit-diagonal Gram matrix while that matrix is well conditioned (every
squared pivot above :data:`CHOLESKY_MIN`), else its eigendecomposition (SVQB, Stathopoulos &
Wu, SIAM J. Sci. Comput. 23, 2165 (2002)), where a direction whose eigenvalue is below
:data:`DROP` of the largest leaves the block (its column of ``Q`` and of the search block
become zero, for the rest of the cycle). The m×m system of the step length is solved the
same way (Cholesky, or a pseudo-inverse on the conjugate directions that remain); a
non-finite step is a breakdown and ends the cycle.

Like the engine's Krylov solvers (:func:`sensitivity.solve_cg` and its restart driver), the
loop runs in cycles: each cycle starts from the true residual ``b - A z``, and the solve
ends when every column's true residual meets its tolerance ``‖r_p‖ ≤ tol ‖b_p‖``, when the
iteration budget is spent, or after :data:`MAX_CYCLES` cycles. The null space is the
caller's: a right-hand side orthogonal to the null space of a symmetric operator keeps
every iterate in its range (the congruence-scaled system of the elastic tensor,
:func:`systems.elasticity._strain_solve`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["CHOLESKY_MIN", "DROP", "MAX_CYCLES", "block_cg"]

#: A direction leaves the block when its eigenvalue of the unit-diagonal Gram matrix (of the
#: residual block, or of the search block in the operator's inner product) is below this
#: fraction of the largest: it is numerically a combination of the others.
DROP = 1e-12
#: The m×m factorizations take Cholesky (cheaper than the eigendecomposition: 0.84× the
#: 2D strain solve's time) when every squared pivot of the unit-diagonal Gram matrix is above this;
#: below it (a block near rank deficiency), the eigendecomposition with deflation.
CHOLESKY_MIN = 1e-8
#: The first run plus up to three restarts from the true residual (as the engine's CG).
MAX_CYCLES = 4


def _gram(u, v, form: str = "reduce"):
    """``uᵀ v`` (m, m) for blocks ``u``, ``v`` (m, …). ``form="reduce"``: one reduction over
    the trailing axes of the outer products (XLA:CPU: one fused pass; as a matrix product
    the 2D tensor measured 1.3-1.4× slower); ``"dot"``: a matrix product of the flattened
    blocks (the 3D tensor, m = 6: 0.91-0.98× the time of the reduction)."""
    m = u.shape[0]
    if form == "dot":
        return u.reshape(m, -1) @ v.reshape(m, -1).T
    u, v = u.reshape(m, 1, -1), v.reshape(1, m, -1)
    return jnp.sum(u * v, axis=-1)


def _times(u, c):
    """``u c`` for a block ``u`` (m, …) and an m×m matrix ``c``: row q is
    ``Σ_p c[p, q] u[p]``, a sum of outer products (one fused pass, no concatenation)."""
    shape = (-1,) + (1,) * (u.ndim - 1)
    return sum(c[p].reshape(shape) * u[p][None] for p in range(u.shape[0]))


def _eig_unit_diagonal(g):
    """``(d, lam, vec, keep)``: ``D g D = V Λ Vᵀ`` with ``D = diag(g)^(-1/2)`` (0 on a zero
    diagonal entry), ``keep`` the eigenvalues above :data:`DROP` of the largest."""
    diag = jnp.diagonal(g)
    live = diag > jnp.finfo(g.dtype).tiny * jnp.maximum(jnp.max(diag), 1.0)
    d = jnp.where(live, 1.0 / jnp.sqrt(jnp.where(live, diag, 1.0)), 0.0)
    lam, vec = jnp.linalg.eigh(g * d[:, None] * d[None, :])
    keep = lam > DROP * jnp.max(lam)
    return d, jnp.where(keep, lam, 1.0), vec, keep


def _unit_diagonal_cholesky(g):
    """``(d, l, lt_inv, ok)``: ``D g D = L Lᵀ`` (``D`` as in :func:`_eig_unit_diagonal`),
    ``lt_inv = L⁻ᵀ``; ``ok`` when no column is zero and every squared pivot is above
    :data:`CHOLESKY_MIN` (else ``L`` is the identity and the caller falls back to the
    eigendecomposition)."""
    m = g.shape[0]
    eye = jnp.eye(m, dtype=g.dtype)
    diag = jnp.diagonal(g)
    live = diag > jnp.finfo(g.dtype).tiny * jnp.maximum(jnp.max(diag), 1.0)
    d = jnp.where(live, 1.0 / jnp.sqrt(jnp.where(live, diag, 1.0)), 0.0)
    low = jnp.linalg.cholesky(jnp.where(jnp.all(live), g * d[:, None] * d[None, :], eye))
    pivots = jnp.diagonal(low)
    ok = jnp.all(live) & jnp.all(jnp.isfinite(low)) & jnp.all(pivots * pivots > CHOLESKY_MIN)
    low = jnp.where(ok, low, eye)
    lt_inv = jax.scipy.linalg.solve_triangular(low, eye, lower=True).T
    return d, low, lt_inv, ok


def _orthonormal_factors_eig(g):
    """``(to_q, ζ)`` of the Gram matrix ``g = Wᵀ W`` by its eigendecomposition (SVQB), the
    dropped directions zero."""
    d, lam, vec, keep = _eig_unit_diagonal(g)
    root = jnp.where(keep, jnp.sqrt(lam), 0.0)
    to_q = d[:, None] * vec * jnp.where(keep, 1.0 / jnp.sqrt(lam), 0.0)[None, :]
    undo = jnp.where(d > 0, 1.0 / jnp.where(d > 0, d, 1.0), 0.0)
    return to_q, root[:, None] * vec.T * undo[None, :]


def _orthonormalize(w, gram: str = "reduce"):
    """``(Q, ζ)`` with ``w = Q ζ`` up to the dropped directions: ``Q`` (m, …) orthonormal
    columns (zero where a direction was dropped), ``ζ`` (m, m). Cholesky QR of the
    unit-diagonal Gram matrix when it is well conditioned (every squared pivot above
    :data:`CHOLESKY_MIN`), else its eigendecomposition with deflation (SVQB)."""
    g = _gram(w, w, gram)
    d, low, lt_inv, ok = _unit_diagonal_cholesky(g)

    def cholesky(_):
        return d[:, None] * lt_inv, low.T / d[None, :]

    to_q, zeta = jax.lax.cond(ok, cholesky, _orthonormal_factors_eig, g)
    return _times(w, to_q), zeta


def _pseudo_inverse_eig(g):
    d, lam, vec, keep = _eig_unit_diagonal(g)
    half = d[:, None] * vec * jnp.where(keep, 1.0 / jnp.sqrt(lam), 0.0)[None, :]
    return half @ half.T


def _pseudo_inverse(g):
    """``g⁺`` of a symmetric positive semi-definite m×m ``g``: its inverse by Cholesky when
    well conditioned, else the pseudo-inverse on the directions kept by
    :func:`_eig_unit_diagonal`."""
    d, _, lt_inv, ok = _unit_diagonal_cholesky(g)

    def cholesky(_):
        half = d[:, None] * lt_inv
        return half @ half.T

    return jax.lax.cond(ok, cholesky, _pseudo_inverse_eig, g)


def _column_norms(x):
    """``‖x_p‖`` over the leading axis of a block (m, …)."""
    return jnp.sqrt(jnp.sum((x * x).reshape(x.shape[0], -1), axis=-1))


def block_cg(matvec, b, tol: float, maxiter: int, gram: str = "reduce"):
    """Solve ``A x_p = b_p`` for the m right-hand sides ``b[p]`` of ``b`` (m, …) by block CG.

    Args:
      matvec: ``v -> A v`` on blocks shaped like ``b`` (every ``v[p]`` multiplied by the same
        symmetric positive semi-definite operator).
      b: the right-hand sides on the leading axis (each in the range of ``A``).
      tol: relative tolerance per column: ``‖b_p - A x_p‖ ≤ tol ‖b_p‖``.
      maxiter: the most block iterations, all cycles together.
      gram: how the m×m Gram matrices are formed (:func:`_gram`): ``"reduce"`` or ``"dot"``.

    Returns:
      ``(x, iterations, residual_norm, converged)``: the solutions (m, …), the block
      iterations taken (each iteration advances every column), the true residual norm of
      every column and whether it meets the tolerance.
    """
    target = tol * _column_norms(b)
    maxiter = jnp.asarray(maxiter, jnp.int32)

    def inner(x, r, budget):
        q, c = _orthonormalize(r, gram)

        def cond(state):
            _, _, _, _, c, k, broke = state
            # R = Q C with Q orthonormal: column p of R has the norm of column p of C
            return jnp.any(jnp.linalg.norm(c, axis=0) > target) & (k < budget) & ~broke

        def body(state):
            # the product comes last, so that A s is a loop-carried array: XLA:CPU would
            # otherwise fuse the product into each of its consumers (the m(m+1)/2 dots of
            # sᵀ A s and the updates) and compute it again for every one
            x, q, s, t, c, k, _ = state
            alpha = _pseudo_inverse(_gram(s, t, gram))
            ok = jnp.all(jnp.isfinite(alpha))
            alpha = jnp.where(ok, alpha, 0.0)
            x = x + _times(s, alpha @ c)
            q, zeta = _orthonormalize(q - _times(t, alpha), gram)
            s = q + _times(s, zeta.T)
            return x, q, s, matvec(s), zeta @ c, k + 1, ~ok

        init = (x, q, q, matvec(q), c, jnp.zeros((), jnp.int32), jnp.array(False))
        x, _, _, _, _, k, _ = jax.lax.while_loop(cond, body, init)
        return x, k

    # a cycle runs while a column's true residual misses its target, cycles and iterations
    # remain, and the previous cycle advanced; it ends with the true residual of its x (no
    # product for the zero start, none for a last cycle that would take no iteration)
    def cycle_cond(state):
        _, r, k, cycles, stalled = state
        return (jnp.any(_column_norms(r) > target) & (cycles < MAX_CYCLES) & (k < maxiter)
                & ~stalled)

    def cycle(state):
        x, r, k, cycles, _ = state
        x_new, steps = inner(x, r, maxiter - k)
        return x_new, b - matvec(x_new), k + steps, cycles + 1, steps == 0

    init = (jnp.zeros_like(b), b, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
            jnp.array(False))
    x, r, k, _, _ = jax.lax.while_loop(cycle_cond, cycle, init)
    residual = _column_norms(r)  # of the returned x
    return x, k, residual, residual <= target
