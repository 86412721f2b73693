"""sensitivity: automatic implicit differentiation of optimization solutions in JAX.

Write a map ``F(x, *args)`` whose root is the solution of your problem, decorate any
solver with :func:`custom_root` (or :func:`custom_fixed_point`), and ``jax.jvp``,
``jax.grad``, ``jax.jacfwd``, ``jax.jacrev`` and ``jax.hessian`` differentiate the
solution through the implicit function theorem (Blondel et al., "Efficient and Modular
Implicit Differentiation", NeurIPS 2022) without unrolling the solver.

The public API is what this module re-exports; every ``_``-prefixed module is private.
Names are imported on first use (module ``__getattr__``), so ``import sensitivity`` does not
import jax: the command line and the result readers (``sensitivity.systems``,
``sensitivity.cli``) stay fast.
jaxopt's module paths exist too (``sensitivity.implicit_diff``, ``sensitivity.linear_solve``,
``sensitivity.prox``, ``sensitivity.projection``, ``sensitivity.tree_util``) with jaxopt's
names and signatures, so jaxopt code ports by changing its import.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the private module that owns it. Grouped as jaxopt groups its API; the
# jaxopt-only extras (solve_qr, solve_inv, solve_iterative_refinement, the sparse-simplex,
# l1-sphere and transportation projections) live at their jaxopt paths only
# (sensitivity.linear_solve, sensitivity.projection), listed in _MODULES.
_EXPORTS = {
    # implicit differentiation: decorate a solver with its optimality condition
    "custom_root": "_implicit_diff",
    "custom_fixed_point": "_implicit_diff",
    "root_jvp": "_implicit_diff",
    "root_vjp": "_implicit_diff",
    "record_solves": "_implicit_diff",
    "ClosureError": "_closure",
    # linear solvers: plain functions of a matvec that report (LinearSolveInfo) and fail loudly
    "solve_cg": "_krylov",
    "solve_normal_cg": "_krylov",
    "solve_bicgstab": "_krylov",
    "solve_gmres": "_krylov",
    "solve_minres": "_krylov",
    "solve_lu": "_dense",
    "solve_cholesky": "_dense",
    "solve_lstsq": "_dense",
    "get_solver": "_dense",
    "LinearSolveInfo": "_linear_solve",
    "LinearSolveError": "_solve_failure",
    "LinearSolveWarning": "_solve_failure",
    "CongruenceScaling": "_linear_solve",
    "within_tolerance": "_linear_solve",
    "default_maxiter": "_linear_solve",
    "factorize_sparse": "_factorization",
    "SparseFactorization": "_factorization",
    # optimality conditions and fixed points (the paper's catalog, table 1), conic included
    "make_stationary_condition": "_optimality",
    "make_gradient_descent_fixed_point": "_optimality",
    "make_kkt_optimality_fun": "_optimality",
    "KKTSolution": "_optimality",
    "make_proximal_gradient_fixed_point": "_optimality",
    "make_projected_gradient_fixed_point": "_optimality",
    "make_mirror_descent_fixed_point": "_optimality",
    "make_newton_fixed_point": "_optimality",
    "make_block_proximal_gradient_fixed_point": "_optimality",
    "make_conic_residual_map": "_conic",
    "make_cone_projection": "_conic",
    "ConeSpec": "_conic",
    "conic_embed": "_conic",
    "conic_recover": "_conic",
    # proximal operators prox(x, hyperparams, scaling) (jaxopt's forms: sensitivity.prox)
    "prox_none": "_prox",
    "prox_lasso": "_prox",
    "prox_non_negative_lasso": "_prox",
    "prox_elastic_net": "_prox",
    "prox_group_lasso": "_prox",
    "prox_ridge": "_prox",
    "prox_non_negative_ridge": "_prox",
    "make_prox_from_projection": "_prox",
    # Euclidean projections proj(x, hyperparams) (and KL onto the simplex)
    "projection_non_negative": "_projection",
    "projection_box": "_projection",
    "projection_hypercube": "_projection",
    "projection_simplex": "_projection",
    "kl_projection_simplex": "_projection",
    "projection_l1_ball": "_projection",
    "projection_l2_ball": "_projection",
    "projection_l2_sphere": "_projection",
    "projection_linf_ball": "_projection",
    "projection_hyperplane": "_projection",
    "projection_halfspace": "_projection",
    "projection_affine_set": "_projection",
    "projection_second_order_cone": "_projection",
    "projection_psd_cone": "_projection",
    "svec": "_projection",
    "smat": "_projection",
    "projection_polyhedron": "_projection_solved",
    "projection_box_section": "_projection_solved",
    # solvers: solver(init, *args) -> SolverResult, differentiated implicitly
    "SolverResult": "_solver_loop",
    "gradient_descent": "_solvers",
    "proximal_gradient": "_solvers",
    "projected_gradient": "_solvers",
    "mirror_descent": "_solvers",
    "block_coordinate_descent": "_solvers",
    "newton": "_solvers",
    "scipy_minimize": "_solvers",
    "solve_qp": "_qp",
    "solve_conic": "_conic",
    "ConicSolution": "_conic",
    # tools: extreme eigenvalues, and how far a computed Jacobian can be trusted
    "lanczos": "_lanczos",
    "jacobian_error_estimate": "_precision",
    "JacobianErrorEstimate": "_precision",
}

# jaxopt's module paths, also reachable as attributes (sensitivity.projection.projection_x)
_MODULES = ("implicit_diff", "linear_solve", "projection", "prox", "tree_util")

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    owner = _EXPORTS.get(name)
    if owner is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{owner}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_MODULES))
