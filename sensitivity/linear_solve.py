"""jaxopt's ``jaxopt.linear_solve`` module path, with jaxopt's names and argument order.

``solve_x(matvec, b, ridge=None, init=None, ...)`` as in jaxopt; every solver also takes
our keywords (``tol``, ``nullspace``, ``on_failure``, ``full_output``; see
:mod:`sensitivity._linear_solve`). Deliberate differences (README, "Migrating from
jaxopt"): a solve that misses its tolerance raises instead of returning silently; the
default tolerance comes from the dtype (``1e-10`` in float64) instead of ``1e-5``;
``solve_normal_cg`` puts the ridge on ``A`` (jaxopt's ``A^T A`` placement with
``ridge_placement="normal"``).
"""

from sensitivity._dense import (
    solve_cholesky,
    solve_inv,
    solve_iterative_refinement,
    solve_lu,
    solve_qr,
)
from sensitivity._krylov import solve_bicgstab, solve_cg, solve_gmres, solve_normal_cg

__all__ = [
    "solve_lu",
    "solve_cholesky",
    "solve_qr",
    "solve_inv",
    "solve_cg",
    "solve_normal_cg",
    "solve_gmres",
    "solve_bicgstab",
    "solve_iterative_refinement",
]
