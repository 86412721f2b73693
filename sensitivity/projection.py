"""jaxopt's ``jaxopt.projection`` module path: ``projection_x(x, hyperparams)``.

The projections of :mod:`sensitivity._projection` and :mod:`sensitivity._projection_solved`
under jaxopt's names and argument order. Deliberate differences (README, "Migrating from
jaxopt"): ``projection_polyhedron`` returns NaN for an empty polyhedron unless
``check_feasible=True``; ``projection_l1_ball`` takes the projected Jacobian on the sphere
(jaxopt's identity with ``on_boundary="identity"``); the transportation projections accept
``make_solver``/``use_semi_dual`` and solve with their own methods.
"""

from __future__ import annotations

from typing import Any

from sensitivity import _projection
from sensitivity._projection import (
    projection_affine_set,
    projection_box,
    projection_halfspace,
    projection_hyperplane,
    projection_l1_ball,
    projection_l1_sphere,
    projection_l2_ball,
    projection_l2_sphere,
    projection_linf_ball,
    projection_non_negative,
    projection_simplex,
    projection_sparse_simplex,
)
from sensitivity._projection_solved import (
    kl_projection_birkhoff,
    kl_projection_transport,
    projection_birkhoff,
    projection_box_section,
    projection_polyhedron,
    projection_transport,
)

__all__ = [
    "projection_non_negative",
    "projection_box",
    "projection_hypercube",
    "projection_simplex",
    "projection_sparse_simplex",
    "projection_l1_sphere",
    "projection_l1_ball",
    "projection_l2_sphere",
    "projection_l2_ball",
    "projection_linf_ball",
    "projection_hyperplane",
    "projection_halfspace",
    "projection_affine_set",
    "projection_polyhedron",
    "projection_box_section",
    "projection_transport",
    "projection_birkhoff",
    "kl_projection_transport",
    "kl_projection_birkhoff",
]


def projection_hypercube(x: Any, unit: float = 1.0) -> Any:
    """Projection onto the hypercube ``[0, unit]^n`` (jaxopt's argument name ``unit``)."""
    return _projection.projection_hypercube(x, unit)
