"""The typed reports a result file stores as attributes: :class:`RelaxReport` (the
minimizer's, ``/relaxation``), :class:`SolveReport` (one θ's linear solve,
``/sensitivity/<name>``) and :class:`ObservableReport` (``/observable_derivatives/<name>``).
Each is the one type that :func:`~systems.io.write_result` writes
(``to_attrs``) and :func:`~systems.io.read_result` reads back (``from_attrs``); no jax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["ObservableReport", "RelaxReport", "SolveReport"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys() \
            and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(np.array_equal(a, b))
    except (TypeError, ValueError):  # ragged or unlike values
        return False


class _Attributes:
    """``to_attrs`` / ``from_attrs`` / ``replace`` of a frozen dataclass whose last field is
    ``extra``: the recorded fields (``None``: not recorded) in declaration order, then
    ``extra`` (any other attribute, so nothing read is lost)."""

    extra: Mapping[str, Any]

    def to_attrs(self) -> dict[str, Any]:
        """The attributes: the recorded fields in declaration order, then ``extra``."""
        out = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
               if field.name != "extra" and getattr(self, field.name) is not None}
        return {**out, **self.extra}

    @classmethod
    def from_attrs(cls, attrs):
        """The report of a group's attributes (a report is returned as it is); unknown
        keys go to ``extra``."""
        if isinstance(attrs, cls):
            return attrs
        names = {field.name for field in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in attrs.items() if k in names},
                   extra={k: v for k, v in attrs.items() if k not in names})

    def __eq__(self, other: object) -> bool:
        """Equal attributes (arrays compared elementwise, as a file holds them: a θ with
        several components, a pair)."""
        if type(other) is not type(self):
            return NotImplemented
        mine, theirs = self.to_attrs(), other.to_attrs()
        return mine.keys() == theirs.keys() and all(
            _same(mine[key], theirs[key]) for key in mine)

    __hash__ = None  # mutable contents (lists, arrays): not hashable

    def replace(self, **changes: Any):
        """A copy with ``changes`` (field names; others go to ``extra``)."""
        names = {field.name for field in dataclasses.fields(self)} - {"extra"}
        extra = {k: v for k, v in changes.items() if k not in names}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k in names},
                                   extra={**self.extra, **extra})


@dataclasses.dataclass(frozen=True, eq=False)
class RelaxReport(_Attributes):
    """The minimizer's report, as ``/relaxation`` stores it (:attr:`Result.relaxation
    <systems.io.Result.relaxation>`).

    The fields are those of :class:`systems.relax.RelaxResult` but its positions (see there
    for their meaning); ``None``: not recorded (a file written by hand or by an older
    version). :meth:`to_attrs` gives them in the order :meth:`RelaxResult.as_dict
    <systems.relax.RelaxResult.as_dict>` does.
    """

    steps: int | None = None
    energy: float | None = None
    max_force: float | None = None
    stop_reason: str | None = None
    converged: bool | None = None
    minimizer: str | None = None
    ftol: float | None = None
    etol: float | None = None
    max_steps: int | None = None
    time_s: float | None = None
    time_compile_s: float | None = None
    neighbor_list: bool | None = None
    reallocations: int | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, eq=False)
class SolveReport(_Attributes):
    """One θ's linear-solve report, as the attributes of ``/sensitivity/<name>`` store it
    (:attr:`Response.report <systems.io.Response.report>`; ``responses[name]["report"]`` of
    :func:`~systems.io.write_result` and :class:`~systems.io.Result`).

    ``None``: not recorded (a path that does not produce it, a file written by hand or by an
    older version). :meth:`to_attrs` gives the recorded fields in declaration order, then
    ``extra``; every field a run writes is a field here, ``extra`` keeps what others wrote.

    Attributes:
      kind: θ's kind (``diameter``, ``diameters``, ``epsilon``, ``box``, ``strain``).
      species: the species θ belongs to, as the input file labels it (-1: every species).
      theta: θ's value at x* (a float, or ``[P]``).
      theta_meaning: θ's definition in words.
      component: the strain component (``xy``, ...), for ``strain``.
      solver: the linear solver (``cg``, ``sparse_lu``, ``dense``, ...).
      method: how the Jacobian was computed, in words.
      preconditioner: the Krylov solver's preconditioner (``none`` for the others).
      tol: the relative residual asked for.
      iterations: the largest iteration count of the solves.
      iterations_total: the iterations of every solve together.
      residual: the largest true residual ``‖H x - b‖``.
      relative_residual: the largest ``‖H x - b‖ / ‖b‖``.
      solver_relative_residual: what the convergence test compared with ``tol`` (the scaled
        system's for ``jacobi`` / ``block_jacobi``).
      converged: every solve met ``tol``.
      inconsistency: the largest component of ``b`` along the null space, relative.
      n_solves: right-hand sides solved.
      time_s: seconds of the solves (compilation excluded).
      time_compile_s: seconds compiling them.
      batched_with: the scalar θs solved in the same batch.
      linear_range_plus, linear_range_minus: how far θ can move up / down before a contact
        opens or closes (θ units; ±inf: none), with the pair ``[i, j]`` (``*_pair``) and
        ``opens`` / ``closes`` (``*_event``); ``linear_range_reach``: what was followed
        (``sensitivity.elasticity``, scalar θ).
      many_rhs: a vector θ's method (``dense``, ``factorization``, ``iterative``) and
        ``reason``, why.
      time_rhs_s, time_factor_s, factor_fill, factor_levels, factor_unknowns, rhs_jvps: the
        sparse factorization's figures (``many_rhs`` = ``factorization``).
      streamed: computed block by block while the file was written.
      skipped: why no Jacobian was computed (its rows are NaN).
    """

    kind: str | None = None
    species: int | str | None = None
    theta: float | list | np.ndarray | None = None
    theta_meaning: str | None = None
    component: str | None = None
    solver: str | None = None
    method: str | None = None
    preconditioner: str | None = None
    tol: float | None = None
    iterations: int | None = None
    iterations_total: int | None = None
    residual: float | None = None
    relative_residual: float | None = None
    solver_relative_residual: float | None = None
    converged: bool | None = None
    inconsistency: float | None = None
    n_solves: int | None = None
    time_s: float | None = None
    time_compile_s: float | None = None
    batched_with: list | None = None
    linear_range_plus: float | None = None
    linear_range_plus_pair: list | None = None
    linear_range_plus_event: str | None = None
    linear_range_minus: float | None = None
    linear_range_minus_pair: list | None = None
    linear_range_minus_event: str | None = None
    linear_range_reach: str | None = None
    many_rhs: str | None = None
    reason: str | None = None
    time_rhs_s: float | None = None
    time_factor_s: float | None = None
    factor_fill: float | None = None
    factor_levels: list | None = None
    factor_unknowns: int | None = None
    rhs_jvps: int | None = None
    streamed: bool | None = None
    skipped: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, eq=False)
class ObservableReport(_Attributes):
    """How ``dO/dθ`` of a vector θ was computed, as the attributes of
    ``/observable_derivatives/<name>`` store it (:func:`systems.reverse.observable_derivatives`;
    ``Result.observable_derivatives[name]["report"]``). ``None``: not recorded (forward mode
    solves nothing: no ``converged``, ``residual``, ``iterations``).

    Attributes:
      method: how, in words; converged, residual, iterations: the adjoint solves' (reverse
        mode); n_solves: adjoint solves (0 in forward mode).
      mode: ``reverse`` or ``forward``; reason: why this mode.
      theta_kind: θ's kind; observables: the observables' names, one per row.
      time_s, time_compile_s: seconds computing (compilation excluded) and compiling.
    """

    method: str | None = None
    converged: bool | None = None
    residual: float | None = None
    iterations: int | None = None
    n_solves: int | None = None
    mode: str | None = None
    reason: str | None = None
    theta_kind: str | None = None
    observables: list | None = None
    time_s: float | None = None
    time_compile_s: float | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
