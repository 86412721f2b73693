"""Automatic implicit differentiation of the solutions of root and fixed-point problems.

The user writes an optimality map ``F(x, *args)`` whose root is the solution:
``F(x*(θ), θ) = 0``. Differentiating that identity gives the implicit function theorem

    -∂₁F(x*, θ) · ∂x*/∂θ = ∂₂F(x*, θ),

a linear system in ``∂x*/∂θ`` that is solved matrix-free with Jacobian-vector products of
``F`` and any linear solver of :mod:`sensitivity._linear_solve`. The solver that produced
``x*`` is never differentiated (nothing is unrolled), so it may be any code at all.

Design: one ``jax.custom_jvp`` rule whose tangent is a ``jax.lax.custom_linear_solve``.
JAX transposes that linear solve for reverse mode, so the single rule gives ``jax.jvp``,
``jax.jacfwd``, ``jax.vjp``, ``jax.grad``, ``jax.jacrev`` and ``jax.hessian`` (jaxopt's
``custom_vjp`` design could not do forward mode or Hessians, jaxopt issue 474).

Reference: M. Blondel, Q. Berthet, M. Cuturi, R. Frostig, S. Hoyer, F. Llinares-López,
F. Pedregosa, J.-P. Vert, "Efficient and Modular Implicit Differentiation", NeurIPS 2022
(arXiv:2105.15183).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jax.flatten_util import ravel_pytree

from ._closure import ClosureError, _differentiated_tracers, _internal
from ._krylov import solve_gmres, solve_minres
from .tree_util import tree_negative, tree_sub

__all__ = [
    "custom_root",
    "custom_fixed_point",
    "root_jvp",
    "root_vjp",
    "record_solves",
    "ClosureError",
]


# ---------------------------------------------------------------------------------------
# Small helpers.


def _zero_tangent(x):
    """A zero tangent for a primal value (``float0`` for integer and boolean values)."""
    x = jnp.asarray(x) if not hasattr(x, "dtype") else x
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def _default_solve(symmetric: bool = False):
    """GMRES for a general ∂₁F; MINRES when it is known to be symmetric.

    MINRES handles symmetric indefinite and singular operators (Hessians at saddle points,
    packings with zero modes) in about as many products as CG, where restarted GMRES can
    stall (benchmarks/bench_linear_solvers.py).
    """
    return solve_minres if symmetric else solve_gmres


def _accepts(solve: Callable, keyword: str) -> bool:
    try:
        return keyword in inspect.signature(solve).parameters
    except (TypeError, ValueError):
        return False


def _adjoint(solve: Callable) -> Callable:
    """The solve to use for the adjoint (transposed) system ``Aᵀ u = cotangent``.

    A cotangent may have any component along a null space of ``A``: that component does
    not reach the gauge-fixed solution, whose derivative maps into the orthogonal
    complement of the null space, so it is projected out rather than reported as an
    inconsistent right-hand side. (In forward mode a right-hand side with such a component
    is a real inconsistency and stays reported.)
    """
    if _accepts(solve, "consistency_tol"):
        return functools.partial(solve, consistency_tol=float("inf"))
    return solve


# ---------------------------------------------------------------------------------------
# Recording the linear solves made inside autodiff transformations.

# A process-wide stack, not a thread-local one: XLA runs host callbacks on its own threads.
_recorder_stack: list = []
_recorder_lock = threading.Lock()


def _active_recorders() -> list:
    with _recorder_lock:
        return list(_recorder_stack)


@contextlib.contextmanager
def record_solves():
    """Collect the report of every implicit-differentiation linear solve that runs inside.

    The derivative of a decorated solver is computed inside JAX's transformations
    (``jax.grad``, ``jax.jacfwd``, ``jit``, ``vmap``), where a report cannot be returned.
    This context manager gathers them instead, as they execute::

        with sensitivity.record_solves() as reports:
            jac = jax.jacrev(solver)(init, theta)
        assert all(r.converged.all() for r in reports)

    Each entry is a :class:`~sensitivity.LinearSolveInfo` of NumPy arrays (batched arrays
    under ``vmap``) and one entry is added per executed solve (one per tangent or
    cotangent batch). Solvers that do not accept ``full_output`` are not recorded.

    Yields:
        The list that receives the reports.
    """
    reports: list = []
    with _recorder_lock:
        _recorder_stack.append(reports)
    try:
        yield reports
    finally:
        jax.effects_barrier()  # callbacks run asynchronously: wait for those still pending
        with _recorder_lock:
            _recorder_stack.remove(reports)


def _record(info) -> None:
    for reports in _active_recorders():
        reports.append(jax.tree.map(np.asarray, info))


def _instrumented(solve: Callable) -> Callable:
    """Wrap ``solve(matvec, b)`` so that its report reaches :func:`record_solves`."""
    if not _accepts(solve, "full_output"):
        return solve

    def solve_and_record(matvec, b):
        x, info = solve(matvec, b, full_output=True)
        # batched by a rolled loop, not unrolled like debug.callback
        io_callback(_record, None, info)
        return x

    return solve_and_record


# ---------------------------------------------------------------------------------------
# Lower-level building blocks: JVP and VJP of a root.


def _split_args(args) -> tuple:
    if not isinstance(args, (tuple, list)):
        raise TypeError(
            f"args must be a tuple of the optimality function's extra arguments, got "
            f"{type(args).__name__}; wrap a single argument as (arg,)"
        )
    return tuple(args)


def root_jvp(
    optimality_fun: Callable,
    sol: Any,
    args: Sequence[Any],
    tangents: Sequence[Any],
    solve: Callable | None = None,
    full_output: bool = False,
):
    """Jacobian-vector product of a root ``x*(args)`` of ``optimality_fun``.

    Solves ``∂₁F(x*, args) · v = -∂₂F(x*, args) · tangents`` for ``v`` with ``solve``,
    using only JVPs of ``F``.

    Args:
        optimality_fun: ``F(x, *args)``, zero at the solution; returns a pytree like ``x``.
        sol: the solution ``x*`` (a pytree).
        args: tuple of the extra arguments of ``optimality_fun``.
        tangents: tuple of tangents, one per entry of ``args`` (same structures; use
            zeros for arguments that do not vary).
        solve: a linear solver ``solve(matvec, b, ...)``; default :func:`solve_gmres`.
        full_output: also return the solver's :class:`LinearSolveInfo` (the solver must
            accept ``full_output``).

    Returns:
        The tangent of ``x*`` (a pytree like ``sol``), and the report if ``full_output``.
    """
    solve = _default_solve() if solve is None else solve
    args = _split_args(args)
    tangents = _split_args(tangents)
    if len(args) != len(tangents):
        raise ValueError(f"got {len(args)} args but {len(tangents)} tangents; pass one "
                         f"tangent per argument")

    def fun_of_sol(x):
        return optimality_fun(x, *args)

    @_internal
    def matvec(u):
        return jax.jvp(fun_of_sol, (sol,), (u,))[1]

    _, rhs = jax.jvp(lambda *a: optimality_fun(sol, *a), args, tangents)
    rhs = tree_negative(rhs)
    if full_output:
        return solve(matvec, rhs, full_output=True)
    return solve(matvec, rhs)


def root_vjp(
    optimality_fun: Callable,
    sol: Any,
    args: Sequence[Any],
    cotangent: Any,
    solve: Callable | None = None,
    full_output: bool = False,
):
    """Vector-Jacobian product of a root ``x*(args)`` of ``optimality_fun``.

    Solves the adjoint system ``∂₁F(x*, args)ᵀ u = cotangent``, then returns
    ``-uᵀ ∂₂F(x*, args)`` for every argument, using only VJPs of ``F``.

    Args:
        optimality_fun: ``F(x, *args)``, zero at the solution.
        sol: the solution ``x*``.
        args: tuple of the extra arguments of ``optimality_fun``.
        cotangent: a pytree like ``sol``.
        solve: a linear solver ``solve(matvec, b, ...)``; default :func:`solve_gmres`.
        full_output: also return the solver's :class:`LinearSolveInfo`.

    Returns:
        A tuple with one VJP per entry of ``args``, and the report if ``full_output``.
    """
    solve = _adjoint(_default_solve() if solve is None else solve)
    args = _split_args(args)
    _, vjp_sol = jax.vjp(lambda x: optimality_fun(x, *args), sol)

    @_internal
    def matvec_transposed(u):
        return vjp_sol(u)[0]

    if full_output:
        u, info = solve(matvec_transposed, cotangent, full_output=True)
    else:
        u = solve(matvec_transposed, cotangent)
    _, vjp_args = jax.vjp(lambda *a: optimality_fun(sol, *a), *args)
    vjps = tuple(tree_negative(v) for v in vjp_args(u))
    return (vjps, info) if full_output else vjps


# ---------------------------------------------------------------------------------------
# The decorators.


def _check_signature(reference_signature, solver_name, args, kwargs):
    """Fail early, with the reason, when the solver's arguments cannot reach ``F``."""
    try:
        reference_signature.bind(*args, **kwargs)
    except TypeError as err:
        raise TypeError(
            f"the arguments given to {solver_name} do not match the optimality function's "
            f"signature {reference_signature}: {err}. The optimality function must take "
            f"the solver's arguments, F(x, *args, **kwargs) for solver(init, *args, **kwargs); "
            f"pass reference_signature= if they are spelled differently"
        ) from None


def _as_signature(reference) -> inspect.Signature:
    """The signature of ``reference``: a :class:`inspect.Signature` or a callable.

    As in jaxopt, an object with a ``subfun`` attribute (jaxopt's ``CompositeLinearFunction``)
    stands for that function.
    """
    if isinstance(reference, inspect.Signature):
        return reference
    return inspect.signature(getattr(reference, "subfun", reference))


def _signature_or_none(fn) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or a callable object without one
        return None


def _bind_solver_call(solver_signature, reference_signature, args, kwargs):
    """Normalize ``solver(*args, **kwargs)`` the way jaxopt does, before the JVP boundary.

    The call is bound to the solver's own signature, so ``init_params`` may be passed by
    keyword and every parameter that can be positional becomes positional. A default the
    call leaves out is filled in when the optimality function names that parameter (so
    ``F`` sees the same value the solver uses, and it is differentiated like any other
    argument); defaults ``F`` does not take (``maxiter``, ``tol``) stay the solver's own.
    Returns ``(args, kwargs)``.
    """
    if solver_signature is None:
        return tuple(args), dict(kwargs)
    try:
        bound = solver_signature.bind(*args, **kwargs)
    except TypeError:
        return tuple(args), dict(kwargs)  # let the reference check say what is wrong
    given = set(bound.arguments)
    referenced = set(reference_signature.parameters)
    bound.apply_defaults()
    every_default = (tuple(bound.args), dict(bound.kwargs))
    for name, param in solver_signature.parameters.items():
        if name in given or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name not in referenced:
            del bound.arguments[name]
    named_defaults = (tuple(bound.args), dict(bound.kwargs))
    # F may spell its parameters differently from the solver: then, as in jaxopt, every
    # default is passed on (by position) when that is what lets F's signature bind.
    for candidate in (named_defaults, every_default):
        try:
            reference_signature.bind(*candidate[0], **candidate[1])
        except TypeError:
            continue
        return candidate
    return named_defaults


def _call_optimality(optimality_fun, reference_signature, x, args, kwargs):
    """``F(x, ...)`` with the solver's ``(init, *args, **kwargs)`` mapped to F's positions.

    Keyword arguments that F's signature can take by position are passed by position
    (jaxopt's rule, which lets ``F = jax.grad(f)`` receive them); the others (keyword-only
    parameters, a catch-all ``**kwargs``) are passed by name.
    """
    try:
        bound = reference_signature.bind(None, *args, **kwargs)
    except TypeError:
        return optimality_fun(x, *args, **kwargs)
    return optimality_fun(x, *bound.args[1:], **bound.kwargs)


def _with_first(out, first_fn, rest_fn):
    """Map the first child of the top-level container ``out`` by ``first_fn``, the others
    (each a pytree) by ``rest_fn``: the solver's ``(x*, aux)`` output keeps its own type,
    a ``NamedTuple`` such as jaxopt's ``OptStep`` included."""
    children, treedef = jax.tree_util.tree_flatten(out, is_leaf=lambda node: node is not out)
    if not children:
        raise TypeError(
            f"has_aux=True needs the solver to return (solution, aux), got {type(out).__name__}"
        )
    return jax.tree_util.tree_unflatten(
        treedef, [first_fn(children[0])] + [rest_fn(child) for child in children[1:]]
    )


def _first(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    return jax.tree_util.tree_flatten(out, is_leaf=lambda node: node is not out)[0][0]


def _implicit_solver(
    solver_fun, optimality_fun, reference_signature, solve, has_aux, kwarg_keys, symmetric
):
    """A ``custom_jvp`` version of ``solver_fun(init, *args, **kwargs)`` for fixed kwarg names."""
    n_kw = len(kwarg_keys)

    def unflatten(flat_args):
        positional = flat_args[: len(flat_args) - n_kw]
        kwargs = dict(zip(kwarg_keys, flat_args[len(flat_args) - n_kw :]))
        return positional, kwargs

    @jax.custom_jvp
    def solver_flat(*flat_args):
        positional, kwargs = unflatten(flat_args)
        return solver_fun(*positional, **kwargs)

    @solver_flat.defjvp
    def solver_flat_jvp(primals, tangents):
        out = solver_flat(*primals)
        sol = _first(out) if has_aux else out
        # init_params (primals[0]) has no influence on x*, so its tangent is dropped.
        rest, rest_dot = primals[1:], tangents[1:]

        def fun(x, *flat_rest):
            positional, kwargs = unflatten((None,) + tuple(flat_rest))
            return _call_optimality(
                optimality_fun, reference_signature, x, positional[1:], kwargs
            )

        def matvec(u):
            return jax.jvp(lambda x: fun(x, *rest), (sol,), (u,))[1]

        _, rhs = jax.jvp(lambda *a: fun(sol, *a), rest, rest_dot)
        rhs = tree_negative(rhs)
        # The linear solve runs on one flat vector: custom_linear_solve transposes only a
        # right-hand side whose every leaf is linear in the tangents, and a block of F that
        # does not depend on θ (e.g. an equality constraint) gives a constant zero leaf.
        # The user's solver still sees pytrees shaped like the solution.
        flat_rhs, _ = ravel_pytree(rhs)
        _, unravel = ravel_pytree(sol)

        def on_trees(flat_op):
            return _internal(lambda tree: unravel(flat_op(ravel_pytree(tree)[0])))

        def flat_solve_with(tree_solve):
            return lambda flat_op, b: ravel_pytree(tree_solve(on_trees(flat_op), unravel(b)))[0]

        flat_sol_dot = jax.lax.custom_linear_solve(
            _internal(lambda u: ravel_pytree(matvec(unravel(u)))[0]),
            flat_rhs,
            solve=flat_solve_with(_instrumented(solve)),
            transpose_solve=flat_solve_with(_instrumented(_adjoint(solve))),
            symmetric=symmetric,
        )
        sol_dot = unravel(flat_sol_dot)
        if has_aux:
            zeros = functools.partial(jax.tree.map, _zero_tangent)
            return out, _with_first(out, lambda _: sol_dot, zeros)
        return out, sol_dot

    return solver_flat


def _closure_message(name: str) -> str:
    return (
        f"{name}, its optimality function or its linear solve closes over a value that is being "
        f"differentiated; implicit differentiation only sees explicit arguments. "
        f"Pass that value as an argument: {name}(init, theta, ...) and F(x, theta, ...)"
    )


def custom_root(
    optimality_fun: Callable,
    has_aux: bool = False,
    solve: Callable | None = None,
    reference_signature: Callable | inspect.Signature | None = None,
    symmetric: bool = False,
):
    """Decorator that makes a root-finding solver differentiable by implicit differentiation.

    Decorates ``solver(init_params, *args, **kwargs) -> x*`` where
    ``optimality_fun(x*, *args, **kwargs) = 0``. Derivatives of ``x*`` with respect to
    ``args`` and ``kwargs`` come from the implicit function theorem
    ``-∂₁F · ∂x* = ∂₂F``, solved matrix-free by ``solve``; the solver itself is never
    differentiated, so it may run any algorithm (or call non-JAX code through
    ``jax.pure_callback``).

    Every JAX transformation works through the decorated solver: ``jax.jvp``,
    ``jax.jacfwd``, ``jax.vjp``, ``jax.grad``, ``jax.jacrev``, ``jax.hessian``, ``jit`` and
    ``vmap``, with pytrees for ``x`` and every argument.

    ``init_params`` gets a zero derivative: where the root is unique (the theorem's
    assumption, ``∂₁F`` invertible), ``x*`` does not depend on where the solver started.

    Values being differentiated must be passed as arguments: a solver or optimality
    function that closes over one raises :class:`ClosureError` (never a silent zero).
    Closing over constants (data that is not differentiated) is fine.

    Args:
        optimality_fun: ``F(x, *args, **kwargs)`` returning a pytree like ``x``.
        has_aux: the solver returns ``(x*, aux)``, a tuple, list or ``NamedTuple`` (such
            as jaxopt's ``OptStep(params, state)``) whose first entry is ``x*``; ``aux``
            (the other entries, any pytrees) gets a zero derivative and the output keeps
            its type.
        solve: the linear solver, ``solve(matvec, b)``; default :func:`solve_gmres`
            (``∂₁F`` is not symmetric in general), or :func:`solve_minres` when
            ``symmetric=True``. For a minimum (``F = ∇f``) use
            :func:`solve_cg`, or :func:`solve_minres` when the Hessian is singular or
            indefinite; set options with ``functools.partial``, e.g.
            ``partial(solve_cg, tol=1e-12, nullspace=basis, on_failure="nan")``.
        reference_signature: the signature the solver's arguments are mapped to
            (default: ``optimality_fun``'s): an :class:`inspect.Signature` or a callable
            (an object with a ``subfun`` attribute, such as jaxopt's
            ``CompositeLinearFunction``, stands for that function). Give it when ``F``
            takes a catch-all ``*args``/``**kwargs``.

    Arguments are bound as jaxopt binds them: the call is first bound to the solver's
    own signature (``init_params`` may be passed by keyword; defaults the call leaves
    out are filled in when ``F`` names that parameter), then mapped to ``F``'s
    signature, so a solver keyword argument reaches ``F`` by position wherever ``F``
    can take it positionally (``F = jax.grad(f)`` works), and by name otherwise.
        symmetric: ``∂₁F`` is symmetric (e.g. a Hessian), so reverse mode reuses the
            forward linear operator instead of transposing it, and the default solver is
            MINRES.

    Returns:
        A decorator.

    Example:
        >>> def ridge_objective_grad(x, lam, X, y):
        ...     return X.T @ (X @ x - y) + lam * x
        >>> @custom_root(ridge_objective_grad)
        ... def ridge(init, lam, X, y):
        ...     return jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y)
    """
    solve = _default_solve(symmetric) if solve is None else solve
    reference_signature = _as_signature(
        optimality_fun if reference_signature is None else reference_signature
    )

    def decorator(solver_fun: Callable) -> Callable:
        name = getattr(solver_fun, "__name__", "solver")
        solver_signature = _signature_or_none(solver_fun)
        cache: dict = {}

        @functools.wraps(solver_fun)
        def wrapped(*args, **kwargs):
            args, kwargs = _bind_solver_call(solver_signature, reference_signature, args, kwargs)
            if not args:
                raise TypeError(
                    f"{name} needs init_params, as its first argument or by its name in "
                    f"{name}'s signature"
                )
            _check_signature(reference_signature, name, args, kwargs)
            if (
                _differentiated_tracers(solver_fun)
                or _differentiated_tracers(optimality_fun)
                or _differentiated_tracers(solve)
            ):
                raise ClosureError(_closure_message(name))
            keys = tuple(kwargs)
            if keys not in cache:
                cache[keys] = _implicit_solver(
                    solver_fun, optimality_fun, reference_signature, solve, has_aux, keys,
                    symmetric,
                )
            try:
                return cache[keys](*args, *(kwargs[k] for k in keys))
            except jax.errors.UnexpectedTracerError as err:
                raise ClosureError(_closure_message(name)) from err

        return wrapped

    return decorator


def custom_fixed_point(
    fixed_point_fun: Callable,
    has_aux: bool = False,
    solve: Callable | None = None,
    reference_signature: Callable | inspect.Signature | None = None,
):
    """Decorator for a solver of the fixed point ``x = T(x, *args, **kwargs)``.

    Equivalent to :func:`custom_root` with ``F(x, *args) = T(x, *args) - x``.

    Args:
        fixed_point_fun: ``T(x, *args, **kwargs)`` returning a pytree like ``x``.
        has_aux, solve, reference_signature: as for :func:`custom_root`.

    Returns:
        A decorator.
    """
    if reference_signature is None:
        reference_signature = _as_signature(fixed_point_fun)

    def optimality_fun(x, *args, **kwargs):
        return tree_sub(fixed_point_fun(x, *args, **kwargs), x)

    return custom_root(
        optimality_fun,
        has_aux=has_aux,
        solve=solve,
        reference_signature=reference_signature,
    )
