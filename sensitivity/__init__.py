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

# public name -> the private module that owns it
_EXPORTS = {
    # implicit differentiation (_implicit_diff.py)
    "ClosureError": "_implicit_diff",
    "custom_fixed_point": "_implicit_diff",
    "custom_root": "_implicit_diff",
    "record_solves": "_implicit_diff",
    "root_jvp": "_implicit_diff",
    "root_vjp": "_implicit_diff",
    # linear solvers (_linear_solve.py)
    "LinearSolveError": "_linear_solve",
    "LinearSolveInfo": "_linear_solve",
    "LinearSolveWarning": "_linear_solve",
    "get_solver": "_linear_solve",
    "solve_bicgstab": "_linear_solve",
    "solve_cg": "_linear_solve",
    "solve_cholesky": "_linear_solve",
    "solve_gmres": "_linear_solve",
    "solve_lstsq": "_linear_solve",
    "solve_lu": "_linear_solve",
    "solve_minres": "_linear_solve",
    "solve_normal_cg": "_linear_solve",
    # linear solvers (jaxopt's extra ones) (_linear_solve_more.py)
    "solve_inv": "_linear_solve_more",
    "solve_iterative_refinement": "_linear_solve_more",
    "solve_qr": "_linear_solve_more",
    # factor once, solve many (_factorization.py)
    "SparseFactorization": "_factorization",
    "factorize_sparse": "_factorization",
    # optimality conditions (_optimality.py)
    "ConeSpec": "_optimality",
    "KKTSolution": "_optimality",
    "conic_embed": "_optimality",
    "conic_recover": "_optimality",
    "make_block_proximal_gradient_fixed_point": "_optimality",
    "make_cone_projection": "_optimality",
    "make_conic_residual_map": "_optimality",
    "make_gradient_descent_fixed_point": "_optimality",
    "make_kkt_optimality_fun": "_optimality",
    "make_mirror_descent_fixed_point": "_optimality",
    "make_newton_fixed_point": "_optimality",
    "make_projected_gradient_fixed_point": "_optimality",
    "make_proximal_gradient_fixed_point": "_optimality",
    "make_stationary_condition": "_optimality",
    # proximal operators (_prox.py)
    "make_prox_from_projection": "_prox",
    "prox_elastic_net": "_prox",
    "prox_group_lasso": "_prox",
    "prox_lasso": "_prox",
    "prox_non_negative_lasso": "_prox",
    "prox_non_negative_ridge": "_prox",
    "prox_none": "_prox",
    "prox_ridge": "_prox",
    # projections (_projection.py)
    "kl_projection_simplex": "_projection",
    "projection_affine_set": "_projection",
    "projection_box": "_projection",
    "projection_box_section": "_projection",
    "projection_halfspace": "_projection",
    "projection_hypercube": "_projection",
    "projection_hyperplane": "_projection",
    "projection_l1_ball": "_projection",
    "projection_l2_ball": "_projection",
    "projection_l2_sphere": "_projection",
    "projection_linf_ball": "_projection",
    "projection_non_negative": "_projection",
    "projection_polyhedron": "_projection",
    "projection_psd_cone": "_projection",
    "projection_second_order_cone": "_projection",
    "projection_simplex": "_projection",
    "smat": "_projection",
    "svec": "_projection",
    # projections (jaxopt's transport and sparse ones) (_projection_more.py)
    "kl_projection_birkhoff": "_projection_more",
    "kl_projection_transport": "_projection_more",
    "projection_birkhoff": "_projection_more",
    "projection_l1_sphere": "_projection_more",
    "projection_sparse_simplex": "_projection_more",
    "projection_transport": "_projection_more",
    # solvers (_solvers.py)
    "ConicSolution": "_solvers",
    "SolverResult": "_solvers",
    "block_coordinate_descent": "_solvers",
    "gradient_descent": "_solvers",
    "mirror_descent": "_solvers",
    "newton": "_solvers",
    "projected_gradient": "_solvers",
    "proximal_gradient": "_solvers",
    "scipy_minimize": "_solvers",
    "solve_conic": "_solvers",
    "solve_qp": "_solvers",
    # extreme eigenvalues (_lanczos.py)
    "lanczos": "_lanczos",
    # precision of a Jacobian (_precision.py)
    "JacobianErrorEstimate": "_precision",
    "jacobian_error_estimate": "_precision",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    owner = _EXPORTS.get(name)
    if owner is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{owner}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
