"""Krylov solvers: CG, CG on the normal equations, BiCGSTAB, GMRES, MINRES.

Matrix-free: each iteration costs one or two products with ``matvec`` (and the
preconditioner ``M``); the operator is never materialized. Each method is an inner loop
handed to the restart driver of :mod:`sensitivity._linear_solve`, which recomputes the true
residual and restarts when the recurrence claims a convergence it does not confirm. The
keyword options and the report are those of :mod:`sensitivity._linear_solve`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ._linear_solve import (
    _HIGHEST,
    _dot,
    _drive,
    _finish,
    _linear_solver,
    _norm,
    _Options,
    _problem,
    _Problem,
    _safe_div,
)

__all__ = ["solve_cg", "solve_normal_cg", "solve_bicgstab", "solve_gmres", "solve_minres"]

_MAX_CYCLES = 4  # CG / BiCGSTAB / MINRES: the first run plus up to three restarts


# ---------------------------------------------------------------------------------------
# conjugate gradients


def _cg_inner(prob: _Problem):
    # The driver hands over x and r in range(P). Projecting the updated residual,
    # r <- P(r - alpha A p), and z = P M r keeps r, z and p in range(P); then A P p = A p
    # (to round-off), and p.(A p) = p.(P A p): one projection for the operator and one
    # for the preconditioner per iteration, instead of P A P and P M P. (Projecting r
    # itself rather than A p matters: r shrinks by many orders of magnitude, and the
    # null-space round-off it would otherwise accumulate from its early, large values
    # would be amplified by M relative to the small late r.)
    A, Mp, tol_abs, P = prob.A_orig, prob.precond_range, prob.tol_abs, prob.P
    plain = prob.M_range is None

    def norm_r(r, rz):
        # without a preconditioner r.z is r.r: reuse it (one reduction fewer per step)
        return jnp.sqrt(rz) if plain else _norm(r)

    def inner(x, r, budget):
        z = Mp(r)
        rz = _dot(r, z)

        def cond(c):
            x, r, p, rz, rnorm, k, broke = c
            return (rnorm > tol_abs) & (k < budget) & ~broke

        def body(c):
            x, r, p, rz, _, k, _ = c
            Ap = A(p)
            pAp = _dot(p, Ap)
            alpha = _safe_div(rz, pAp)
            x = x + alpha * p
            r = P(r - alpha * Ap)
            z = Mp(r)
            rz_new = _dot(r, z)
            beta = _safe_div(rz_new, rz)
            p = z + beta * p
            broke = (pAp == 0) | (rz_new == 0) | ~jnp.isfinite(rz_new)
            return x, r, p, rz_new, norm_r(r, rz_new), k + 1, broke

        c = (x, r, z, rz, norm_r(r, rz), jnp.zeros((), jnp.int32), rz == 0)
        x, _, _, _, _, k, _ = lax.while_loop(cond, body, c)
        return x, k

    return inner


@_linear_solver()
def solve_cg(matvec: Any, b: Any, ridge: Any, init: Any, opts: _Options):
    """Conjugate gradients for a symmetric positive (semi-)definite operator.

    One iteration is one matvec (plus one preconditioner application). ``M`` must be
    symmetric positive definite. See the module docstring for the common arguments.
    """
    prob = _problem("solve_cg", matvec, b, ridge, init, opts)
    x, k, r = _drive(prob, _cg_inner(prob), _MAX_CYCLES)
    return _finish(prob, x, k, opts.on_failure, opts.full_output, r_proj=r)


# ---------------------------------------------------------------------------------------
# CG on the normal equations


@_linear_solver(ridge_placement="operator")
def solve_normal_cg(matvec: Any, b: Any, ridge: Any, init: Any, opts: _Options,
                    ridge_placement: str):
    """CG on the normal equations ``A^T A x = A^T b``, for a general square operator.

    ``A^T`` is obtained by :func:`jax.linear_transpose` of ``matvec`` (which must be
    linear and transposable). The ridge applies to ``A`` (``(A + ridge I) x = b``, as for
    every solver here), and the stopping test is on the residual of the original system,
    ``||b - A x||``, tracked by recurrence and recomputed at the end. One iteration is one
    ``A`` and one ``A^T`` product. ``M`` preconditions ``A^T A`` (symmetric positive
    definite).

    jaxopt's behaviour is available with ``ridge_placement="normal"``: CG on
    ``(A^T A + ridge I) x = A^T b`` (ridge on the normal operator, tolerance on the normal
    residual). A non-square ``A`` (``matvec`` maps ``init``-shaped pytrees to ``b``-shaped
    ones) also takes that route and needs ``init`` to know the shape of ``x``, as in jaxopt.
    """
    if ridge_placement not in ("operator", "normal"):
        raise ValueError(
            f"ridge_placement must be 'operator' ((A + ridge I) x = b) or 'normal' "
            f"((A^T A + ridge I) x = A^T b, jaxopt's), got {ridge_placement!r}")
    square = init is None or (
        jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(b)
        and all(jnp.shape(u) == jnp.shape(v)
                for u, v in zip(jax.tree_util.tree_leaves(init), jax.tree_util.tree_leaves(b))))
    if ridge_placement == "normal" or not square:
        if not square and ridge is not None and ridge_placement == "operator":
            raise ValueError("solve_normal_cg: a ridge on a non-square operator needs "
                             "ridge_placement='normal' ((A^T A + ridge I) x = A^T b)")
        like = b if init is None else init
        At_lin = jax.linear_transpose(matvec, like)

        def At(y):
            return At_lin(y)[0]

        return solve_cg(lambda x: At(matvec(x)), At(b), ridge, init, **opts._asdict())
    prob = _problem("solve_normal_cg", matvec, b, ridge, init, opts)
    A, Mp, tol_abs = prob.A, prob.precond, prob.tol_abs
    At_lin = jax.linear_transpose(A, jax.ShapeDtypeStruct(prob.b.shape, prob.dtype))

    def At(y):
        return At_lin(y)[0]

    def inner(x, r, budget):
        s = At(r)
        z = Mp(s)
        sz = _dot(s, z)

        def cond(c):
            x, r, p, sz, k, broke = c
            return (_norm(r) > tol_abs) & (k < budget) & ~broke

        def body(c):
            x, r, p, sz, k, _ = c
            q = A(p)
            qq = _dot(q, q)
            alpha = _safe_div(sz, qq)
            x = x + alpha * p
            r = r - alpha * q
            s = At(r)
            z = Mp(s)
            sz_new = _dot(s, z)
            p = z + _safe_div(sz_new, sz) * p
            broke = (qq == 0) | (sz_new == 0) | ~jnp.isfinite(sz_new)
            return x, r, p, sz_new, k + 1, broke

        c = (x, r, z, sz, jnp.zeros((), jnp.int32), sz == 0)
        x, _, _, _, k, _ = lax.while_loop(cond, body, c)
        return x, k

    x, k, r = _drive(prob, inner, _MAX_CYCLES)
    return _finish(prob, x, k, opts.on_failure, opts.full_output, r_proj=r)


# ---------------------------------------------------------------------------------------
# BiCGSTAB


@_linear_solver()
def solve_bicgstab(matvec: Any, b: Any, ridge: Any, init: Any, opts: _Options):
    """BiCGSTAB (van der Vorst) for a general square operator, right-preconditioned.

    One iteration is two matvecs (and two preconditioner applications). On a breakdown
    (``rho = 0`` or ``omega = 0``) it restarts from the current iterate with the true
    residual as the new shadow vector.
    """
    prob = _problem("solve_bicgstab", matvec, b, ridge, init, opts)
    A, Mp, tol_abs = prob.A, prob.precond, prob.tol_abs

    def inner(x, r, budget):
        rhat = r
        one = jnp.ones((), prob.dtype)

        def cond(c):
            x, r, p, v, rho, alpha, omega, k, broke = c
            return (_norm(r) > tol_abs) & (k < budget) & ~broke

        def body(c):
            x, r, p, v, rho, alpha, omega, k, _ = c
            rho_new = _dot(rhat, r)
            beta = _safe_div(rho_new, rho) * _safe_div(alpha, omega)
            p = r + beta * (p - omega * v)
            phat = Mp(p)
            v = A(phat)
            rv = _dot(rhat, v)
            alpha = _safe_div(rho_new, rv)
            s = r - alpha * v
            shat = Mp(s)
            t = A(shat)
            omega = _safe_div(_dot(t, s), _dot(t, t))
            x = x + alpha * phat + omega * shat
            r = s - omega * t
            broke = ((rho_new == 0) | (rv == 0) | (omega == 0)
                     | ~jnp.isfinite(omega) | ~jnp.isfinite(alpha))
            return x, r, p, v, rho_new, alpha, omega, k + 1, broke

        z = jnp.zeros_like(r)
        c = (x, r, z, z, one, one, one, jnp.zeros((), jnp.int32), jnp.array(False))
        out = lax.while_loop(cond, body, c)
        return out[0], out[7]

    x, k, r = _drive(prob, inner, _MAX_CYCLES)
    return _finish(prob, x, k, opts.on_failure, opts.full_output, r_proj=r)


# ---------------------------------------------------------------------------------------
# GMRES


def _back_substitution(R, g):
    """Solve the upper-triangular ``R y = g`` (small; a loop compiles faster than trsv)."""
    m = g.shape[0]

    def step(t, y):
        i = m - 1 - t
        return y.at[i].set((g[i] - _dot(R[i], y)) / R[i, i])

    return lax.fori_loop(0, m, step, jnp.zeros_like(g))


@_linear_solver(restart=20)
def solve_gmres(matvec: Any, b: Any, ridge: Any, init: Any, opts: _Options, restart: int):
    """Restarted GMRES(``restart``) for a general square operator, right-preconditioned.

    Arnoldi with classical Gram-Schmidt applied twice, Givens rotations for the small
    least-squares problem. With right preconditioning the residual it minimizes is the
    true 2-norm residual. One iteration is one Arnoldi step (one matvec); ``maxiter``
    counts them over all restart cycles (default ``10 * n``); every cycle ends with the
    true residual recomputed.
    """
    prob = _problem("solve_gmres", matvec, b, ridge, init, opts)
    A, Mp, tol_abs, dtype = prob.A, prob.precond, prob.tol_abs, prob.dtype
    m = max(1, min(int(restart), prob.n))
    n = prob.n
    tiny = jnp.finfo(dtype).tiny

    def inner(x, r, budget):
        beta = _norm(r)
        V = jnp.zeros((m + 1, n), dtype).at[0].set(_safe_div(r, beta))
        R = jnp.zeros((m + 1, m), dtype)
        Om = jnp.eye(m + 1, dtype=dtype)  # product of the Givens rotations so far
        g = jnp.zeros((m + 1,), dtype).at[0].set(beta)

        def cond(c):
            V, R, Om, g, j, broke = c
            return (j < m) & (j < budget) & (jnp.abs(g[j]) > tol_abs) & ~broke

        def body(c):
            V, R, Om, g, j, _ = c
            w = A(Mp(V[j]))
            h = jnp.matmul(V, w, precision=_HIGHEST)
            w = w - jnp.matmul(h, V, precision=_HIGHEST)
            h2 = jnp.matmul(V, w, precision=_HIGHEST)
            w = w - jnp.matmul(h2, V, precision=_HIGHEST)
            h = h + h2
            hn = _norm(w)
            V = V.at[j + 1].set(jnp.where(hn > tiny, w / jnp.where(hn > tiny, hn, 1), 0))
            col = h.at[j + 1].set(hn)

            col = jnp.matmul(Om, col, precision=_HIGHEST)  # previous rotations
            a, bb = col[j], col[j + 1]
            den = jnp.hypot(a, bb)
            c_j = jnp.where(den > 0, a / jnp.where(den > 0, den, 1), 1.0)
            s_j = jnp.where(den > 0, bb / jnp.where(den > 0, den, 1), 0.0)
            col = col.at[j].set(den).at[j + 1].set(0.0)
            rows = lax.dynamic_slice_in_dim(Om, j, 2, axis=0)
            G = jnp.stack([jnp.stack([c_j, s_j]), jnp.stack([-s_j, c_j])])
            Om = lax.dynamic_update_slice_in_dim(
                Om, jnp.matmul(G, rows, precision=_HIGHEST), j, axis=0)
            g = g.at[j + 1].set(-s_j * g[j]).at[j].set(c_j * g[j])
            R = R.at[:, j].set(col)
            broke = (hn <= tiny) | ~jnp.isfinite(hn)
            return V, R, Om, g, j + 1, broke

        c = (V, R, Om, g, jnp.zeros((), jnp.int32), beta == 0)
        V, R, Om, g, j, _ = lax.while_loop(cond, body, c)
        used = jnp.arange(m) < j
        diag = jnp.diagonal(R[:m, :m])
        good = used & (diag != 0)
        Rm = jnp.where(used[None, :] & used[:, None], R[:m, :m], 0.0)
        Rm = Rm.at[jnp.arange(m), jnp.arange(m)].set(jnp.where(good, diag, 1.0))
        gm = jnp.where(good, g[:m], 0.0)
        y = _back_substitution(Rm, gm)
        x = x + Mp(jnp.matmul(y, V[:m], precision=_HIGHEST))
        return x, j

    x, k, r = _drive(prob, inner, jnp.iinfo(jnp.int32).max)
    return _finish(prob, x, k, opts.on_failure, opts.full_output, r_proj=r)


# ---------------------------------------------------------------------------------------
# MINRES


@_linear_solver()
def solve_minres(matvec: Any, b: Any, ridge: Any, init: Any, opts: _Options):
    """MINRES (Paige & Saunders 1975) for a symmetric, possibly indefinite or singular,
    operator; ``M`` must be symmetric positive definite.

    The Lanczos/QR recurrences follow Paige & Saunders (as in SciPy's ``minres``); in
    addition the 2-norm residual vector is carried along by recurrence (``A w`` vectors),
    so the stopping test is the documented 2-norm test even when preconditioned (the
    preconditioned method itself minimizes the ``M``-norm of the residual). One iteration
    is one matvec. On a singular system without ``nullspace`` MINRES still returns a
    least-squares iterate; pass ``nullspace`` for the minimum-norm, gauge-fixed answer.
    """
    prob = _problem("solve_minres", matvec, b, ridge, init, opts)
    # r from the driver is in range(P), hence so are the Lanczos vectors, w, A w and x:
    # the operator needs one projection per application (A_range: P A, not P A P). The
    # preconditioner keeps both (P M P): the Lanczos vector r2 it is applied to comes out
    # of a three-term recurrence with cancellation, and M would amplify its null-space
    # round-off (measured: up to a third more iterations with P M alone).
    A, Mp = prob.A_range, prob.precond
    tol_abs, dtype = prob.tol_abs, prob.dtype
    eps = jnp.finfo(dtype).eps

    def inner(x, r, budget):
        y = Mp(r)
        beta1 = jnp.sqrt(_dot(r, y))
        zero = jnp.zeros((), dtype)
        zv = jnp.zeros_like(r)
        # carry: x, res, r1, r2, y, beta, oldb, dbar, epsln, phibar, cs, sn, tnorm2,
        #        w, w2, Aw, Aw2, k, stop
        c0 = dict(x=x, res=r, r1=r, r2=r, y=y, beta=beta1, oldb=zero, dbar=zero,
                  epsln=zero, phibar=beta1, cs=-jnp.ones((), dtype), sn=zero, tnorm2=zero,
                  w=zv, w2=zv, Aw=zv, Aw2=zv, k=jnp.zeros((), jnp.int32),
                  stop=~(beta1 > 0))

        def cond(c):
            return (_norm(c["res"]) > tol_abs) & (c["k"] < budget) & ~c["stop"]

        def body(c):
            beta, oldb = c["beta"], c["oldb"]
            s = _safe_div(jnp.ones((), dtype), beta)
            v = s * c["y"]
            Av = A(v)
            y = Av - _safe_div(beta, oldb) * c["r1"]
            alfa = _dot(v, y)
            y = y - _safe_div(alfa, beta) * c["r2"]
            r1 = c["r2"]
            r2 = y
            y = Mp(r2)
            oldb = beta
            beta = jnp.sqrt(_dot(r2, y))
            tnorm2 = c["tnorm2"] + alfa ** 2 + oldb ** 2 + beta ** 2
            cs, sn, dbar = c["cs"], c["sn"], c["dbar"]
            oldeps = c["epsln"]
            delta = cs * dbar + sn * alfa
            gbar = sn * dbar - cs * alfa
            epsln = sn * beta
            dbar = -cs * beta
            gamma = jnp.maximum(jnp.hypot(gbar, beta), eps)
            cs = gbar / gamma
            sn = beta / gamma
            phi = cs * c["phibar"]
            phibar = sn * c["phibar"]
            w1, w2 = c["w2"], c["w"]
            w = (v - oldeps * w1 - delta * w2) / gamma
            Aw1, Aw2 = c["Aw2"], c["Aw"]
            Aw = (Av - oldeps * Aw1 - delta * Aw2) / gamma
            x = c["x"] + phi * w
            res = c["res"] - phi * Aw
            # Lanczos found an invariant subspace (or produced NaN): stop, the driver
            # recomputes the true residual and restarts if needed
            stop = ~(beta > 10 * eps * jnp.sqrt(tnorm2))
            return dict(x=x, res=res, r1=r1, r2=r2, y=y, beta=beta, oldb=oldb, dbar=dbar,
                        epsln=epsln, phibar=phibar, cs=cs, sn=sn, tnorm2=tnorm2, w=w,
                        w2=w2, Aw=Aw, Aw2=Aw2, k=c["k"] + 1, stop=stop)

        out = lax.while_loop(cond, body, c0)
        return out["x"], out["k"]

    x, k, r = _drive(prob, inner, _MAX_CYCLES)
    return _finish(prob, x, k, opts.on_failure, opts.full_output, r_proj=r)


