"""jaxopt's ``jaxopt.implicit_diff`` module path: ``custom_root``, ``custom_fixed_point``,
``root_jvp``, ``root_vjp``.

The same functions as the flat ``sensitivity.custom_root`` and friends, which follow
jaxopt's calling conventions (signature binding, ``has_aux`` with any pytree aux,
``reference_signature``). Deliberate differences (README, "Migrating from jaxopt"): the
default linear solve is GMRES (MINRES with ``symmetric=True``) instead of normal CG, a
failed linear solve raises instead of returning its start, and forward mode works.
"""

from sensitivity._implicit_diff import custom_fixed_point, custom_root, root_jvp, root_vjp

__all__ = ["custom_root", "custom_fixed_point", "root_jvp", "root_vjp"]
