"""sensitivity: automatic implicit differentiation of optimization solutions in JAX.

Write a map ``F(x, *args)`` whose root is the solution of your problem, decorate any
solver with :func:`custom_root` (or :func:`custom_fixed_point`), and ``jax.jvp``,
``jax.grad``, ``jax.jacfwd``, ``jax.jacrev`` and ``jax.hessian`` differentiate the
solution through the implicit function theorem (Blondel et al., "Efficient and Modular
Implicit Differentiation", NeurIPS 2022) without unrolling the solver.

The public API is what this module re-exports; every other module is private.
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
# --- implicit differentiation (sensitivity/_implicit_diff.py) ---
from sensitivity._implicit_diff import ClosureError as ClosureError
from sensitivity._implicit_diff import custom_fixed_point as custom_fixed_point
from sensitivity._implicit_diff import custom_root as custom_root
from sensitivity._implicit_diff import record_solves as record_solves
from sensitivity._implicit_diff import root_jvp as root_jvp
from sensitivity._implicit_diff import root_vjp as root_vjp
# --- optimality conditions (sensitivity/_optimality.py) ---
# --- proximal operators (sensitivity/_prox.py) ---
# --- projections (sensitivity/_projection.py) ---
# --- solvers (sensitivity/_solvers.py) ---
# --- precision (sensitivity/_precision.py) ---
from sensitivity._precision import JacobianErrorEstimate as JacobianErrorEstimate
from sensitivity._precision import jacobian_error_estimate as jacobian_error_estimate
