"""sensitivity: automatic implicit differentiation of optimization solutions in JAX.

Write a map ``F(x, *args)`` whose root is the solution of your problem, decorate any
solver with :func:`custom_root` (or :func:`custom_fixed_point`), and ``jax.jvp``,
``jax.grad``, ``jax.jacfwd``, ``jax.jacrev`` and ``jax.hessian`` differentiate the
solution through the implicit function theorem (Blondel et al., "Efficient and Modular
Implicit Differentiation", NeurIPS 2022) without unrolling the solver.

The public API is what this module re-exports; every ``_``-prefixed module is private.
jaxopt's module paths exist too (``sensitivity.implicit_diff``, ``sensitivity.linear_solve``,
``sensitivity.prox``, ``sensitivity.projection``, ``sensitivity.tree_util``) with jaxopt's
names and signatures, so jaxopt code ports by changing its import.
"""

__version__ = "0.1.0"

# --- linear solvers (sensitivity/_linear_solve.py) ---
from sensitivity._linear_solve import (  # noqa: E402
    LinearSolveError,
    LinearSolveInfo,
    LinearSolveWarning,
    get_solver,
    solve_bicgstab,
    solve_cg,
    solve_cholesky,
    solve_gmres,
    solve_lstsq,
    solve_lu,
    solve_minres,
    solve_normal_cg,
)
from sensitivity._linear_solve_more import (  # noqa: E402
    solve_inv,
    solve_iterative_refinement,
    solve_qr,
)
# --- factor once, solve many (sensitivity/_factorization.py) ---
from sensitivity._factorization import SparseFactorization as SparseFactorization
from sensitivity._factorization import factorize_sparse as factorize_sparse
# --- implicit differentiation (sensitivity/_implicit_diff.py) ---
from sensitivity._implicit_diff import ClosureError as ClosureError
from sensitivity._implicit_diff import custom_fixed_point as custom_fixed_point
from sensitivity._implicit_diff import custom_root as custom_root
from sensitivity._implicit_diff import record_solves as record_solves
from sensitivity._implicit_diff import root_jvp as root_jvp
from sensitivity._implicit_diff import root_vjp as root_vjp
# --- optimality conditions (sensitivity/_optimality.py) ---
from sensitivity._optimality import (  # noqa: E402
    ConeSpec,
    KKTSolution,
    conic_embed,
    conic_recover,
    make_block_proximal_gradient_fixed_point,
    make_cone_projection,
    make_conic_residual_map,
    make_gradient_descent_fixed_point,
    make_kkt_optimality_fun,
    make_mirror_descent_fixed_point,
    make_newton_fixed_point,
    make_projected_gradient_fixed_point,
    make_proximal_gradient_fixed_point,
    make_stationary_condition,
)
# --- proximal operators (sensitivity/_prox.py) ---
from sensitivity._prox import (  # noqa: E402
    make_prox_from_projection,
    prox_elastic_net,
    prox_group_lasso,
    prox_lasso,
    prox_non_negative_lasso,
    prox_non_negative_ridge,
    prox_none,
    prox_ridge,
)
# --- projections (sensitivity/_projection.py) ---
from sensitivity._projection import (  # noqa: E402
    kl_projection_simplex,
    projection_affine_set,
    projection_box,
    projection_box_section,
    projection_halfspace,
    projection_hypercube,
    projection_hyperplane,
    projection_l1_ball,
    projection_l2_ball,
    projection_l2_sphere,
    projection_linf_ball,
    projection_non_negative,
    projection_polyhedron,
    projection_psd_cone,
    projection_second_order_cone,
    projection_simplex,
    smat,
    svec,
)
from sensitivity._projection_more import (  # noqa: E402
    kl_projection_birkhoff,
    kl_projection_transport,
    projection_birkhoff,
    projection_l1_sphere,
    projection_sparse_simplex,
    projection_transport,
)
# --- solvers (sensitivity/_solvers.py) ---
from sensitivity._solvers import (  # noqa: E402
    ConicSolution,
    SolverResult,
    block_coordinate_descent,
    gradient_descent,
    mirror_descent,
    newton,
    projected_gradient,
    proximal_gradient,
    scipy_minimize,
    solve_conic,
    solve_qp,
)
# --- precision (sensitivity/_precision.py) ---
from sensitivity._lanczos import lanczos as lanczos  # noqa: E402
from sensitivity._precision import JacobianErrorEstimate as JacobianErrorEstimate
from sensitivity._precision import jacobian_error_estimate as jacobian_error_estimate

__all__ = [
    "lanczos",
    "LinearSolveError",
    "LinearSolveInfo",
    "LinearSolveWarning",
    "get_solver",
    "solve_bicgstab",
    "solve_cg",
    "solve_cholesky",
    "solve_gmres",
    "solve_lstsq",
    "solve_lu",
    "solve_minres",
    "solve_normal_cg",
    "solve_inv",
    "solve_iterative_refinement",
    "solve_qr",
    "SparseFactorization",
    "factorize_sparse",
    "ClosureError",
    "custom_fixed_point",
    "custom_root",
    "record_solves",
    "root_jvp",
    "root_vjp",
    "ConeSpec",
    "KKTSolution",
    "conic_embed",
    "conic_recover",
    "make_block_proximal_gradient_fixed_point",
    "make_cone_projection",
    "make_conic_residual_map",
    "make_gradient_descent_fixed_point",
    "make_kkt_optimality_fun",
    "make_mirror_descent_fixed_point",
    "make_newton_fixed_point",
    "make_projected_gradient_fixed_point",
    "make_proximal_gradient_fixed_point",
    "make_stationary_condition",
    "make_prox_from_projection",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_lasso",
    "prox_non_negative_lasso",
    "prox_non_negative_ridge",
    "prox_none",
    "prox_ridge",
    "kl_projection_simplex",
    "projection_affine_set",
    "projection_box",
    "projection_box_section",
    "projection_halfspace",
    "projection_hypercube",
    "projection_hyperplane",
    "projection_l1_ball",
    "projection_l2_ball",
    "projection_l2_sphere",
    "projection_linf_ball",
    "projection_non_negative",
    "projection_polyhedron",
    "projection_psd_cone",
    "projection_second_order_cone",
    "projection_simplex",
    "smat",
    "svec",
    "kl_projection_birkhoff",
    "kl_projection_transport",
    "projection_birkhoff",
    "projection_l1_sphere",
    "projection_sparse_simplex",
    "projection_transport",
    "ConicSolution",
    "SolverResult",
    "block_coordinate_descent",
    "gradient_descent",
    "mirror_descent",
    "newton",
    "projected_gradient",
    "proximal_gradient",
    "scipy_minimize",
    "solve_conic",
    "solve_qp",
    "JacobianErrorEstimate",
    "jacobian_error_estimate",
]
