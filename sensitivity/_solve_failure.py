"""What a linear solve does when it fails: the policies, the errors and their messages.

Every solver of :mod:`sensitivity._linear_solve` ends by applying ``on_failure``
(``"raise"``, ``"warn"``, ``"nan"``, ``"ignore"``) to its :class:`LinearSolveInfo`; a
message says what failed (the residual against the tolerance, an inconsistent right-hand
side, a breakdown, a non-finite input) and what to try for that solver. Under ``jit`` and
``vmap`` the report runs on the host through ``io_callback``.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

__all__ = ["LinearSolveError", "LinearSolveWarning"]

_POLICIES = ("raise", "warn", "nan", "ignore")
_ENGINE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class LinearSolveError(RuntimeError):
    """A linear solve did not converge, or its right-hand side was inconsistent."""


class LinearSolveWarning(RuntimeWarning):
    """Warning emitted by a linear solve with ``on_failure="warn"``."""




_HINTS = {
    "solve_cg": "raise maxiter, loosen tol, precondition (M=...), or for a "
                "singular/indefinite system use solve_minres with nullspace=...",
    "solve_normal_cg": "raise maxiter, loosen tol or precondition; normal CG squares the "
                       "condition number, so prefer solve_gmres or solve_bicgstab, and pass "
                       "nullspace=... for a singular system",
    "solve_minres": "raise maxiter, loosen tol, precondition (M must be symmetric positive "
                    "definite), or for a singular system pass nullspace=...; a "
                    "non-symmetric operator needs solve_gmres",
    "solve_gmres": "raise maxiter or restart, loosen tol, precondition (M=...), or for a "
                   "singular system pass nullspace=...",
    "solve_bicgstab": "raise maxiter, loosen tol, precondition (M=...), or use solve_gmres; "
                      "for a singular system pass nullspace=...",
    "solve_lu": "the matrix is singular or badly conditioned: pass nullspace=... for known "
                "zero modes, add a ridge, or use solve_lstsq for the minimum-norm answer",
    "solve_cholesky": "the Cholesky factorization failed, so the matrix is not symmetric "
                      "positive definite (or is singular): use solve_lu / solve_lstsq, add a "
                      "ridge, or pass nullspace=...",
    "solve_lstsq": "the system has no exact solution (the returned x is the minimum-norm "
                   "least-squares one): loosen tol, or pass nullspace=... for known zero "
                   "modes",
    "solve_iterative_refinement": "raise maxiter, loosen tol, or give a more accurate inner "
                                  "solve (solve=..., matvec_bar=...); refinement converges "
                                  "only when the inner solve reduces the residual at each "
                                  "step",
}
_HINTS["solve_qr"] = _HINTS["solve_inv"] = _HINTS["solve_lu"]


def _failure_message(name, iterations, residual, tolerance, inconsistency, consistent,
                     consistency_tol, rhs_norm, dense):
    if not np.isfinite(rhs_norm):
        return (f"{name}: the right-hand side is not finite (its norm is {rhs_norm}); the "
                "NaN or inf comes from before the solve (the matvec's inputs or b itself).")
    if not consistent:
        return (
            f"{name}: the right-hand side has a component {inconsistency:.1e} of its norm "
            f"along the given null space (consistency tolerance {consistency_tol:.1e}): the "
            "system has no solution. The returned x solves the projected system (the "
            "minimum-norm least-squares answer). If that component is expected (e.g. a "
            "cotangent of a gauge-dependent quantity), project it out of the right-hand "
            "side or pass consistency_tol=float('inf'); otherwise check the null-space "
            "basis.")
    hint = _HINTS.get(name, "raise maxiter, loosen tol or precondition")
    if not np.isfinite(residual):
        return (f"{name} broke down: the residual is {residual} after {iterations} "
                f"iterations (rhs norm {rhs_norm:.1e}); {hint}")
    if dense:
        return (f"{name}: the factorization finished but the residual {residual:.1e} is above "
                f"the tolerance {tolerance:.1e} (rhs norm {rhs_norm:.1e}), more than round-off "
                f"allows: the matrix is singular or too ill-conditioned for its dtype (float32 "
                f"keeps about 7 digits, float64 about 16). Solve in float64, add a ridge, "
                f"pass nullspace=... for known zero modes, use solve_lstsq for the "
                f"minimum-norm answer, or pass a looser tol")
    return (f"{name} did not converge in {iterations} iterations (residual {residual:.1e} "
            f"> tolerance {tolerance:.1e}); {hint}")


def _first_outside_the_engine() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside this package
    (the user's call), however many engine frames (decorators, nested solves) lie between."""
    frame, level = sys._getframe(2), 2  # level 1: the caller of this function (warns)
    while frame is not None and frame.f_code.co_filename.startswith(_ENGINE):
        frame, level = frame.f_back, level + 1
    return level


def _report_host(name, policy, dense, converged, iterations, residual, tolerance,
                 inconsistency, consistent, consistency_tol, rhs_norm):
    converged = np.asarray(converged)
    if converged.all():
        return
    bad = np.flatnonzero(~converged.reshape(-1))
    i = int(bad[0])

    def pick(a):
        a = np.asarray(a)
        return a.reshape(-1)[i].item() if a.size > 1 else a.item()

    msg = _failure_message(name, pick(iterations), pick(residual), pick(tolerance),
                           pick(inconsistency), bool(pick(consistent)),
                           pick(consistency_tol), pick(rhs_norm), dense)
    if converged.size > 1:
        msg += f" ({bad.size} of {converged.size} batched solves failed; the first is shown.)"
    if policy == "raise":
        raise LinearSolveError(msg)
    warnings.warn(msg, LinearSolveWarning, stacklevel=_first_outside_the_engine())


def _apply_policy(prob, x, info, on_failure, dense, test):
    if on_failure == "ignore":
        return x
    if on_failure == "nan":
        return jax.tree_util.tree_map(
            lambda leaf: jnp.where(info.converged, leaf, jnp.full_like(leaf, jnp.nan)), x)
    args = (info.converged, info.iterations, test[0], test[1],
            info.inconsistency, prob.consistent,
            jnp.asarray(prob.consistency_tol, info.residual_norm.dtype), info.rhs_norm)
    if any(isinstance(a, jax.core.Tracer) for a in args):
        # io_callback, not jax.debug.callback: under vmap it runs in a rolled loop, where a
        # debug callback is unrolled once per batch element (slow to compile and to run).
        # (It cannot sit in a lax.cond taken only on failure: JAX has no vmap-of-cond for
        # IO effects.)
        report = functools.partial(_report_host, prob.name, on_failure, dense)
        io_callback(report, None, *args)
    else:  # concrete values: report right here; the warning points at the caller's line
        _report_host(prob.name, on_failure, dense, *args)
    return x


def _check_policy(on_failure):
    if on_failure not in _POLICIES:
        raise ValueError(f"on_failure must be one of {_POLICIES}, got {on_failure!r}")
