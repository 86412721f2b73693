"""Refusing closures over differentiated values (the engine's one implicit-argument rule).

Implicit differentiation sees only the explicit arguments of a decorated solver and of its
optimality function; a linear solver is never differentiated through its iterations. A
value being differentiated that such a callable closes over would get a silent zero or an
internal JAX error, so the engine looks into closures and raises :class:`ClosureError`
with what to write instead. Shared by :mod:`sensitivity._implicit_diff` (the decorators)
and :mod:`sensitivity._linear_solve` (the operators of every linear solver).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax

__all__ = ["ClosureError", "check_operator_closure"]


class ClosureError(TypeError):
    """A decorated solver or its optimality function closed over a differentiated value."""


def _internal(fn: Callable) -> Callable:
    """Mark an operator built by this engine: its closure holds primal values that may be
    tracers of an enclosing transformation (a Hessian), legitimately."""
    fn._sensitivity_internal = True
    return fn


def _differentiated_tracers(fn: Callable, depth: int = 3, kinds: tuple | None = None) -> list:
    """Values being differentiated that ``fn`` closes over (JVP or linearize tracers).

    Closing over constants, and over values traced only by ``jit`` or ``vmap``, is fine;
    closing over a value that an enclosing ``jvp``/``grad`` differentiates is not, because
    the implicit rule only sees explicit arguments.
    """
    from jax._src.interpreters import ad

    if kinds is None:
        kinds = (ad.JVPTracer, ad.LinearizeTracer)
    if getattr(fn, "_sensitivity_internal", False):
        return []
    found = []
    cells = []
    if isinstance(fn, functools.partial):
        cells.extend(fn.args)
        cells.extend(fn.keywords.values())
        fn = fn.func
    cells.extend(c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _filled(c))
    for value in cells:
        if callable(value) and depth > 0 and not isinstance(value, jax.Array):
            found.extend(_differentiated_tracers(value, depth - 1, kinds))
            continue
        try:
            leaves = jax.tree.leaves(value)
        except Exception:  # not a pytree: cannot hold a tracer we could see
            continue
        found.extend(leaf for leaf in leaves if isinstance(leaf, kinds))
    return found


def check_operator_closure(name: str, **operators) -> None:
    """Raise :class:`ClosureError` when a linear solver's operator (``matvec``, ``M``)
    closes over a value that reverse mode is differentiating.

    The solvers are ``while_loop`` programs that JAX cannot transpose, and the closed-over
    value would otherwise surface as an internal error ("No constant handler for type
    LinearizeTracer"). Forward mode through a solver (a ``JVPTracer`` in the closure) works
    and is not refused.
    """
    from jax._src import core
    from jax._src.interpreters import ad, partial_eval

    # Inside jax.lax.custom_linear_solve (the documented way to differentiate a solve) the
    # solver is traced to a jaxpr and only ever runs on primal values: a closed-over tracer
    # is then a constant of that jaxpr, which is fine.
    if isinstance(getattr(core.trace_ctx, "trace", None), partial_eval.DynamicJaxprTrace):
        return
    for what, op in operators.items():
        if op is None or not callable(op):
            continue
        if _differentiated_tracers(op, kinds=(ad.LinearizeTracer,)):
            raise ClosureError(
                f"{name}: {what} closes over a value that reverse mode is differentiating; "
                f"a linear solver is not differentiated through its iterations. Write the "
                f"solve as jax.lax.custom_linear_solve(matvec, b, solve={name}) with the "
                f"value as an explicit input of matvec, or obtain x through "
                f"sensitivity.custom_root(lambda x, theta: A(theta) x - b, solve={name})"
            )


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell (a name assigned later in the enclosing scope)
        return False
    return True
