"""Euclidean projections onto convex sets.

Every projection has the signature ``proj(x, hyperparams)`` and returns

    proj_C(x) = argmin_{y in C(hyperparams)} 1/2 ||y - x||^2,

so it can be used by :func:`sensitivity.make_projected_gradient_fixed_point` and turned into a
prox by :func:`sensitivity.make_prox_from_projection`. All are differentiable almost
everywhere, with respect to ``x`` and to ``hyperparams``, in forward and reverse mode.

Derivatives on the boundary. A projection is piecewise smooth; where two pieces meet (``x``
exactly on the boundary of C, or a coordinate exactly at its clamping threshold) the JVP is
that of the *clamped* piece: the constraint that is exactly tight is treated as active. For
the box this means ``d proj / d x_i = 0`` at ``x_i = lower_i``; for the simplex, a coordinate
with ``x_i = tau`` is outside the support; for the PSD cone, a zero eigenvalue is clamped.
This is one element of the Clarke generalized Jacobian; it is always finite (no NaN, also at
``x = 0`` for the norm balls, spheres and cones).

References: Parikh & Boyd, "Proximal Algorithms" (2014), section 6; Condat, "Fast projection
onto the simplex and the l1 ball", Math. Program. 2016; Martins & Astudillo, "From softmax to
sparsemax", ICML 2016 (simplex Jacobian); Blondel et al., NeurIPS 2022.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from .tree_util import tree_l2_norm, tree_vdot

__all__ = [
    "projection_non_negative",
    "projection_box",
    "projection_hypercube",
    "projection_simplex",
    "projection_l1_ball",
    "projection_l2_ball",
    "projection_linf_ball",
    "projection_l2_sphere",
    "projection_hyperplane",
    "projection_halfspace",
    "projection_affine_set",
    "projection_l1_sphere",
    "projection_sparse_simplex",
    "projection_second_order_cone",
    "projection_psd_cone",
    "kl_projection_simplex",
    "svec",
    "smat",
]


def _clamp(x, lower, upper):
    # At x == lower (resp. upper) the clamped branch is taken, derivative 0 w.r.t. x.
    return jnp.where(x <= lower, lower, jnp.where(x >= upper, upper, x))


# --------------------------------------------------------------------------- orthants, boxes


def projection_non_negative(x: Any, hyperparams: Any = None) -> Any:
    """Projection onto the non-negative orthant: ``max(x, 0)``.

    Args:
      x: pytree to project.
      hyperparams: ignored.

    Returns:
      A pytree like ``x``. JVP at ``x_i = 0``: zero.
    """
    del hyperparams
    return jax.tree.map(lambda u: jnp.where(u > 0, u, 0.0), x)


def projection_box(x: Any, hyperparams: tuple[Any, Any]) -> Any:
    """Projection onto the box ``{y : lower <= y <= upper}``.

    Args:
      x: pytree to project.
      hyperparams: ``(lower, upper)``, each a scalar or a pytree like ``x``.

    Returns:
      A pytree like ``x``. On a face, the JVP is 0 w.r.t. ``x_i`` and 1 w.r.t. the tight bound.
    """
    lower, upper = hyperparams
    struct = jax.tree.structure(x)
    if jax.tree.structure(lower) != struct:
        lower = jax.tree.map(lambda _: lower, x)
    if jax.tree.structure(upper) != struct:
        upper = jax.tree.map(lambda _: upper, x)
    return jax.tree.map(_clamp, x, lower, upper)


def projection_hypercube(x: Any, scale: float = 1.0) -> Any:
    """Projection onto the hypercube ``[0, scale]^n``.

    Args:
      x: pytree to project.
      scale: edge length of the cube.

    Returns:
      A pytree like ``x``.
    """
    scale = 1.0 if scale is None else scale
    return projection_box(x, (0.0, scale))


def projection_linf_ball(x: Any, max_value: float = 1.0) -> Any:
    """Projection onto the l-infinity ball ``{y : max_i |y_i| <= max_value}``.

    Args:
      x: pytree to project.
      max_value: radius.

    Returns:
      A pytree like ``x``.
    """
    max_value = 1.0 if max_value is None else max_value
    return projection_box(x, (-max_value, max_value))


# --------------------------------------------------------------------------- simplex, l1


@jax.custom_jvp
def _projection_simplex_flat(x: jax.Array, value: jax.Array) -> jax.Array:
    # Sort-based algorithm (Held et al. 1974; Condat 2016, algorithm 1): O(n log n).
    # Shifted by max(x) first (the projection is shift invariant): the support test then
    # compares numbers of the size of `value`, not of x, so it is exact for any finite
    # magnitude (x = [1e9, 0] in float32 gives [1, 0]) and -inf entries get 0.
    n = x.shape[0]
    x = x - jnp.max(x)
    mu = jnp.sort(x)[::-1]
    cumsum = jnp.cumsum(mu)
    ranks = jnp.arange(1, n + 1, dtype=x.dtype)
    # rho = number of coordinates in the support: largest k with mu_k > (cumsum_k - value)/k.
    rho = jnp.sum(mu * ranks > cumsum - value)
    tau = (cumsum[rho - 1] - value) / rho
    return jnp.where(x > tau, x - tau, 0.0).astype(x.dtype)


@_projection_simplex_flat.defjvp
def _projection_simplex_flat_jvp(primals, tangents):
    x, value = primals
    dx, dvalue = tangents
    p = _projection_simplex_flat(x, value)
    support = (p > 0).astype(x.dtype)
    size = jnp.sum(support)
    # p_S = x_S - tau with tau = (sum_S x - value)/|S|, so dp_S = dx_S - (sum_S dx - dvalue)/|S|.
    dx = jnp.where(support > 0, dx, 0.0)  # a -inf entry's tangent never reaches p
    dtau = (jnp.sum(dx) - dvalue) / size
    return p, support * (dx - dtau)


def projection_simplex(x: jax.Array, value: float = 1.0) -> jax.Array:
    r"""Projection onto the simplex ``{p : p >= 0, sum(p) = value}``.

    ``p = max(x - tau, 0)`` with ``tau`` such that ``sum(p) = value`` (sort-based, exact).
    The JVP is a custom rule with the sparse Jacobian
    ``J = diag(s) - s s^T / |S|`` (``s`` the indicator of the support ``S = {p_i > 0}``) and
    ``d p / d value = s / |S|``; it never differentiates through the sort.

    Exact for any finite magnitude and for ``-inf`` entries (which get 0): the support is
    found on ``x - max(x)``, so its test compares numbers of the size of ``value``.

    Args:
      x: array of any shape; the whole array is projected (``jax.vmap`` for row-wise).
      value: positive total mass (``None`` means 1, as in jaxopt).

    Returns:
      An array like ``x``.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    value = jnp.asarray(1.0 if value is None else value, dtype=x.dtype)
    return _projection_simplex_flat(x.ravel(), value).reshape(x.shape)


def kl_projection_simplex(y: jax.Array, value: float = 1.0) -> jax.Array:
    r"""Bregman (KL) projection onto the simplex of the mirror point ``y``: ``value * softmax(y)``.

    With the negative entropy ``phi(x) = sum x log x`` (mirror map ``grad phi(x) = log x + 1``),
    ``argmin_{p in simplex} KL(p, exp(y - 1)) = value * softmax(y)``. This is the
    ``projection_bregman`` of the KL mirror descent on the simplex
    (:func:`sensitivity.make_mirror_descent_fixed_point`, :func:`sensitivity.mirror_descent`).

    Args:
      y: array (the whole array is one simplex).
      value: total mass.

    Returns:
      An array like ``y`` with positive entries summing to ``value``.
    """
    y = jnp.asarray(y)
    return value * jax.nn.softmax(y.ravel()).reshape(y.shape)


def projection_l1_ball(
    x: jax.Array, max_value: float = 1.0, *, on_boundary: str = "sphere"
) -> jax.Array:
    """Projection onto the l1 ball ``{y : ||y||_1 <= max_value}``.

    Inside the ball it is the identity; outside, ``sign(x) * projection_simplex(|x|, max_value)``.

    Args:
      x: array to project (the whole array).
      max_value: radius (``None`` means 1).
      on_boundary: the JVP on the sphere ``||x||_1 = max_value``: ``"sphere"`` (default) the
        projected one (the constraint is active, the Clarke element the rest of this module
        uses); ``"identity"`` jaxopt's (the point is treated as inside).

    Returns:
      An array like ``x``.
    """
    if on_boundary not in ("sphere", "identity"):
        raise ValueError(f"on_boundary must be 'sphere' or 'identity', got {on_boundary!r}")
    x = jnp.asarray(x)
    max_value = 1.0 if max_value is None else max_value
    norm = jnp.sum(jnp.abs(x))
    inside = norm < max_value if on_boundary == "sphere" else norm <= max_value
    outside = jnp.sign(x) * projection_simplex(jnp.abs(x), max_value)
    return jnp.where(inside, x, outside)


# --------------------------------------------------------------------------- l2 ball / sphere


def projection_l2_ball(x: Any, max_value: float = 1.0) -> Any:
    """Projection onto the l2 ball ``{y : ||y||_2 <= max_value}`` (norm over the whole pytree).

    ``x * min(1, max_value / ||x||)``.

    Args:
      x: pytree to project.
      max_value: radius.

    Returns:
      A pytree like ``x``.
    """
    max_value = 1.0 if max_value is None else max_value
    sq_norm = tree_l2_norm(x, squared=True)
    outside = sq_norm >= max_value**2
    safe_norm = jnp.sqrt(jnp.where(outside & (sq_norm > 0), sq_norm, 1.0))
    factor = jnp.where(outside & (sq_norm > 0), max_value / safe_norm, 1.0)
    return jax.tree.map(lambda u: factor * u, x)


def projection_l2_sphere(x: Any, value: float = 1.0) -> Any:
    """Projection onto the l2 sphere ``{y : ||y||_2 = value}`` (norm over the whole pytree).

    ``value * x / ||x||``. At ``x = 0`` every point of the sphere is a projection; by convention
    the result is ``value`` times the first unit vector (first entry of the first leaf), with a
    zero JVP.

    Args:
      x: pytree to project.
      value: radius.

    Returns:
      A pytree like ``x``.
    """
    value = 1.0 if value is None else value
    sq_norm = tree_l2_norm(x, squared=True)
    nonzero = sq_norm > 0
    factor = jnp.where(nonzero, value / jnp.sqrt(jnp.where(nonzero, sq_norm, 1.0)), 0.0)
    leaves, treedef = jax.tree.flatten(x)
    out = [factor * u for u in leaves]
    first = out[0].ravel().at[0].add(jnp.where(nonzero, 0.0, value)).reshape(out[0].shape)
    return jax.tree.unflatten(treedef, [first] + out[1:])


# --------------------------------------------------------------------------- affine sets


def projection_hyperplane(x: Any, hyperparams: tuple[Any, Any]) -> Any:
    """Projection onto the hyperplane ``{y : <a, y> = b}``.

    ``x - (<a, x> - b) / ||a||^2 * a``, with inner products over whole pytrees.

    Args:
      x: array or pytree to project.
      hyperparams: ``(a, b)``; ``a`` an array or pytree like ``x`` (non-zero), ``b`` a
        scalar.

    Returns:
      A pytree like ``x``.
    """
    a, b = hyperparams
    step = (tree_vdot(a, x) - b) / tree_vdot(a, a)
    return jax.tree.map(lambda u, v: u - step * v, x, a)


def projection_halfspace(x: Any, hyperparams: tuple[Any, Any]) -> Any:
    """Projection onto the halfspace ``{y : <a, y> <= b}``.

    ``x - max(<a, x> - b, 0) / ||a||^2 * a``, with inner products over whole pytrees.

    Args:
      x: array or pytree to project.
      hyperparams: ``(a, b)``; ``a`` an array or pytree like ``x`` (non-zero), ``b`` a
        scalar.

    Returns:
      A pytree like ``x``. On the boundary the JVP is the hyperplane projection's.
    """
    a, b = hyperparams
    violation = tree_vdot(a, x) - b
    step = jnp.where(violation >= 0, violation, 0.0) / tree_vdot(a, a)
    return jax.tree.map(lambda u, v: u - step * v, x, a)


def projection_affine_set(x: jax.Array, hyperparams: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Projection onto the affine set ``{y : A y = b}``.

    ``x - A^T (A A^T)^{-1} (A x - b)``; ``A`` (shape ``(p, n)``) must have full row rank.

    Args:
      x: vector of shape ``(n,)``.
      hyperparams: ``(A, b)`` with shapes ``(p, n)`` and ``(p,)``.

    Returns:
      A vector of shape ``(n,)``.
    """
    A, b = hyperparams
    gram = A @ A.T
    return x - A.T @ jnp.linalg.solve(gram, A @ x - b)


# --------------------------------------------------------------------------- cones


def projection_second_order_cone(x: jax.Array, hyperparams: Any = None) -> jax.Array:
    r"""Projection onto the second-order (Lorentz) cone ``{(t, z) : ||z||_2 <= t}``.

    Convention: ``t = x[0]`` and ``z = x[1:]`` (the SCS / conic-programming ordering). The cone
    is self-dual. With ``s = ||z||``:
    ``(t, z)`` if ``s <= t``; ``0`` if ``s <= -t``; else ``(1 + t/s)/2 * (s, z)``.

    Args:
      x: vector of shape ``(1 + k,)``.
      hyperparams: ignored.

    Returns:
      A vector like ``x``. On the cone's boundary (and at the apex) the JVP is the clamped
      piece's: the boundary formula's for ``s = t > 0``, zero for ``s = -t`` (apex included).
    """
    del hyperparams
    t, z = x[0], x[1:]
    sq = jnp.sum(z**2)
    positive = sq > 0
    s = jnp.sqrt(jnp.where(positive, sq, 1.0))  # safe norm (unused where sq == 0)
    s = jnp.where(positive, s, 0.0)
    at_apex = s <= -t
    inside = (s < t) & ~at_apex
    factor = 0.5 * (1.0 + t / jnp.where(positive, s, 1.0))
    boundary = jnp.concatenate([jnp.reshape(factor * s, (1,)), factor * z])
    return jnp.where(at_apex, 0.0, jnp.where(inside, x, boundary))


@jax.custom_jvp
def _projection_psd_symmetric(X: jax.Array) -> jax.Array:
    w, V = jnp.linalg.eigh(X)
    return (V * jnp.maximum(w, 0.0)[..., None, :]) @ jnp.swapaxes(V, -1, -2)


@_projection_psd_symmetric.defjvp
def _projection_psd_symmetric_jvp(primals, tangents):
    # Daleckii-Krein / Loewner formula: dP = V (Gamma o (V^T dX V)) V^T with
    # Gamma_ij = (f(w_i) - f(w_j)) / (w_i - w_j), f = max(., 0), and f'(w_i) on the diagonal
    # (and for repeated eigenvalues). Unlike differentiating eigh, it is finite when eigenvalues
    # are repeated (eigh's JVP divides by w_i - w_j).
    (X,), (dX,) = primals, tangents
    w, V = jnp.linalg.eigh(X)
    fw = jnp.maximum(w, 0.0)
    P = (V * fw[..., None, :]) @ jnp.swapaxes(V, -1, -2)
    VT = jnp.swapaxes(V, -1, -2)
    dX = 0.5 * (dX + jnp.swapaxes(dX, -1, -2))
    Y = VT @ dX @ V
    dw = w[..., :, None] - w[..., None, :]
    dfw = fw[..., :, None] - fw[..., None, :]
    slope = (w > 0).astype(w.dtype)  # f'(w), convention 0 at w = 0 (clamped)
    scale = jnp.max(jnp.abs(w), axis=-1, keepdims=True)[..., None]
    repeated = jnp.abs(dw) <= 1e-14 * jnp.maximum(scale, 1.0)
    gamma = jnp.where(
        repeated,
        0.5 * (slope[..., :, None] + slope[..., None, :]),
        dfw / jnp.where(repeated, 1.0, dw),
    )
    return P, V @ (gamma * Y) @ VT


def projection_psd_cone(X: jax.Array, hyperparams: Any = None) -> jax.Array:
    r"""Projection onto the cone of symmetric positive semi-definite matrices (Frobenius norm).

    ``V diag(max(w, 0)) V^T`` where ``(w, V)`` is the eigendecomposition (``eigh``) of the
    symmetric part ``(X + X^T)/2``. Convention: the input need not be symmetric; the projection
    of any square matrix onto the symmetric PSD cone is the projection of its symmetric part
    (the antisymmetric part is orthogonal to every symmetric matrix), so ``X`` and ``X^T`` give
    the same result. Leading batch dimensions are allowed.

    The JVP is a custom rule (Daleckii-Krein divided differences) that stays finite for repeated
    eigenvalues, e.g. at the identity, where differentiating ``eigh`` gives NaN. A zero
    eigenvalue is treated as clamped (slope 0).

    Args:
      X: array of shape ``(..., n, n)``.
      hyperparams: ignored.

    Returns:
      A symmetric PSD array of shape ``(..., n, n)``.
    """
    del hyperparams
    return _projection_psd_symmetric(0.5 * (X + jnp.swapaxes(X, -1, -2)))


def svec(X: jax.Array) -> jax.Array:
    r"""Symmetric matrix ``(n, n)`` to its scaled lower triangle, of length ``n (n + 1) / 2``.

    Row-major lower triangle, off-diagonal entries multiplied by ``sqrt(2)``, so that
    ``<svec(X), svec(Y)> = trace(X Y)`` (an isometry; the convention conic solvers such as SCS use,
    up to the ordering of the entries).
    """
    n = X.shape[-1]
    rows, cols = jnp.tril_indices(n)
    weights = jnp.where(rows == cols, 1.0, math.sqrt(2.0))
    return X[..., rows, cols] * weights


def smat(v: jax.Array) -> jax.Array:
    """Inverse of :func:`svec`: a vector of length ``n (n + 1) / 2`` to a symmetric ``(n, n)``."""
    size = v.shape[-1]
    n = int(round((math.sqrt(8 * size + 1) - 1) / 2))
    if n * (n + 1) // 2 != size:
        raise ValueError(f"smat: length {size} is not a triangular number n(n+1)/2")
    rows, cols = jnp.tril_indices(n)
    weights = jnp.where(rows == cols, 1.0, 1.0 / math.sqrt(2.0))
    lower = jnp.zeros(v.shape[:-1] + (n, n), v.dtype).at[..., rows, cols].set(v * weights)
    return lower + jnp.swapaxes(lower, -1, -2) - lower * jnp.eye(n, dtype=v.dtype)


def _projection_psd_cone_svec(v: jax.Array) -> jax.Array:
    return svec(projection_psd_cone(smat(v)))


# ------------------------------------------------------------- l1 sphere, sparse simplex


def projection_l1_sphere(x: jax.Array, value: float = 1.0) -> jax.Array:
    """Projection onto the l1 sphere ``{y : ||y||_1 = value}``.

    ``s * projection_simplex(|x|, value)`` with ``s_i = sign(x_i)`` and ``s_i = +1`` where
    ``x_i = 0`` (either sign is a nearest point there; ``+1`` keeps the result on the sphere,
    e.g. ``x = 0`` gives the uniform vector ``value / n``, a nearest point).

    Args:
      x: array to project (the whole array).
      value: radius (``None`` means 1).

    Returns:
      An array like ``x``.
    """
    x = jnp.asarray(x)
    value = 1.0 if value is None else value
    signs = jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)
    return signs * projection_simplex(jnp.abs(x), value)


def projection_sparse_simplex(
    x: jax.Array, max_nz: int, use_approx_max_nz: bool = False, value: float = 1.0
) -> jax.Array:
    """Projection onto the simplex with at most ``max_nz`` non-zero entries.

    ``argmin ||p - x||^2 s.t. p >= 0, sum(p) = value, ||p||_0 <= max_nz``. Keeping the
    ``max_nz`` largest entries and projecting them onto the simplex is exact (Kyrillidis
    et al. 2013, greedy selector and simplex projector).

    Args:
      x: vector of shape ``(n,)``.
      max_nz: the largest number of non-zero entries (a Python int).
      use_approx_max_nz: pick the largest entries with :func:`jax.lax.approx_max_k`
        (faster on TPU, approximate).
      value: total mass (``None`` means 1).

    Returns:
      A vector like ``x``. Derivatives are those of the simplex projection of the kept
      entries (zero for the others).
    """
    x = jnp.asarray(x)
    value = 1.0 if value is None else value
    if use_approx_max_nz:
        top, idx = jax.lax.approx_max_k(x, max_nz)
    else:
        top, idx = jax.lax.top_k(x, max_nz)
    return jnp.zeros_like(x).at[idx].set(projection_simplex(top, value))
