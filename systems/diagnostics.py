"""Zero-mode diagnostics of a relaxed packing's Hessian (:class:`~systems.response.ResponseSolver`).

The zero modes found are counted against ``d (1 + rattlers)`` (plus the rigid rotations in
free space), with conditioning figures of the backbone Hessian: a dense eigendecomposition
up to :data:`DENSE_EIGEN_MAX_DOF` coordinates, else the construction (rattler coordinates
are exactly zero rows; the rigid motions are checked by ``‖H t‖``) plus Lanczos
(:func:`sensitivity.lanczos`) on the backbone Hessian with the rigid motions projected out.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from ._compile import device_array
from ._linear_system import PackingData, SolveConfig, compile_seconds
from .contacts import rigid_motions
from .hessian import dense_hessian, hessian_matvec
from .settings import SENSITIVITY

if TYPE_CHECKING:
    from .response import ResponseSolver

__all__ = ["DENSE_EIGEN_MAX_DOF", "DENSE_TRIDIAGONAL_MAX", "tridiagonal_eigenvalues", "zero_modes"]

#: Diagnostics by dense eigendecomposition up to this many degrees of freedom; Lanczos
#: beyond (the dense path costs a sizeable part of a small packing's FIRE run; Lanczos a
#: few ms).
DENSE_EIGEN_MAX_DOF = 256


def _masked_hvp(pk: PackingData, params):
    """``v -> A H A v`` with ``A`` the backbone mask: the backbone Hessian (rattler
    coordinates mapped to zero), without the tether, on flat vectors."""
    n, d = pk.y.shape
    mask = jnp.repeat(pk.active, d)

    def hvp(v):  # the tethers sit on rattler rows only: masked out
        return hessian_matvec(pk.hessian, (v * mask).reshape(n, d)).reshape(-1) * mask

    return hvp


def _null_residuals(cfg: SolveConfig, pk: PackingData, params, q):
    """``‖H q_k‖`` for the columns of ``q`` (N d, k)."""
    return jnp.linalg.norm(jax.vmap(_masked_hvp(pk, params))(q.T), axis=1)


def _lanczos(cfg: SolveConfig, pk: PackingData, params, v0, q):
    from sensitivity import lanczos

    mask = jnp.repeat(pk.active, pk.y.shape[1])
    return lanczos(_masked_hvp(pk, params), v0 * mask, q, cfg.steps)


def zero_modes(solver: ResponseSolver, seed: int = 0) -> dict:
    """Zero modes found against ``d (1 + rattlers)`` (+ rotations in free space), and
    conditioning figures of the backbone Hessian.

    Up to :data:`DENSE_EIGEN_MAX_DOF` coordinates: a dense eigendecomposition of the
    whole Hessian with the rattler terms dropped (its zero eigenvalues counted, below
    ``1e-8 λ_max``). Beyond: the construction (rattler coordinates are exactly zero
    rows; the rigid motions are checked by ``‖H t‖``) plus Lanczos on the backbone
    Hessian with the rigid motions projected out, whose near-zero Ritz values would be
    extra, unexpected zero modes; its smallest Ritz value estimates the smallest
    non-zero eigenvalue from above.
    """
    n, d = solver.model.n, solver.model.dim
    n_rattlers = int(solver.rattlers.sum())
    t0 = time.perf_counter()
    compile0 = compile_seconds()
    params = solver.params
    rigid = d + (0 if solver.model.periodic else d * (d - 1) // 2)
    # the rigid motions of the backbone, as nullspace (on the host: no op-by-op dispatch)
    basis = rigid_motions(np.asarray(solver.y), ~solver.rattlers,
                          solver.model.periodic).reshape(rigid, n * d)
    k = basis.shape[0]
    q, _ = np.linalg.qr(basis.T)
    dense = n * d <= DENSE_EIGEN_MAX_DOF
    if dense:
        # on the host, from the solver's own Hessian blocks: nothing to trace or compile
        # (a small run's start-up), the tethers of the rattler rows masked out
        mask = np.repeat(np.asarray(solver.data.active), d)
        hess = dense_hessian(solver.data.hessian) * mask[:, None] * mask[None, :]
        null_residual = np.linalg.norm(hess @ q, axis=0)
    else:
        q = device_array(q, np.float64)
        null_residual, _, _ = solver._run(_null_residuals, solver._config(), solver.data,
                                          params, q)
    out: dict[str, Any] = {
        "expected": rigid + d * n_rattlers,
        "rattlers": n_rattlers,
        "basis_size": k + d * n_rattlers,
        "basis_max_residual": float(np.max(null_residual)),
    }
    if dense:
        evals = np.linalg.eigvalsh(hess)
        top = float(np.max(np.abs(evals)))
        zero = np.abs(evals) <= 1e-8 * top
        nonzero = evals[~zero]
        out.update({
            "found": int(zero.sum()),
            "method": "dense eigendecomposition",
            "eigenvalue_min_nonzero": float(nonzero.min()) if nonzero.size else math.nan,
            "eigenvalue_max": top,
            "negative_eigenvalues": int((nonzero < 0).sum()),
        })
    else:
        live = len(solver.backbone) * d
        default = SENSITIVITY["lanczos_steps"].default
        steps = max(0, int(min(solver.settings.get("lanczos_steps", default), live - k)))
        ritz = np.zeros(0)
        if steps:
            # drawn on the host: jax.random runs three small device programs at start-up
            v0 = device_array(np.random.default_rng(seed).standard_normal(n * d), np.float64)
            (alphas, betas), _, _ = solver._run(_lanczos, solver._config(steps=steps),
                                              solver.data, params, v0, q)
            ritz = tridiagonal_eigenvalues(np.asarray(alphas), np.asarray(betas))
        top = float(ritz.max()) if ritz.size else math.nan
        tiny = np.abs(ritz) <= 1e-8 * top
        out.update({
            "found": k + d * n_rattlers + int(tiny.sum()),
            "method": f"construction + Lanczos ({steps} steps) on the projected Hessian",
            "eigenvalue_min_nonzero": float(ritz[~tiny].min()) if (~tiny).any()
            else math.nan,
            "eigenvalue_max": top,
            "negative_eigenvalues": int((ritz[~tiny] < 0).sum()),
        })
    low, top = out["eigenvalue_min_nonzero"], out["eigenvalue_max"]
    out["condition_number"] = (top / low if low > 0 else
                               math.nan if math.isnan(low) or math.isnan(top) else math.inf)
    out["matches"] = bool(out["found"] == out["expected"])
    out["time_s"] = time.perf_counter() - t0 - (compile_seconds() - compile0)
    return out


#: Up to this order a tridiagonal matrix's eigenvalues come from NumPy's dense solver (2.7
#: ms at the default 200 Lanczos steps against SciPy's 0.9 ms, 32 MB at this size); above it
#: from SciPy's tridiagonal solver, whose module costs 0.23 s to import at start-up.
DENSE_TRIDIAGONAL_MAX = 2000


def tridiagonal_eigenvalues(diagonal: np.ndarray, off_diagonal: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues of the symmetric tridiagonal matrix with this diagonal (k) and
    off-diagonal (k - 1), as ``scipy.linalg.eigvalsh_tridiagonal``."""
    k = len(diagonal)
    if k > DENSE_TRIDIAGONAL_MAX:
        from scipy.linalg import eigvalsh_tridiagonal

        return eigvalsh_tridiagonal(diagonal, off_diagonal)
    t = np.diag(diagonal)
    if k > 1:
        t += np.diag(off_diagonal, 1) + np.diag(off_diagonal, -1)
    return np.linalg.eigvalsh(t)
