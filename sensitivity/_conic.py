"""Conic programs: cones, the residual map of the homogeneous self-dual embedding, and a
dense SCS-style solver differentiated through that map.

Everything conic lives here: :class:`ConeSpec` (a product of zero, orthant, second-order
and PSD cones in SCS order), the projection onto the cone or its dual, the residual map
``N(z, c, A, b)`` of Busseti, Moursi & Boyd (2019) that is the optimality condition of a
conic program (its roots are the primal-dual solutions), the maps between a solution and
a root (:func:`conic_embed`, :func:`conic_recover`), and :func:`solve_conic` (ADMM on the
embedding, O'Donoghue, Chu, Parikh & Boyd 2016, then Newton refinement on the residual
map).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from ._dense import solve_lstsq
from ._projection import (
    _projection_psd_cone_svec,
    projection_non_negative,
    projection_second_order_cone,
)
from ._solver_loop import SolverResult, _decorate, _iterate

__all__ = [
    "ConeSpec",
    "make_cone_projection",
    "make_conic_residual_map",
    "conic_embed",
    "conic_recover",
    "ConicSolution",
    "solve_conic",
]


class ConeSpec(NamedTuple):
    """A product cone ``K``, in the SCS order: zero cone, orthant, second-order cones, PSD.

    Attributes:
      zero: dimension of the zero cone ``{0}`` (equality constraints); its dual is free.
      nonneg: dimension of the non-negative orthant.
      soc: dimensions ``1 + k`` of each second-order cone ``{(t, z) : ||z|| <= t}``.
      psd: matrix sizes ``n`` of each PSD cone, each taking ``n (n + 1) / 2`` entries in
        :func:`sensitivity.svec` form.
    """

    zero: int = 0
    nonneg: int = 0
    soc: Sequence[int] = ()
    psd: Sequence[int] = ()

    @property
    def dim(self) -> int:
        return self.zero + self.nonneg + sum(self.soc) + sum(n * (n + 1) // 2 for n in self.psd)


def _as_cone_spec(cones: ConeSpec | Mapping[str, Any]) -> ConeSpec:
    if isinstance(cones, ConeSpec):
        return cones
    if isinstance(cones, Mapping):
        aliases = {"z": "zero", "f": "zero", "l": "nonneg", "q": "soc", "s": "psd"}
        fields = {}
        for key, value in cones.items():
            name = aliases.get(key, key)
            if name not in ConeSpec._fields:
                raise ValueError(
                    f"unknown cone {key!r}: expected one of zero/z, nonneg/l, soc/q, psd/s"
                )
            fields[name] = tuple(value) if name in ("soc", "psd") else int(value)
        return ConeSpec(**fields)
    raise TypeError(
        f"cones must be a ConeSpec or a dict like {{'z': 1, 'l': 3}}, got {type(cones).__name__}"
    )


def make_cone_projection(cones: ConeSpec | Mapping[str, Any], dual: bool = False) -> Callable:
    """Projection onto the product cone ``K`` (or its dual ``K*``), for vectors in SCS order.

    The orthant, second-order and PSD cones are self-dual; the zero cone's dual is the whole
    space (so ``dual=True`` leaves those entries unchanged).

    Args:
      cones: a :class:`ConeSpec` or an SCS-style dict (``{"z": 1, "l": 3, "q": [3], "s": [2]}``).
      dual: project onto ``K*`` instead of ``K``.

    Returns:
      ``projection(v)`` for ``v`` of shape ``(cones.dim,)``.
    """
    spec = _as_cone_spec(cones)

    def projection(v):
        if v.shape != (spec.dim,):
            raise ValueError(
                f"cone projection: expected a vector of shape ({spec.dim},), got {v.shape}"
            )
        pieces = []
        start = 0
        block = v[start : start + spec.zero]
        pieces.append(block if dual else jnp.zeros_like(block))
        start += spec.zero
        pieces.append(projection_non_negative(v[start : start + spec.nonneg]))
        start += spec.nonneg
        for k in spec.soc:
            pieces.append(projection_second_order_cone(v[start : start + k]))
            start += k
        for n in spec.psd:
            size = n * (n + 1) // 2
            pieces.append(_projection_psd_cone_svec(v[start : start + size]))
            start += size
        return jnp.concatenate(pieces)

    return projection


def make_conic_residual_map(cones: ConeSpec | Mapping[str, Any]) -> Callable:
    r"""Residual map of the homogeneous self-dual embedding of a conic program.

    Primal ``min c^T x s.t. A x + s = b, s in K``; dual ``max -b^T y s.t. A^T y + c = 0,
    y in K*``. With ``Q = [[0, A^T, c], [-A, 0, b], [-c^T, -b^T, 0]]`` and ``Pi`` the projection
    onto ``C = R^n x K* x R_+``, the residual map (Busseti, Moursi & Boyd 2019) is

        N(z, c, A, b) = ((Q - I) Pi + I)(z),          z = (z_x, z_y, z_tau) in R^{n + m + 1}.

    Its roots with ``z_tau > 0`` are the primal-dual solutions:
    ``u = Pi(z) = (x, y, 1) tau``, ``v = Pi(z) - z = (0, s, 0) tau`` (see :func:`conic_embed`,
    :func:`conic_recover`). ``N`` is positively homogeneous of degree 1, so its Jacobian in
    ``z`` is singular along ``z`` itself; the system of implicit differentiation is nonetheless
    consistent and the derivatives of ``(x, y, s)`` (ratios to ``tau``) are unique: use a
    minimum-norm solve (``solve_lstsq``) with :func:`sensitivity.custom_root`, as
    :func:`sensitivity.solve_conic` does.

    Args:
      cones: a :class:`ConeSpec` or an SCS-style dict.

    Returns:
      ``N(z, c, A, b)`` with ``c`` of shape ``(n,)``, ``A`` of shape ``(m, n)``, ``b`` of shape
      ``(m,)``, returning a vector of shape ``(n + m + 1,)``.
    """
    spec = _as_cone_spec(cones)
    project_dual = make_cone_projection(spec, dual=True)

    def residual_map(z, c, A, b):
        n = c.shape[0]
        u = _project_embedding(z, n, project_dual)
        ux, uy, utau = u[:n], u[n:-1], u[-1]
        qu = jnp.concatenate(
            [A.T @ uy + c * utau, -A @ ux + b * utau, jnp.reshape(-c @ ux - b @ uy, (1,))]
        )
        return qu - u + z

    return residual_map


def _project_embedding(z, n, project_dual):
    """``Pi_C(z)`` with ``C = R^n x K* x R_+``."""
    return jnp.concatenate([z[:n], project_dual(z[n:-1]), projection_non_negative(z[-1:])])


def conic_embed(x: jax.Array, y: jax.Array, s: jax.Array) -> jax.Array:
    """The root ``z = (x, y - s, 1)`` of :func:`make_conic_residual_map` for a solution.

    Args:
      x: primal solution, shape ``(n,)``.
      y: dual solution in ``K*``, shape ``(m,)``.
      s: primal slack in ``K``, shape ``(m,)``, with ``y^T s = 0``.

    Returns:
      ``z`` of shape ``(n + m + 1,)``.
    """
    return jnp.concatenate([x, y - s, jnp.ones((1,), x.dtype)])


def conic_recover(z: jax.Array, n: int, cones: ConeSpec | Mapping[str, Any]) -> tuple:
    """Primal-dual solution ``(x, y, s)`` from a root ``z`` of the residual map (``z_tau > 0``).

    ``u = Pi(z)``, ``v = u - z``, and ``(x, y, s) = (u_x, u_y, v_y) / u_tau``. Differentiable,
    so it can follow a solver decorated with the residual map.

    Args:
      z: root, shape ``(n + m + 1,)``.
      n: number of primal variables.
      cones: the cone of the problem.

    Returns:
      ``(x, y, s)``.
    """
    u = _project_embedding(z, n, make_cone_projection(cones, dual=True))
    v = u - z
    tau = u[-1]
    return u[:n] / tau, u[n:-1] / tau, v[n:-1] / tau



class ConicSolution(NamedTuple):
    """Primal-dual solution of a conic program (see :func:`solve_conic`)."""

    x: jax.Array
    y: jax.Array
    s: jax.Array
    z: jax.Array  # root of the residual map (x, y - s, 1)


def solve_conic(
    c: jax.Array,
    A: jax.Array,
    b: jax.Array,
    cones: Any,
    *,
    tol: float = 1e-9,
    maxiter: int = 20000,
    refine_steps: int = 5,
    implicit_diff: bool = True,
    solve: Callable | None = None,
) -> SolverResult:
    r"""Solves the conic program ``min c^T x s.t. A x + s = b, s in K`` (and its dual).

    SCS's algorithm (O'Donoghue, Chu, Parikh & Boyd 2016), dense: ADMM on the homogeneous
    self-dual embedding ``Q u = v, u in R^n x K* x R_+, v in {0}^n x K x R_+``, followed by
    ``refine_steps`` Newton steps on the residual map (solution refinement, Busseti, Moursi &
    Boyd 2019). Small dense problems only. ``error`` is the largest of the relative primal
    residual ``||A x + s - b||``, dual residual ``||A^T y + c||`` and duality gap
    ``|c^T x + b^T y|``; an infeasible or unbounded problem does not converge.

    Implicit differentiation: :func:`sensitivity.make_conic_residual_map` (root ``z``), with a
    minimum-norm least-squares solve (the residual map is homogeneous, so its Jacobian has
    ``z`` in its null space; the derivatives of ``x, y, s`` are unique). Needs a unique,
    strictly complementary solution.

    Args:
      c: ``(n,)`` cost.
      A: ``(m, n)`` constraint matrix.
      b: ``(m,)``.
      cones: :class:`sensitivity.ConeSpec` or SCS-style dict, of total dimension ``m``.
      tol: tolerance on ``error``.
      maxiter: ADMM iteration limit.
      refine_steps: Newton refinement steps on the residual map.
      implicit_diff: decorate with implicit differentiation.
      solve: linear solver for implicit differentiation (default ``solve_lstsq``).

    Returns:
      :class:`SolverResult` whose ``params`` is a :class:`ConicSolution` ``(x, y, s, z)``.
    """
    spec = _as_cone_spec(cones)
    n, m = c.shape[0], b.shape[0]
    if A.shape != (m, n) or spec.dim != m:
        raise ValueError(
            f"solve_conic: A has shape {A.shape}, c {c.shape}, b {b.shape} and the cones have "
            f"dimension {spec.dim}; need A of shape (m, n) = ({m}, {n}) and cone dimension m"
        )
    residual_map = make_conic_residual_map(spec)
    project_dual = make_cone_projection(spec, dual=True)

    def errors(z, c, A, b):
        x, y, s = conic_recover(z, n, spec)
        primal = jnp.linalg.norm(A @ x + s - b) / (1.0 + jnp.linalg.norm(b))
        dual = jnp.linalg.norm(A.T @ y + c) / (1.0 + jnp.linalg.norm(c))
        gap = jnp.abs(c @ x + b @ y) / (1.0 + jnp.abs(c @ x) + jnp.abs(b @ y))
        return jnp.max(jnp.stack([primal, dual, gap]))

    def run(init, c, A, b):
        del init
        size = n + m + 1
        Qmat = jnp.block(
            [
                [jnp.zeros((n, n)), A.T, c[:, None]],
                [-A, jnp.zeros((m, m)), b[:, None]],
                [-c[None, :], -b[None, :], jnp.zeros((1, 1))],
            ]
        )
        lu = jax.scipy.linalg.lu_factor(jnp.eye(size) + Qmat)
        u0 = jnp.zeros(size).at[-1].set(1.0)
        v0 = jnp.zeros(size).at[-1].set(1.0)

        def update(carry):
            u, v, it = carry
            u_tilde = jax.scipy.linalg.lu_solve(lu, u + v)
            u_new = _project_embedding(u_tilde - v, n, project_dual)
            v_new = v - u_tilde + u_new
            tau = u_new[-1]
            z = (u_new - v_new) / jnp.where(tau > 0, tau, 1.0)
            # Checking the residuals costs as much as an iteration: do it every 10th. While
            # tau = 0 the iterate is no solution (it may become a certificate of infeasibility).
            error = jnp.where((it % 10 == 9) & (tau > 0), errors(z, c, A, b), jnp.inf)
            return (u_new, v_new, it + 1), error

        (u, v, _), _, iterations = _iterate(update, (u0, v0, jnp.asarray(0)), tol, maxiter, False)
        z = (u - v) / u[-1]

        def refine(_, z):
            jac = jax.jacfwd(residual_map)(z, c, A, b)
            step = jnp.linalg.lstsq(jac, residual_map(z, c, A, b))[0]
            z_new = z - step
            z_new = z_new / z_new[-1]
            better = jnp.linalg.norm(residual_map(z_new, c, A, b)) < jnp.linalg.norm(
                residual_map(z, c, A, b)
            )
            return jnp.where(better, z_new, z)

        z = jax.lax.fori_loop(0, refine_steps, refine, z)
        error = errors(z, c, A, b)
        return z, (iterations, jnp.where(jnp.isfinite(error), error, jnp.inf))

    if implicit_diff:
        run = _decorate(run, residual_map, False, True, solve_lstsq if solve is None else solve)
    z, (iterations, error) = run(jnp.zeros(n + m + 1, c.dtype), c, A, b)
    x, y, s = conic_recover(z, n, spec)
    return SolverResult(ConicSolution(x, y, s, z), iterations, error, error <= tol)
